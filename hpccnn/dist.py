"""Horovod state in one place: rank, local rank, world size, and who writes.

Training reads its place in the job from Horovod, whatever launched it (plain
``python``, ``horovodrun``, ``mpirun``, ``srun --mpi=pmix`` or submitit), so
the training code never cares how it was started.
"""

import os
import socket
from pathlib import Path
from dataclasses import dataclass

from hpccnn.errors import UserError

# Set by mpirun (Open MPI) and by srun --mpi=pmix/pmi2 in every rank.
MPI_LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK")


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int
    local_size: int
    intra_op_threads: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def horovod_build_problem(tensorflow_ok: bool, mpi_built: bool, launched_by_mpi: bool) -> str | None:
    """What is wrong with the installed Horovod, as a sentence a user can act on, or None."""
    rebuild = (
        "rebuild it with: HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 "
        "pip install --no-build-isolation --no-cache-dir --force-reinstall horovod==0.28.1"
    )
    if not tensorflow_ok:
        return f"Horovod was built without TensorFlow support; {rebuild}"
    if launched_by_mpi and not mpi_built:
        return f"Horovod was built without MPI support but this job was started by mpirun/srun; {rebuild}"
    return None


def _import_horovod():
    try:
        import horovod  # noqa: F401
    except ImportError:
        raise UserError(
            "Horovod is not installed; run 'make install' in the hpccnn checkout, or "
            "HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 pip install --no-build-isolation horovod==0.28.1"
        ) from None
    try:
        import horovod.tensorflow.keras as hvd
    except ImportError:  # the extension for TensorFlow was not compiled
        hvd = None
    launched_by_mpi = any(v in os.environ for v in MPI_LAUNCHER_VARIABLES)
    problem = horovod_build_problem(hvd is not None, bool(hvd and hvd.mpi_built()), launched_by_mpi)
    if problem:
        raise UserError(problem)
    return hvd


def cores_for_this_rank(local_size: int) -> int:
    """CPU cores this rank may use, so that the ranks on a node never oversubscribe it.

    SLURM's --cpus-per-task is authoritative. Otherwise a rank bound by its launcher
    (mpirun binds to cores by default) sees only its own cores in its affinity mask;
    an unbound rank (horovodrun, mpirun --bind-to none) sees the whole node and takes
    an equal share.
    """
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit() and "SLURM_STEP_ID" in os.environ:
        return max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
    visible = len(os.sched_getaffinity(0))
    if visible >= (os.cpu_count() or visible) and local_size > 1:
        return max(1, visible // local_size)
    return max(1, visible)


def cpu_model_and_flags(cpuinfo="/proc/cpuinfo") -> tuple:
    """(this CPU's model name, the set of its feature flags), from Linux's cpuinfo."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return "an unknown CPU", set()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "an unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    return name, flags


_world: World | None = None

# Horovod's background thread wakes every HOROVOD_CYCLE_TIME ms (1 by default) to negotiate the
# ranks' collectives, even when there is one rank and nothing to negotiate: on 2 cores that took
# 1.2 % of the machine while idle, and interrupts TensorFlow's threads a thousand times a second.
# A process that no MPI launcher started is one rank alone, so it wakes every 20 ms instead (its few
# collectives per epoch wait for at most one cycle each). Jobs of several ranks keep Horovod's
# default, as does anyone who sets the variable.
SINGLE_RANK_CYCLE_MS = "20"


def init() -> World:
    """Starts Horovod once, pins one GPU per local rank, and splits CPU cores between local ranks."""
    global _world
    if _world is not None:
        return _world
    if not any(v in os.environ for v in MPI_LAUNCHER_VARIABLES):
        os.environ.setdefault("HOROVOD_CYCLE_TIME", SINGLE_RANK_CYCLE_MS)
    hvd = _import_horovod()
    hvd.init()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:  # one GPU per local rank
        tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
        tf.config.experimental.set_memory_growth(gpus[hvd.local_rank() % len(gpus)], True)
    threads = cores_for_this_rank(hvd.local_size())
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    _world = World(hvd.rank(), hvd.local_rank(), hvd.size(), hvd.local_size(), threads)
    return _world


def hvd():
    """The Horovod Keras module, after init()."""
    import horovod.tensorflow.keras as hvd

    return hvd


def allgather_object(obj):
    """Every rank's obj, in rank order (a list of length world size)."""
    import horovod.tensorflow as hvd_tf

    return hvd_tf.allgather_object(obj)


def broadcast_object(obj, root_rank: int = 0):
    import horovod.tensorflow as hvd_tf

    return hvd_tf.broadcast_object(obj, root_rank=root_rank)


def host_and_rank(world: World) -> dict:
    return {"host": socket.gethostname(), "rank": world.rank, "local_rank": world.local_rank,
            "pid": os.getpid(), "intra_op_threads": world.intra_op_threads}


def _ancestors(pid: int, limit=12):
    names = []
    for _ in range(limit):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            break
        names.append(cmdline or stat[stat.index("(") + 1:stat.rindex(")")])
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
        if pid <= 1:
            break
    return names


def launcher() -> str:
    """What started this rank, read from its ancestors.

    horovodrun execs mpirun (so no process is called horovodrun) with its own
    ``-x NCCL_SOCKET_IFNAME=...`` option, which plain mpirun lines lack.
    """
    names = " ".join(_ancestors(os.getppid()))
    if "horovodrun" in names or "NCCL_SOCKET_IFNAME=" in names:
        return "horovodrun"
    if any(tool in names for tool in ("mpirun", "orterun", "orted", "prterun")):
        return "mpirun"
    if "slurmstepd" in names or "SLURM_PROCID" in os.environ:
        return "srun"
    return "python"
