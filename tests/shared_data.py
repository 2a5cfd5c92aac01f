"""Under horovodrun: the data set as hpccnn.training.shared gives it to each rank, against what loading alone gives.

python tests/shared_data.py OUT SIZE writes OUT.<rank>.json: where the rank's arrays live (inside the node's
window or not), its memory (smaps_rollup) before and after, the
window's own pages (smaps), digests of the splits (and of the same splits
loaded alone), each image's digest of its training shard, and its first training batches' digest."""

import hashlib
import json
import sys

import numpy as np

from hpccnn.data import datasets as data
from hpccnn.training import dist, inputs, memory, shared
from hpccnn.training.phases import free_data
from hpccnn.models.catalog import get_experiment
from hpccnn.models.experiments import with_overrides

out, size = sys.argv[1], int(sys.argv[2])
exp = with_overrides(get_experiment("cifar_cnn_v3"), {"dataset": "synthetic", "synthetic_size": size,
                                                          "share_data": True})
world = dist.init()
before = memory.usage()
splits, held = shared.load(exp, world)
for name in shared.ARRAYS:  # touch every page, as training and evaluation do
    int(getattr(splits, name).sum())
# smaps counts a page as shared once two processes map it: measured after both ranks have touched every page
# (a suite run once had rank 0 measure first, and 7 of the window's 62 MB were still its alone)
dist.allgather_object(0)
after = memory.usage()


def address(array):
    return array.__array_interface__["data"][0]


def pages_of(start, end, smaps="/proc/self/smaps"):
    """memory.usage()'s fields summed over the mappings that overlap [start, end): the window's own pages, apart
    from whatever else the process allocates or frees meanwhile (which moves smaps_rollup's totals)."""
    inside, lines = False, []
    for line in open(smaps):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):  # a mapping's first line: "start-end perms ..."
            low, high = (int(x, 16) for x in head.split("-"))
            inside = low < end and start < high
        elif inside:
            lines.append(line)
    return memory.smaps_fields(lines)


window = window_pages = None
if held.window is not None:
    buffer, _ = held.window.Shared_query(0)
    base = address(np.frombuffer(buffer, np.uint8))
    window = [base, base + held.window_bytes]
    window_pages = pages_of(*window)


def digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def first_batches(x, y):
    batches = inputs.train_pipeline(inputs.shard(x, world.rank, world.size), inputs.shard(y, world.rank, world.size),
                                    inputs.Batches(16, 3, seed=(exp.seed, world.rank)), splits.scale)
    return digest(np.concatenate([b[0].numpy().ravel() for b in batches]))


shard = inputs.shard(splits.x_train, world.rank, world.size)
facts = {
    "rank": world.rank, "held": held.facts(), "window": window, "before": before, "after": after,
    "window_pages": window_pages,
    "arrays": {name: [address(getattr(splits, name)), getattr(splits, name).nbytes] for name in shared.ARRAYS},
    "digests": {name: digest(getattr(splits, name)) for name in shared.ARRAYS},
    "shard_images": sorted(hashlib.sha1(image.tobytes()).hexdigest() for image in shard),
    "batches": first_batches(splits.x_train, splits.y_train),
}
alone = data.load_split(exp)  # what every rank loaded before: the same splits, its own copy
facts["alone"] = {"digests": {name: digest(getattr(alone, name)) for name in shared.ARRAYS},
                  "train_images": sorted(hashlib.sha1(image.tobytes()).hexdigest() for image in alone.x_train),
                  "batches": first_batches(alone.x_train, alone.y_train)}
dist.allgather_object(0)  # both ranks are done with the window before it goes
# freed as training frees it: no rank leaves before all have freed it (a rank that exited at once had Horovod
# end MPI while the other still freed the window, which then waited for ever: CI, a 300 s hang of this script)
free_data(held, world)
with open(f"{out}.{world.rank}.json", "w") as f:
    json.dump(facts, f)
