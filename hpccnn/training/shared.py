"""One copy of the data set per node: the ranks of a node share it through an MPI shared-memory window.

Loading the whole data set in every rank gives a node of 8 ranks 8 copies. Instead the node's first
rank loads and splits it (the splits are seeded, so they are the ones every rank would compute) and
copies the arrays into a window from MPI.Win.Allocate_shared on the node's communicator; the node's
other ranks map the same memory as read-only NumPy arrays. Each rank then copies only its own shard
of the training and validation images into TensorFlow (every N-th image: strided, so tf.constant
copies exactly that).

A process alone needs no MPI for this and loads as before. Where a window can't be made (Horovod
without MPI or without MPI_THREAD_MULTIPLE, too little room where Open MPI keeps the window, Open MPI
refusing it) each rank loads its own copy, as before, after one warning line per node.
"""

import os
import sys
from dataclasses import dataclass

import numpy as np

from hpccnn.common.errors import UserError
from hpccnn.data.datasets import Splits, load_split
from hpccnn.training import dist

ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
ALIGN = 64  # each array starts on a cache line
NODE_WINDOW, OWN_COPY, STREAMED = "node window", "own copy", "streamed"  # STREAMED: hpccnn.training.stream


@dataclass
class Held:
    """How this rank holds the data set: in its node's window, shared, or as a copy of its own."""

    mode: str  # NODE_WINDOW, OWN_COPY or STREAMED
    window_bytes: int = 0  # the node's window: one copy for all of its ranks
    window_ranks: int = 1  # the ranks that share it
    own_bytes: int = 0  # the splits this rank holds itself
    shard_bytes: int = 0  # its shards of the training and validation sets, copied into TensorFlow
    why_no_window: str = ""  # where the ranks of a node could not share one
    reads: list = None  # STREAMED: the pack's shards this rank reads (hpccnn.training.stream.reads)
    window: object = None
    node: object = None

    @property
    def per_rank_bytes(self) -> int:
        """The data's bytes that count against this rank's memory: its share of the window, its own."""
        return self.window_bytes // max(1, self.window_ranks) + self.own_bytes + self.shard_bytes

    def facts(self) -> dict:
        """For provenance.json."""
        found = {"held_as": self.mode, "window_bytes": self.window_bytes, "window_ranks": self.window_ranks,
                 "own_bytes": self.own_bytes, "shard_bytes": self.shard_bytes}
        if self.reads is not None:
            found["reads"] = self.reads
        return {**found, "why_no_window": self.why_no_window} if self.why_no_window else found

    def free(self) -> None:
        """Frees the window. Collective: every rank of the node calls it at the same point, once no
        array of the window is used any more (the end of the run)."""
        if self.window is not None:
            window, node, self.window, self.node = self.window, self.node, None, None
            window.Free()
            node.Free()


def nbytes(splits) -> int:
    return sum(getattr(splits, name).nbytes for name in {id(getattr(splits, n)): n for n in ARRAYS}.values())


def mpi():
    """(mpi4py's MPI on the MPI that Horovod started, "") or (None, why it can't be used)."""
    hvd = dist.hvd()
    if not hvd.mpi_enabled():
        return None, "Horovod runs without MPI (Gloo)"
    if not hvd.mpi_threads_supported():
        return None, "MPI runs without MPI_THREAD_MULTIPLE, which mpi4py needs beside Horovod's own thread"
    try:
        import mpi4py
    except ImportError:
        return None, "mpi4py is not installed (pip install mpi4py, built against the MPI Horovod uses)"
    # Horovod has started MPI and ends it at exit (hvd.shutdown); mpi4py takes it as it is, and leaves the
    # error handlers of MPI_COMM_WORLD (Horovod's) alone
    mpi4py.rc(initialize=False, finalize=False, errors="default")
    from mpi4py import MPI

    if not MPI.Is_initialized():
        return None, "MPI is not running in this process"
    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        return None, "MPI runs without MPI_THREAD_MULTIPLE, which mpi4py needs beside Horovod's own thread"
    return MPI, ""


def backing_directory() -> str:
    """Where Open MPI keeps shared-memory windows (its osc_sm_backing_directory), as this process has it."""
    return dist.mpi_parameters({"osc_sm_backing_directory": str}).get("osc_sm_backing_directory") or "/dev/shm"


def window_problem(size: int, directory: str) -> str:
    """Why a window of size bytes can't be made in directory ("" if it can). Open MPI would otherwise fail on
    the node's first rank alone, leaving the others waiting, or die of SIGBUS writing to a full tmpfs."""
    try:
        stat = os.statvfs(directory)
    except OSError as err:
        return f"Open MPI's shared-memory folder {directory} is unusable ({err.strerror})"
    free = stat.f_bavail * stat.f_frsize
    if free < size + (64 << 20):
        return (f"Open MPI's shared-memory folder {directory} has {free / 2 ** 30:.2f} GB free for "
                f"{size / 2 ** 30:.2f} GB of data (OMPI_MCA_osc_sm_backing_directory chooses another)")
    return ""


