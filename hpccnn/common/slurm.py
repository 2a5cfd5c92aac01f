"""What SLURM says about jobs, read the same way on a real cluster and on scripts/local_slurm.sh's.

Job states come from ``sacct`` when the cluster keeps accounting (most do), and otherwise
from ``scontrol show job``, which knows a finished job for MinJobAge seconds (300 by default).
"""

import datetime
import re
import shutil
import subprocess

# States in which a job (or array task) may still run; anything else means it has ended.
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
          "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}


def available() -> bool:
    return shutil.which("sbatch") is not None


def _run(cmd, timeout=60, env=None):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.SubprocessError):
        return None


def _task_ids(text: str):
    """'3' -> [3]; '2-5' -> [2, 3, 4, 5]; '1,4-5%2' -> [1, 4, 5] (the %N throttle is dropped)."""
    ids = []
    for part in text.split("%")[0].split(","):
        if "-" in part:
            lo, hi = part.split("-")
            ids.extend(range(int(lo), int(hi) + 1))
        elif part:
            ids.append(int(part))
    return ids


def parse_sacct(text: str) -> dict:
    """sacct -X -n -P -o JobID,State output as {'123' or '123_4': 'STATE'}."""
    states = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        job, state = line.split("|")[:2]
        state = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        match = re.fullmatch(r"(\d+)_\[(.+)\]", job)
        if match:  # pending tasks, grouped
            for task in _task_ids(match.group(2)):
                states[f"{match.group(1)}_{task}"] = state
        else:
            states[job] = state
    return states


def parse_scontrol(text: str) -> dict:
    """scontrol show job -o output as {'123' or '123_4': 'STATE'}."""
    states = {}
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "JobState" not in fields:
            continue
        if fields.get("ArrayJobId") and fields.get("ArrayTaskId"):
            for task in _task_ids(fields["ArrayTaskId"]):
                states[f"{fields['ArrayJobId']}_{task}"] = fields["JobState"]
        else:
            states[fields.get("JobId", "")] = fields["JobState"]
    return states


def job_states(job_id: str, env=None) -> dict:
    """States of a job, or of every task of an array job: {'123_0': 'COMPLETED', ...}.
    env: the environment SLURM's commands run in (SLURM_CONF names the cluster), this process's by default."""
    proc = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", str(job_id)], env=env)
    if proc is not None and proc.returncode == 0 and proc.stdout.strip():
        return parse_sacct(proc.stdout)
    proc = _run(["scontrol", "show", "job", "-o", str(job_id)], env=env)
    if proc is not None and proc.returncode == 0:
        return parse_scontrol(proc.stdout)
    return {}


def max_array_size() -> int | None:
    """The cluster's MaxArraySize: array task ids must be below it."""
    proc = _run(["scontrol", "show", "config"])
    if proc is None or proc.returncode != 0:
        return None
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.M)
    return int(match.group(1)) if match else None


def job_fields(job_id: str, env=None, timeout=60) -> dict:
    """scontrol show job's fields for one job (or array task), {} if SLURM no longer knows it (or doesn't say
    within timeout seconds)."""
    proc = _run(["scontrol", "show", "job", "-o", str(job_id)], timeout=timeout, env=env)
    if proc is None or proc.returncode != 0 or not proc.stdout.strip():
        return {}
    return dict(f.split("=", 1) for f in proc.stdout.splitlines()[0].split() if "=" in f)


def requeued_by_slurm(job_id, started_restarts: int) -> bool:
    """Whether SLURM itself is requeueing this running job (scontrol requeue, or preemption with
    PreemptMode=REQUEUE): its restart count has already moved past started_restarts, the one the job started
    with (SLURM_RESTART_COUNT), or it is preempted and requeueable. scancel leaves the count as it was."""
    fields = job_fields(job_id, timeout=3) if job_id else {}  # asked in the seconds before SLURM's SIGKILL
    restarts = fields.get("Restarts", "0")
    moved = restarts.isdigit() and int(restarts) > started_restarts
    return moved or (fields.get("JobState") == "PREEMPTED" and fields.get("Requeue") == "1")


def submit_date(job_id):
    """The day a job was submitted: an array's tasks all share it, whenever each one starts."""
    if not job_id:
        return None
    submitted = job_fields(job_id).get("SubmitTime", "")
    try:
        return datetime.datetime.fromisoformat(submitted).date()
    except ValueError:
        return None
