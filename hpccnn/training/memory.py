"""Whether a run fits in the memory its rank has, checked before the model is built.

A setting far too large (an image size, a batch) otherwise ends in a TensorFlow traceback or in
the kernel's OOM killer, minutes in. The estimate is arithmetic on the model's layers (no model is
built: a model too large to fit can't be built either), per rank:
- weights, their gradients, the optimizer's slots, Horovod's copy of the gradients and the copies
  of weights and slots a checkpoint makes (float32);
- the activations of one batch: every layer's output kept for the backward pass (a convolution's
  and a dense layer's before and after their activation, dropout's mask), the two largest twice
  more for the gradients in flight, and a few input batches in tf.data's prefetch;
- the data set as this rank holds it: its share of the node's one copy (hpccnn.training.shared: the window's
  bytes divided by the node's ranks) or a copy of its own, and its shards copied into TensorFlow;
- what TensorFlow itself takes (a fixed allowance).
It is meant as an upper bound a real run stays below, not a measurement: README, bad input.
"""

import os
import resource
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from hpccnn.common.errors import UserError
from hpccnn.models.layers import Layers
from hpccnn.models.zoo import Conv, get_model
from hpccnn.training import dist

GB = 1 << 30
RUNTIME_BYTES = 1 * GB  # TensorFlow, Horovod and Python before the first step (about 0.8 GB measured)
SLOTS = {"sgd": 0, "adam": 2, "adadelta": 2, "rmsprop": 1}  # Keras' optimizers, as hpccnn builds them
PREFETCHED_BATCHES = 4


_BUILT = {}  # (model, side, channels, classes) -> Layers of a user's model, which only building tells