def layout(splits) -> tuple:
    """([(name, dtype, shape, offset)] of the splits' arrays in one buffer, its size in bytes); an array
    that two splits share (the test set, with --validation test) is stored once."""
    entries, offset, seen = [], 0, {}
    for name in ARRAYS:
        array = getattr(splits, name)
        if id(array) in seen:
            entries.append((name, None, None, seen[id(array)]))  # the offset of the array it is
            continue
        seen[id(array)] = offset
        entries.append((name, array.dtype.str, array.shape, offset))
        offset += -(-array.nbytes // ALIGN) * ALIGN
    return entries, max(offset, ALIGN)


def array_at(buffer, dtype, shape, offset) -> np.ndarray:
    return np.frombuffer(buffer, dtype=np.dtype(dtype), count=int(np.prod(shape)), offset=offset).reshape(shape)


def views(buffer, entries, splits_meta) -> Splits:
    """The splits as read-only NumPy arrays over buffer."""
    arrays, at = {}, {}
    for name, dtype, shape, offset in entries:
        if dtype is None:  # the same array as an earlier split
            arrays[name] = at[offset]
            continue
        arrays[name] = at[offset] = array_at(buffer, dtype, shape, offset)
        arrays[name].flags.writeable = False
    return Splits(**arrays, **splits_meta)


def own_copy(exp, data_dir, why="", splits=None) -> tuple:
    """(splits, Held) of a rank that loads (or has loaded) the data set itself."""
    splits = splits if splits is not None else load_split(exp, data_dir)
    return splits, Held(OWN_COPY, own_bytes=nbytes(splits), why_no_window=why)


def load(exp, world, data_dir=None) -> tuple:
    """(splits, Held): exp's data set, split, held once per node where the node runs several ranks.

    Every rank calls it at the same point (its MPI calls are collective); a rank alone calls no MPI."""
    if world.size == 1 or not exp.share_data:
        return own_copy(exp, data_dir, why="" if world.size == 1 else "--share-data false")
    MPI, why = mpi()
    if MPI is None:
        if world.local_rank == 0:
            warn(why)
        return own_copy(exp, data_dir, why=why)
    node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED, key=world.rank)
    node.Set_errhandler(MPI.ERRORS_RETURN)  # a window refused is an exception here, not the job's end
    if node.Get_size() == 1:
        node.Free()
        return own_copy(exp, data_dir)
    first = node.Get_rank() == 0
    splits, (kind, detail) = plan(exp, data_dir, node)
    if kind == "error":
        node.Free()
        raise UserError(detail)
    if kind == "fallback":
        node.Free()
        if first:
            warn(detail)
        return own_copy(exp, data_dir, why=detail, splits=splits)
    entries, size, classes, scale = detail
    # ALIGN bytes more, to start the arrays on a cache line wherever Open MPI puts the window's base
    window, why = allocate(MPI, node, size + ALIGN if first else 0)
    if window is None:
        if first:
            warn(why)
        return own_copy(exp, data_dir, why=why, splits=splits)  # a window made on some ranks only is left alone
    shared = fill(window, entries, splits, {"classes": list(classes), "scale": scale})
    return shared, Held(NODE_WINDOW, window_bytes=size + ALIGN, window_ranks=node.Get_size(), window=window,
                        node=node)


def plan(exp, data_dir, node) -> tuple:
    """(the splits on the node's first rank, None on the others; what the node does, the same on each of its
    ranks): ("window", (layout's entries, its size, classes, scale)), ("fallback", why) to a copy per rank, or
    ("error", what). The node's first rank loads the data set and decides; it says so to the others."""
    splits = decided = None
    if node.Get_rank() == 0:
        try:
            splits = load_split(exp, data_dir)
            entries, size = layout(splits)
            why = window_problem(size, backing_directory())
            decided = ("fallback", why) if why else ("window", (entries, size, splits.classes, splits.scale))
        except UserError as err:
            decided = ("error", str(err))
        except BaseException as err:  # said to the others, so that none waits for a window that won't come
            node.bcast(("error", f"the node's first rank failed loading the data ({type(err).__name__}: {err})"))
            raise
    return splits, node.bcast(decided, root=0)


def allocate(MPI, node, size: int) -> tuple:
    """(the node's window, "") with size bytes on this rank, made by the node's ranks together; or (None, why)
    where any of them could not make it."""
    why = ""
    try:
        window = MPI.Win.Allocate_shared(size, 1, comm=node)
        made = True
    except MPI.Exception as err:
        window, made, why = None, False, f"Open MPI could not make a shared-memory window ({err.Get_error_string()})"
    if not node.allreduce(made, op=MPI.LAND):
        return None, why if not made else "Open MPI could not make a shared-memory window on another rank of this node"
    return window, ""


def fill(window, entries, splits, splits_meta) -> Splits:
    """The splits as every rank of the node reads them from the window: the node's first rank (the one with
    splits) writes the arrays once; from then on it too reads them from the window, its own copy gone."""
    buffer, _ = window.Shared_query(0)
    shift = -np.frombuffer(buffer, np.uint8).__array_interface__["data"][0] % ALIGN  # the same in every rank's map
    entries = [(name, dtype, shape, offset + shift) for name, dtype, shape, offset in entries]
    window.Fence()
    if splits is not None:  # the node's first rank writes the arrays once
        for name, dtype, shape, offset in entries:
            if dtype is not None:
                array_at(buffer, dtype, shape, offset)[...] = getattr(splits, name)
    window.Fence()  # every rank reads what the first one wrote
    return views(buffer, entries, splits_meta)


def warn(why: str) -> None:
    print(f"hpccnn: warning: each rank of this node loads its own copy of the data set: {why}",
          file=sys.stderr, flush=True)
