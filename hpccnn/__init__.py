"""hpccnn: the seeds' Keras CNN experiments, trained data-parallel with Horovod on HPC clusters."""

__version__ = "0.1.0"
