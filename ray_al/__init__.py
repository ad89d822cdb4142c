"""ray_al: Associated Learning (Kao & Chen, 2021) as a pipeline of Ray actors."""
__version__ = "0.1.0"
