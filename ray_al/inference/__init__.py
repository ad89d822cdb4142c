"""Prediction from a trained run, over one stage API (stage k: s_{k-1} -> (s_k, exit k's logits))
and one early-exit loop (`exit_loop.py`, PyTorch alone, shipped by the export as al_exits.py).

`weights.py` loads a run's blocks weights only (no optimizer) for prediction, every Serve replica
and the export; `early_exit.py` makes stages of the blocks and scores the threshold trade-off;
`inputs.py` reads inputs as training preprocessed them; `prediction.py` is `ray-al predict` (in
this process or through the Ray block actors) and `eval --thresholds`; `serve.py` the Ray Serve
app; `export.py` the torch.export programs.

Reads run folders through run/ and checkpoint/; nothing in training imports it.
"""
