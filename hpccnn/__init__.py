"""hpccnn: the seeds' Keras CNN experiments, trained data-parallel with Horovod on HPC clusters."""

from hpccnn import quiet

__version__ = "0.1.0"
quiet.install()  # before anything imports TensorFlow: its start-up noise stays out of every command's output
