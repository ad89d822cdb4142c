"""The Ray training side: the driver that streams chunks through one actor per block (`driver.py`),
the block actors (`actors.py`), their placement, the tensor transport between them, the session
(signals, restarts) and the Ray Data source.

The only package of training that imports Ray; it builds on core/, models/ and data/, never on run/.
"""