def layers(spec, side: int, channels: int, classes: int) -> Layers:
    """Layers of a ModelSpec's network (hpccnn.models.zoo' two builders) on side x side images; of a user's
    model, as it is built (hpccnn.models.usermodel)."""
    if hasattr(spec, "layers"):
        key = (spec.ref, str(spec.args), side, channels, classes)
        if key not in _BUILT:
            _BUILT[key] = spec.layers(side, channels, classes)
        return _BUILT[key]

    params, kept, largest = 0, 0, side * side * channels

    def out(elements, copies=1):
        nonlocal kept, largest
        kept += copies * elements
        largest = max(largest, elements)

    kwargs = spec.kwargs
    dropout = dict(kwargs.get("dropout", {}))
    for c in kwargs["convs"]:
        conv = c if isinstance(c, Conv) else None if c == "pool" else Conv(c, 3)
        if conv is None:  # small_cnn's 2x2 max pool
            side = side // 2
            out(side * side * channels, 1 + ("pool" in dropout))
            continue
        side = -(-side // conv.stride) if conv.padding == "same" else (side - conv.kernel) // conv.stride + 1
        params += conv.kernel * conv.kernel * channels * conv.filters + conv.filters
        channels = conv.filters
        out(side * side * channels, 2)  # before and after the activation
        if conv.batchnorm:
            params += 4 * channels
            out(side * side * channels)
        if conv.pool:
            side = (side - conv.pool[0]) // conv.pool[1] + 1
            out(side * side * channels)
        if side <= 0:
            break
    features = max(side, 0) ** 2 * channels
    dropped = 2 if spec.build.__name__ == "alexnet" or "dense" in dropout else 0  # output and mask
    for units in [*kwargs["dense"], classes]:
        params += features * units + units
        out(units, 2 + (dropped if units != classes else 0))
        features = units
    return Layers(params, kept, largest)


@dataclass(frozen=True)
class Estimate:
    """The bytes one rank needs, by part."""

    parameters: int
    activations: int
    data: int
    runtime: int = RUNTIME_BYTES

    @property
    def total(self) -> int:
        return self.parameters + self.activations + self.data + self.runtime


@dataclass(frozen=True)
class Step:
    """What a rank computes each step: batch images of side x side x channels, compute_bytes per element of
    the activations (4 in float32, 2 under mixed precision), on a GPU or not."""

    batch: int
    side: int
    channels: int
    compute_bytes: int = 4
    on_gpu: bool = False


def estimate(exp, step: Step, classes: int, data_bytes: int, spec=None) -> Estimate:
    """What a rank of exp needs: step.batch images per step of step.side x step.side x step.channels, holding
    data_bytes of the data set. On a GPU the weights and activations live in the GPU's memory, not the node's.
    spec: exp's model where it is not exp.model's (a resumed run's copy of the user's file)."""
    side, channels, compute_bytes = step.side, step.channels, step.compute_bytes
    model = layers(spec or get_model(exp.model, exp.model_args), side, channels, classes)
    # weights, gradients, the optimizer's slots, Horovod's copy of the gradients, and a checkpoint's
    # copies of the weights and the slots
    parameters = 4 * model.parameters * (4 + 2 * SLOTS[exp.optimizer])
    per_image = compute_bytes * (model.kept_per_image + 2 * model.largest_per_image) \
        + 4 * PREFETCHED_BATCHES * side * side * channels
    if step.on_gpu:
        return Estimate(0, 0, data_bytes)
    return Estimate(parameters, step.batch * per_image, data_bytes)


def _cgroup_limit(proc_cgroup="/proc/self/cgroup", root="/sys/fs/cgroup") -> int | None:
    """This process's cgroup memory limit in bytes (v2's memory.max or v1's limit_in_bytes, the
    smallest from its own cgroup up), or None where there is none."""
    limits = []
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            folder, name = Path(root), "memory.max"
        elif "memory" in controllers.split(","):
            folder, name = Path(root) / "memory", "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            try:
                text = (folder.joinpath(*parts[:depth]) / name).read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < 1 << 60:  # v1 writes "no limit" as a huge number
                limits.append(int(text))
    return min(limits) if limits else None


def available(local_ranks: int, environ=os.environ) -> tuple:
    """(bytes, where that figure comes from) that one of local_ranks ranks on this node may use: the
    smallest of the cgroup's limit, SLURM's --mem or --mem-per-cpu, and the memory free now (each
    shared between the node's ranks; what this rank holds already counts as its own)."""
    ranks = max(1, local_ranks)
    # what this rank holds: its proportional share (Pss) of pages it shares, such as the node's data window
    held = usage().get("pss_bytes") or psutil.Process().memory_info().rss
    found = [(psutil.virtual_memory().available // ranks + held, "memory available on this node")]
    limit = _cgroup_limit()
    if limit:
        found.append((limit // ranks, "the cgroup's memory limit"))
    if environ.get("SLURM_MEM_PER_NODE", "").isdigit():
        found.append((int(environ["SLURM_MEM_PER_NODE"]) * (1 << 20) // ranks, "SLURM's --mem"))
    if environ.get("SLURM_MEM_PER_CPU", "").isdigit():
        cpus = int(environ["SLURM_CPUS_PER_TASK"]) if environ.get("SLURM_CPUS_PER_TASK", "").isdigit() else 1
        found.append((int(environ["SLURM_MEM_PER_CPU"]) * (1 << 20) * cpus, "SLURM's --mem-per-cpu"))
    return min(found)


def culprit(exp, need: Estimate, fits, seed_side: int, batch: int) -> tuple:
    """The setting to blame for need, and what to do: the image size where the seed's size would
    fit, the batch where activations are the largest part, otherwise the model and its data."""
    if exp.image_size and exp.image_size > seed_side and fits(seed_side, batch):
        return f"--image-size {exp.image_size}", "use a smaller --image-size"
    if need.activations >= max(need.parameters, need.data):
        fitting = next((b for b in (batch // 2 ** k for k in range(1, 20)) if b >= 1 and fits(None, b)), 0)
        hint = f"at most {fitting} images per rank fit" if fitting else "not even one image per rank fits"
        return f"--batch-size {exp.batch_size}", f"use a smaller --batch-size ({hint}) or more ranks"
    return f"--model {exp.model} on {exp.dataset}", "use a node with more memory, or a smaller model"


def check(exp, step: Step, classes: int, world, data_bytes: int, spec=None) -> Estimate:
    """A UserError on every rank, before anything is built or written, if a rank of exp can't fit in
    the memory it has, holding data_bytes of the data set (hpccnn.training.shared.Held.per_rank_bytes); the
    ranks agree on the smallest memory any of them has, so that all of them stop or none does.
    Returns the estimate."""
    side, batch = step.side, step.batch

    def need_at(at_side, at_batch):
        return estimate(exp, replace(step, side=at_side or side, batch=at_batch), classes, data_bytes,
                        spec)

    need = need_at(None, batch)
    local_ranks = world.local_size
    have, source = available(local_ranks)
    if world.size > 1:
        have, source = min(dist.allgather_object((have, source)))
    if need.total <= have:
        return need
    setting, advice = culprit(exp, need, lambda s, b: need_at(s, b).total <= have,
                              (spec or get_model(exp.model, exp.model_args)).input_side, batch)
    raise UserError(f"{setting} needs about {need.total / GB:.1f} GB of memory per rank (weights and optimizer "
                    f"{need.parameters / GB:.1f} GB, activations of {batch} images {need.activations / GB:.1f} GB, "
                    f"data {need.data / GB:.1f} GB) but a rank here has {have / GB:.1f} GB ({source}"
                    f"{f', shared by {local_ranks} ranks' if local_ranks > 1 else ''}); {advice}")


SMAPS_FIELDS = {"Rss": "rss_bytes", "Pss": "pss_bytes", "Shared_Clean": "shared_bytes", "Shared_Dirty": "shared_bytes",
                "Private_Clean": "private_bytes", "Private_Dirty": "private_bytes"}


def usage(rollup="/proc/self/smaps_rollup") -> dict:
    """This process's memory now and at its peak, in bytes: peak_rss_bytes (getrusage's ru_maxrss), and
    from Linux's smaps_rollup rss_bytes, pss_bytes (shared pages divided between the processes that map
    them), shared_bytes and private_bytes. Fields Linux doesn't give are left out."""
    found = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # kB on Linux
    try:
        lines = Path(rollup).read_text().splitlines()
    except OSError:
        return found
    return {**found, **smaps_fields(lines)}


def smaps_fields(lines) -> dict:
    """SMAPS_FIELDS' bytes summed over lines of /proc's smaps or smaps_rollup ("Rss:  1234 kB")."""
    found = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name in SMAPS_FIELDS and value.split() and value.split()[0].isdigit():
            key = SMAPS_FIELDS[name]
            found[key] = found.get(key, 0) + int(value.split()[0]) * 1024
    return found
