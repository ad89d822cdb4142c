"""Checkpoints: the files (`files.py`: one per block plus a manifest, local or a pyarrow.fs URI),
the policy (`policy.py`: what a checkpoint must match, when to save, when to restart) and the
provenance every manifest carries (`provenance.py`: versions and git commit).

Owns the bytes on disk and the rules for trusting them. Imports no Ray and nothing from run/, pipeline/
or inference/: those call in here.
"""
