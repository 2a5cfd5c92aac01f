"""The data sets: the built-in ones, the user's own (folders, .npz, HDF5), checked and packed once into shards (python -m hpccnn.stage). Imports hpccnn.common only."""
