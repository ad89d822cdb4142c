"""Errors that the command line prints as one line and turns into a non-zero exit."""


class RayALError(Exception):
    """Base class: the message names the problem in one line."""


class ConfigError(RayALError):
    pass


class DataError(RayALError):
    pass


class CheckpointError(RayALError):
    pass


class TrainingError(RayALError):
    """A run that cannot go on: a NaN loss, a block that keeps dying."""


class BlockLost(TrainingError):
    """A block actor (or the node under it) died; the run can rebuild from a checkpoint."""
