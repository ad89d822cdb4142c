"""The `Trainer` protocol (`base.py`) and the two in-process trainers: `al_local.py` (the AL blocks one
after another, the semantic reference for the pipeline) and `bp.py` (the backprop twin).

No Ray here: the Ray trainer is pipeline/driver.py, chosen by run/factory.py.
"""
