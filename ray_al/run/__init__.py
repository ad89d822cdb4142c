"""A run from start to finish: the loop (`loop.py`), the trainer factory, data sources, the run
folder (`storage.py`), progress lines, loggers, and Tune sweeps (`tune.py`), which drive
the same loop.

Builds on trainers/, pipeline/ and checkpoint/; inference/ and analysis/ may import it, not the reverse.
"""
