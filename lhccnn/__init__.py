"""lhccnn: interactive distributed deep learning on LHC calorimeter images from Jupyter on SLURM."""

__version__ = "0.1.0"
