"""Prediction from a trained run: the early-exit engine (`early_exit.py`), `ray-al predict`
(`prediction.py`), the Ray Serve app (`serve.py`) and the exported programs (`export.py`,
`exported.py`).

Reads run folders through run/ and checkpoint/; nothing in training imports it.
"""
