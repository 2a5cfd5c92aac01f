"""A run folder's name and its status: what training, resuming, the guard, the dry run and the
grid's collector all agree on.

metrics.json's "status" is one of RUNNING, COMPLETED, FAILED (with a "reason") or INTERRUPTED
(stopped by a signal after its last finished epoch; resumable). A grid.csv row can also be
NOT_RUN, or SLURM's own state in lower case while the job is still pending or running.
"""

import datetime
import os
from pathlib import Path

RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"
NOT_RUN = "not run"  # a grid point no job ran (hpccnn.submit's grid.csv only)


def job_tag() -> str:
    """What makes a run name unique beyond its time: SLURM job (and array task) id, else the pid."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"job{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    if "SLURM_JOB_ID" in env:
        return f"job{env['SLURM_JOB_ID']}"
    return f"pid{os.getpid()}"


def run_folder(results_dir, name: str, day: str = "*", time: str = "*") -> Path:
    """RESULTS_DIR/<YYYY-MM-DD>/<name>-<HHMMSS>-<job or pid>: every dated run (and grid) folder's name.

    With the default "*" for day and time, the glob pattern of this job's folders named name."""
    return Path(results_dir) / day / f"{name}-{time}-{job_tag()}"


def create_run_folder(results_dir, name: str, now=None) -> Path:
    """A new run_folder for now, never an existing folder (-2, -3, ... when the name is taken)."""
    now = now or datetime.datetime.now()
    base = run_folder(results_dir, name, now.strftime("%Y-%m-%d"), now.strftime("%H%M%S"))
    base.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        folder = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            folder.mkdir()  # atomic: fails if another run took the name first
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a unique run folder under {base.parent}")


def this_jobs_folders(results_dir, name: str = "*") -> list:
    """The run folders under results_dir that this SLURM job (or process) made, oldest first."""
    return sorted(Path(results_dir).resolve().glob(str(run_folder("", name))))
