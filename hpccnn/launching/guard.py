"""python -m hpccnn.guard PID RUN_FOLDER: marks the run failed if process PID dies while it is running.

Rank 0 starts it beside itself. A rank killed with SIGKILL (or by the launcher after another
rank or its node died) cannot write its own status; this does, keeping the last finished epoch
so the run can be resumed from its checkpoint. It detaches from rank 0's process tree (a second
fork, in a session of its own), because srun kills every process of a step's tree when a rank
dies (--kill-on-bad-exit), and mpirun every process of its ranks.
"""

import os
import sys
import time
from pathlib import Path

from hpccnn.common.files import read_json, write_json
from hpccnn.common.runs import FAILED, RUNNING, this_jobs_folders
from hpccnn.common.slurm import job_fields

REASON = ("the training process ended without finishing: killed by a signal, out of memory, or stopped by "
          "the launcher after another rank or its node was lost")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def slurm_view(job_id: str | None) -> str:
    """What SLURM says of the job once the rank has gone ('' outside SLURM): its state and reason,
    e.g. NODE_FAIL when a node stopped answering, FAILED/NonZeroExitCode when a rank died."""
    if not job_id:
        return ""
    deadline = time.time() + 15  # SLURM takes a few seconds to note the step's end
    fields = {}
    while time.time() < deadline:
        fields = job_fields(job_id)
        if fields.get("JobState") not in (None, "RUNNING", "COMPLETING"):
            break
        time.sleep(1)
    state = fields.get("JobState")
    if not state:
        return ""
    reason = fields.get("Reason", "None")
    return f" (SLURM: job {job_id} {state}" + (f", {reason})" if reason not in ("None", "(null)") else ")")


def read_metrics(metrics_path: Path) -> dict:
    return read_json(metrics_path) or {}


def mark_failed(metrics_path: Path, reason: str, attempt=None) -> bool:
    """metrics.json says failed with reason, if it still says running (and, given an attempt, the
    same attempt: a resume started since then is not this one to judge)."""
    metrics = read_metrics(metrics_path)
    if metrics.get("status") != RUNNING:
        return False  # the run said how it ended
    if attempt is not None and metrics.get("resumes", 0) != attempt:
        return False
    metrics.update(status=FAILED, reason=reason, ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json(metrics_path, metrics)
    return True


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--detach":  # the first process returns at once; its child carries on, orphaned
        argv = argv[1:]
        if os.fork() > 0:
            os._exit(0)
        os.setsid()
    if argv and argv[0] == "--job-ended":
        return job_ended(*argv[1:3])
    pid, folder = argv[:2]
    pid, metrics_path = int(pid), Path(folder) / "metrics.json"
    attempt = read_metrics(metrics_path).get("resumes", 0)
    while alive(pid):
        time.sleep(0.5)
    if read_metrics(metrics_path).get("status") != RUNNING:
        return 0
    mark_failed(metrics_path, REASON + slurm_view(os.environ.get("SLURM_JOB_ID")), attempt)
    return 0


def job_ended(status: str, results_dir: str) -> int:
    """After srun in slurm/hpccnn_job.sh: the job's run folder, if it still says running, failed.

    The guard above is the first line; where SLURM tracks processes by cgroup (proctrack/cgroup,
    most clusters), it is killed with the step, and this, in the batch script, records the end."""
    for folder in this_jobs_folders(results_dir):  # the job still runs: SLURM has no verdict yet
        mark_failed(folder / "metrics.json", f"{REASON}; srun exited with status {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
