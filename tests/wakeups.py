"""Starts hpccnn's Horovod (dist.init), then prints, as JSON, the busiest thread's wake-ups over one
idle second (voluntary context switches: a count, not a timing) and the cycle time Horovod was given."""

import json
import os
import time
from pathlib import Path

from hpccnn.training import dist


def switches() -> dict:
    counts = {}
    for task in Path("/proc/self/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                counts[task.name] = int(line.split()[1])
    return counts


world = dist.init()
time.sleep(0.5)
before = switches()
time.sleep(1.0)
after = switches()
wakeups = max(after[t] - before.get(t, 0) for t in after)
if world.is_main:
    print("WAKEUPS " + json.dumps({"wakeups": wakeups, "cycle_ms": os.environ.get("HOROVOD_CYCLE_TIME"),
                                   "size": world.size}), flush=True)
