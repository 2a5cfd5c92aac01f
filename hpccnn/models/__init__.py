"""What to train: the seeds' models, the user's own model, named experiments and grids, and the user's hpccnn.toml. Imports hpccnn.common and hpccnn.data."""
