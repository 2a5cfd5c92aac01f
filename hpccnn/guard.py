"""python -m hpccnn.guard PID RUN_FOLDER: marks the run failed if process PID dies while it is running.

Rank 0 starts it beside itself. A rank killed with SIGKILL (or by the launcher after another
rank or its node died) cannot write its own status; this does, keeping the last finished epoch
so the run can be resumed from its checkpoint. It detaches from rank 0's process tree (a second
fork, in a session of its own), because srun kills every process of a step's tree when a rank
dies (--kill-on-bad-exit), and mpirun every process of its ranks.
"""

import json
import os
import sys
import time
from pathlib import Path

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


def slurm_view(job_id: str | None, wait_seconds=15.0) -> str:
    """What SLURM says of the job once the rank has gone ('' outside SLURM): its state and reason,
    e.g. NODE_FAIL when a node stopped answering, FAILED/NonZeroExitCode when a rank died."""
    if not job_id:
        return ""
    from hpccnn.slurm import job_fields

    deadline = time.time() + wait_seconds
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


def mark_failed(metrics_path: Path, reason: str) -> bool:
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        return False
    if metrics.get("status") != "running":
        return False  # the run said how it ended
    metrics.update(status="failed", reason=reason, ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
    tmp = metrics_path.with_name(f".metrics.json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, metrics_path)
    return True


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--detach":  # the first process returns at once; its child carries on, orphaned
        argv = argv[1:]
        if os.fork() > 0:
            os._exit(0)
        os.setsid()
    pid, folder = argv[:2]
    pid, metrics_path = int(pid), Path(folder) / "metrics.json"
    while alive(pid):
        time.sleep(0.5)
    try:
        if json.loads(metrics_path.read_text()).get("status") != "running":
            return 0
    except (OSError, ValueError):
        return 0
    mark_failed(metrics_path, REASON + slurm_view(os.environ.get("SLURM_JOB_ID")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
