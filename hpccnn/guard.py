"""python -m hpccnn.guard PID RUN_FOLDER: marks the run failed if process PID dies while it is running.

Rank 0 starts it beside itself, in its own session, so that it outlives rank 0. A rank
killed with SIGKILL (or by the MPI launcher after another rank died) cannot write its own
status; this does, keeping the last finished epoch so the run can be resumed from its checkpoint.
"""

import json
import os
import sys
import time
from pathlib import Path


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


def main(argv=None):
    pid, folder = sys.argv[1:3] if argv is None else argv
    pid, metrics_path = int(pid), Path(folder) / "metrics.json"
    while alive(pid):
        time.sleep(0.5)
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        return 0
    if metrics.get("status") != "running":
        return 0  # the run said how it ended
    metrics.update(status="failed", reason="the training process ended without finishing: killed by a signal, "
                                           "out of memory, or stopped by the launcher after another rank died",
                   ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
    tmp = metrics_path.with_name(f".metrics.json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, metrics_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
