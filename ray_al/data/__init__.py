"""Data in: datasets by name or Parquet folder (`datasets.py`), a user's own data (`user_data.py`),
label checks, image decoding and preprocessing.

No Ray here (the Ray Data source lives in pipeline/) and nothing of runs or checkpoints.
"""
