"""Launching runs: SLURM jobs and grids, halving, the launcher command lines, the guard that marks a dead run
failed. Imports training; training never imports it.

submit (python -m hpccnn.submit: the command, a new grid's submission), resources (what each point gets from
SLURM), jobs (the points as submitit jobs, and the wait for them), halving (successive halving's rungs),
status (grid.csv and --status), resubmit (--resubmit), record (grid.json), grid_task (python -m hpccnn.grids:
one array task's point), launch (horovodrun and mpirun command lines), guard (python -m hpccnn.guard), demo
(python -m hpccnn.demo)."""
