"""The algorithm, with no Ray and no files: one AL block and its local losses (`blocks.py`), the
optimizer step every trainer shares (`block_trainer.py`), the step options (precision, compile, Adam
kind), weight decay, the lr schedule, the target-path warm-up, mini-batch slicing and exit accuracy.

Imports only torch, `ray_al.config` and `ray_al.errors`; everything else builds on it.
"""
