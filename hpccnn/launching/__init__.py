"""Launching runs: SLURM jobs and grids (python -m hpccnn.submit), halving, the launcher command lines, the guard that marks a dead run failed. Imports training; training never imports it."""
