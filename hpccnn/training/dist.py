"""Horovod state in one place: rank, local rank, world size, and who writes.

Training reads its place in the job from Horovod, whatever launched it (plain
``python``, ``horovodrun``, ``mpirun``, ``srun --mpi=pmix`` or submitit), so
the training code never cares how it was started.
"""

import ctypes
import ctypes.util
import ipaddress
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from hpccnn.common.errors import UserError

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


def expand_hostlist(text: str) -> list:
    """SLURM's compressed host list as names: 'n[1-3,7],gpu01' -> ['n1', 'n2', 'n3', 'n7', 'gpu01']."""
    names = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", text):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if not match:
            names.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                for rest in expand_hostlist(suffix) if "[" in suffix else [suffix]:
                    names.append(f"{prefix}{i:0{len(lo)}d}{rest}")
    return names


def local_interfaces() -> dict:
    """{interface: [IPv4 networks of its addresses]} on this node, loopback left out."""
    found = {}
    for name, addresses in psutil.net_if_addrs().items():
        for a in addresses:
            if a.family == socket.AF_INET and a.netmask and not a.address.startswith("127."):
                found.setdefault(name, []).append(ipaddress.ip_interface(f"{a.address}/{a.netmask}"))
    return found


def route_interface(address: str) -> str | None:
    """The interface the kernel sends to address through (ip route get), or None."""
    try:
        out = subprocess.run(["ip", "-o", "route", "get", address], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\bdev (\S+)", out)
    return match.group(1) if match else None


ALLREDUCE_RULES = Path(__file__).with_name("openmpi_allreduce.rules")
TCP_EAGER_LIMIT = 64 * 2 ** 20  # Horovod's default fusion buffer: the largest message it sends
TCP_FRAGMENT = 2 ** 20  # a larger message's first fragment, and each one after it
# Open MPI's TCP transport between nodes, in two groups: the user's own variable of a group (by its
# prefixes) leaves that whole group to the user (a first fragment above the eager limit is refused)
TCP_PROTOCOL = (
    # how much goes at once: up to the eager limit the whole message, above it a first fragment
    (("OMPI_MCA_btl_tcp_eager", "OMPI_MCA_btl_tcp_rndv"),
     {"OMPI_MCA_btl_tcp_eager_limit": str(TCP_EAGER_LIMIT), "OMPI_MCA_btl_tcp_rndv_eager_limit": str(TCP_FRAGMENT)}),
    # the rest of a larger message: fragments sent as messages, not a put (Open MPI's own flags without put)
    (("OMPI_MCA_btl_tcp_flags", "OMPI_MCA_btl_tcp_max_send"),
     {"OMPI_MCA_btl_tcp_flags": "send,inplace,need-ack,need-csum", "OMPI_MCA_btl_tcp_max_send_size": str(TCP_FRAGMENT)}),
)

PEERS_LOOKED_UP = 4  # a few of the other nodes tell the interface; thousands of ranks needn't each ask DNS of all


def network_interface(environ=os.environ, interfaces=None, resolve=socket.gethostbyname, route=route_interface):
    """(interface, how it was chosen) that MPI should send between this job's nodes, or (None, why not).

    HPCCNN_NETWORK_INTERFACE, when set, is the answer. Otherwise, in a SLURM job on several
    nodes, it is the interface whose subnet holds the other nodes' addresses (their names as
    this node resolves them), or failing that the one the kernel routes to them through.
    Real nodes have interfaces that don't lead to the other nodes (a docker bridge, a second
    network with the same addresses on every node); left to choose, Open MPI tries them all
    and hangs in its first collective when one leads nowhere.
    """
    if environ.get("HPCCNN_NETWORK_INTERFACE"):
        return environ["HPCCNN_NETWORK_INTERFACE"], "HPCCNN_NETWORK_INTERFACE"
    # the job's nodes, not the step's: mpirun inside a job starts one single-node step per node
    listed = next((environ[k] for k in ("SLURM_JOB_NODELIST", "SLURM_NODELIST") if environ.get(k)), "")
    try:
        nodes = expand_hostlist(listed)
    except ValueError:
        return None, f"could not read SLURM's node list {listed!r}; set HPCCNN_NETWORK_INTERFACE"
    me = environ.get("SLURMD_NODENAME") or socket.gethostname()
    others = [n for n in nodes if n != me][:PEERS_LOOKED_UP]
    if not others:
        return None, "one node: no network between ranks"
    try:
        peers = [ipaddress.ip_address(resolve(n)) for n in others]
    except (OSError, ValueError) as err:
        return None, f"could not resolve the job's other nodes ({err}); set HPCCNN_NETWORK_INTERFACE"
    interfaces = local_interfaces() if interfaces is None else interfaces
    same_subnet = sorted(name for name, nets in interfaces.items()
                         if all(any(p in net.network for net in nets) for p in peers))
    if len(same_subnet) == 1:
        return same_subnet[0], f"the subnet of the job's other nodes ({', '.join(others[:3])})"
    routed = {route(str(p)) for p in peers}
    if len(routed) == 1 and None not in routed:
        return routed.pop(), f"the route to the job's other nodes ({', '.join(others[:3])})"
    return None, "no single interface reaches the job's other nodes; set HPCCNN_NETWORK_INTERFACE"


def spans_nodes(environ=os.environ) -> bool:
    """Whether this job's ranks run on more than one node, from what the launcher told the rank
    before MPI starts: mpirun's (and so horovodrun's) world and local sizes, or srun's node count."""
    size, local = environ.get("OMPI_COMM_WORLD_SIZE", ""), environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "")
    if size.isdigit() and local.isdigit():
        return int(local) < int(size)
    nodes = environ.get("SLURM_STEP_NUM_NODES", "")
    return nodes.isdigit() and int(nodes) > 1


def mpi_settings(environ=os.environ) -> tuple:
    """(variables to set before MPI starts, how the interface was chosen); a user's own variables win.

    They are set in the rank itself, before Horovod starts MPI, so they take effect whoever
    started the ranks: horovodrun, mpirun, srun, submitit, or hpccnn's own launchers.
    """
    # Open MPI busy-polls while a rank waits in a collective; with ranks sharing a node's cores that
    # spinning takes the cores from TensorFlow's threads. Yield instead (README, Performance).
    wanted = {"OMPI_MCA_mpi_yield_when_idle": "1"}
    # Between nodes, Open MPI 4.1's own choice of allreduce algorithm for a gradient's megabytes took
    # 1.4-1.9x the ring's time (README, Scaling): the rules file picks what measured best. Within one
    # node Open MPI's choice was the faster one (memory, not a network, moves the gradient).
    across = spans_nodes(environ)
    if across and not any(k.startswith("OMPI_MCA_coll_tuned_") for k in environ):
        wanted.update(OMPI_MCA_coll_tuned_use_dynamic_rules="1",
                      OMPI_MCA_coll_tuned_dynamic_rules_filename=str(ALLREDUCE_RULES))
    # Above its eager limit (64 KB) Open MPI's TCP transport sends a message only once the receiver has
    # answered; in training that held a gradient's allreduce to half the link's speed in most steps
    # (README, Scaling). Up to Horovod's fusion buffer (64 MB), every fused gradient goes at once.
    # A larger message (a half of AlexNet-227's 151 MB layer in the ring) goes in 1 MB fragments sent
    # as messages, not as Open MPI's default "put" of the whole message, which the receiver asks for
    # with a small message: when one rank's put of its half had started first, its request for the
    # other's half queued behind it on the ranks' one connection, so the halves crossed one after the
    # other instead of at once (one such allreduce in three took 1.5x the time; README, Scaling).
    for own, settings in TCP_PROTOCOL:
        if across and not any(k.startswith(own) for k in environ):
            wanted.update(settings)
    interface, how = network_interface(environ)
    chosen_by_user = any(k in environ for k in ("OMPI_MCA_btl_tcp_if_include", "OMPI_MCA_btl_tcp_if_exclude"))
    if interface and not chosen_by_user:
        wanted.update(OMPI_MCA_btl_tcp_if_include=interface,  # Open MPI's TCP transport between nodes
                      NCCL_SOCKET_IFNAME=interface,  # NCCL's, on GPU nodes
                      HOROVOD_GLOO_IFACE=interface)  # Gloo's, when Horovod runs without MPI
    elif chosen_by_user:
        how = "the job's own OMPI_MCA_btl_tcp_if_include/exclude"
    return {k: v for k, v in wanted.items() if k not in environ}, how


MPI_T_VARIABLES = {"mpi_yield_when_idle": int, "btl_tcp_if_include": str, "btl_tcp_if_exclude": str,
                   "coll_tuned_use_dynamic_rules": int, "coll_tuned_dynamic_rules_filename": str,
                   "btl_tcp_eager_limit": int, "btl_tcp_rndv_eager_limit": int, "btl_tcp_max_send_size": int,
                   "btl_tcp_flags": int}


def mpi_parameters(names=MPI_T_VARIABLES) -> dict:
    """Open MPI's parameters as this running process has them, read back through MPI's tool
    interface (MPI_T) after MPI has started: what took effect, not what was asked for."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("mpi") or "libmpi.so.40", mode=ctypes.RTLD_GLOBAL)
        provided = ctypes.c_int()
        if lib.MPI_T_init_thread(0, ctypes.byref(provided)) != 0:
            return {}
    except (OSError, AttributeError):
        return {}
    found = {}
    for name, kind in names.items():
        index, handle, count = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_int()
        if lib.MPI_T_cvar_get_index(name.encode(), ctypes.byref(index)) != 0:
            continue
        if lib.MPI_T_cvar_handle_alloc(index, None, ctypes.byref(handle), ctypes.byref(count)) != 0:
            continue
        buffer = ctypes.create_string_buffer(max(16, count.value + 1) if kind is str else 16)
        if lib.MPI_T_cvar_read(handle, buffer) == 0:
            # integers are 4 (int, bool) or 8 bytes (size_t) wide, little-endian in a zeroed buffer
            found[name] = buffer.value.decode() if kind is str else ctypes.c_int64.from_buffer(buffer).value
        lib.MPI_T_cvar_handle_free(ctypes.byref(handle))
    lib.MPI_T_finalize()
    return found


_network = None  # how this rank's interface was chosen, for provenance
_malloc = None  # what keep_freed_memory did, for provenance

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
GLIBC_MALLOC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
MALLOC_CHOICES = ("keep", "glibc")


def malloc_choice(environ=os.environ) -> str:
    """HPCCNN_MALLOC, checked: keep (the default) or glibc."""
    choice = environ.get("HPCCNN_MALLOC", "keep")
    if choice not in MALLOC_CHOICES:
        raise UserError(f"HPCCNN_MALLOC={choice!r} must be keep (freed memory kept for the next steps, the default) "
                        f"or glibc (glibc's own behaviour)")
    return choice


def keep_freed_memory(environ=os.environ, mallopt=None) -> str:
    """Has glibc keep the memory a rank frees for its next allocations, instead of handing every large
    block back to the kernel; returns what was done, for provenance.

    Every training step allocates its gradients and activations anew: AlexNet-227's 233 MB of
    gradients, and Horovod's output tensors as large. glibc serves a block above 32 MB with a fresh
    mmap and unmaps it when freed, so each step's first touch of it takes new pages from the kernel:
    a multiply into a new 222.5 MiB tensor took 100 ms where it takes 53 ms into memory the process
    keeps (README, Scaling). HPCCNN_MALLOC=glibc leaves glibc's own behaviour; a user's own glibc
    malloc variables (MALLOC_MMAP_MAX_ and the like, or glibc.malloc tunables) win.
    """
    if malloc_choice(environ) == "glibc":
        return "glibc's own (HPCCNN_MALLOC=glibc)"
    if any(k in environ for k in GLIBC_MALLOC_VARIABLES) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "glibc's, as the job's own malloc variables set it"
    if mallopt is None:
        try:
            mallopt = ctypes.CDLL("libc.so.6").mallopt
        except (OSError, AttributeError):
            return "glibc's own (no glibc mallopt here)"
    # no mmap: large blocks come from the heap, where freed ones are reused; no trimming: the heap's
    # freed top stays for the next step (a rank's peak memory is what it holds anyway)
    if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1) != 1:
        return "glibc's own (mallopt refused)"
    return "kept for reuse (mallopt: no mmap, no trimming)"


def refuse_horovodrun_beside_slurm(launched_by: str, size: int, local_size: int, environ=os.environ) -> None:
    """horovodrun inside a SLURM job of several nodes starts every rank on the first node (it reads
    no allocation: horovod issue #2097), leaving the others idle while the job pays for them."""
    nodes = environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or "1"
    if launched_by == "horovodrun" and nodes.isdigit() and int(nodes) > 1 and local_size == size:
        raise UserError(f"horovodrun ignores SLURM's allocation (horovod issue #2097) and started all {size} ranks "
                        f"on {socket.gethostname()}, one of the job's {nodes} nodes; start them with "
                        f"'srun --mpi=pmix python -m hpccnn.train ...' (or mpirun, which reads the allocation)")


def init() -> World:
    """Starts Horovod once, pins one GPU per local rank, and splits CPU cores between local ranks."""
    global _world, _network, _malloc
    if _world is not None:
        return _world
    _malloc = keep_freed_memory(os.environ)
    if not any(v in os.environ for v in MPI_LAUNCHER_VARIABLES):
        os.environ.setdefault("HOROVOD_CYCLE_TIME", SINGLE_RANK_CYCLE_MS)
    settings, _network = mpi_settings(os.environ)
    os.environ.update(settings)  # before MPI starts: it reads them once, at MPI_Init
    hvd = _import_horovod()
    hvd.init()
    try:
        refuse_horovodrun_beside_slurm(launcher(), hvd.size(), hvd.local_size())
    except UserError:
        if hvd.rank() != 0:  # one line from rank 0, not one per rank; the launcher ends this rank
            time.sleep(30)  # once rank 0 has exited, which it does after printing its line
            os._exit(2)
        raise
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


def gradient_op():
    """The reduction hpccnn's optimizer asks of Horovod: a sum of gradients each rank has already
    divided by the rank count (distributed_optimizer). hpccnn.benchmark.scaling times the same allreduce."""
    return hvd().Sum


def distributed_optimizer(optimizer, compression, size: int):
    """Horovod's DistributedOptimizer around optimizer, averaging the ranks' gradients with one pass
    over them less than Horovod's own average.

    Horovod's average is a sum followed by a division of the result, a pass of its own over the
    whole gradient after the allreduce (AlexNet-227: 233 MB a step, on the core that also feeds the
    network). Here the backward pass starts from 1/size instead of 1 (the gradient of the loss
    with respect to itself), so each rank's gradients come out already divided, and Horovod only
    sums. For a power-of-two rank count the result is the same to the bit: dividing by 2**k is exact.
    """
    h = hvd()
    if size == 1:
        return h.DistributedOptimizer(optimizer, compression=compression)
    wrapped = h.DistributedOptimizer(optimizer, compression=compression, op=gradient_op())
    inner = wrapped._compute_gradients  # Horovod's: the base optimizer's gradients, then the allreduce

    def _compute_gradients(loss, var_list, grad_loss=None, tape=None):
        import tensorflow as tf

        if grad_loss is None:
            grad_loss = tf.constant(1.0 / size, dtype=getattr(loss, "dtype", tf.float32))
        else:
            grad_loss = grad_loss / size
        return inner(loss, var_list, grad_loss, tape)

    # on the instance: Horovod's method calls super(self.__class__, self), which a subclass would loop
    wrapped._compute_gradients = _compute_gradients
    return wrapped


def allgather_object(obj):
    """Every rank's obj, in rank order (a list of length world size)."""
    import horovod.tensorflow as hvd_tf

    return hvd_tf.allgather_object(obj)


def broadcast_object(obj, root_rank: int = 0):
    import horovod.tensorflow as hvd_tf

    return hvd_tf.broadcast_object(obj, root_rank=root_rank)


def host_and_rank(world: World) -> dict:
    """This rank's place and resources, as provenance.json lists them (rank 0 gathers every rank's)."""
    return {"host": socket.gethostname(), "rank": world.rank, "local_rank": world.local_rank,
            "local_size": world.local_size, "pid": os.getpid(), "intra_op_threads": world.intra_op_threads,
            "cpus": sorted(os.sched_getaffinity(0)),
            "malloc": _malloc,
            "mpi": {**mpi_parameters(), "interface_chosen_by": _network} if world.size > 1 else {}}


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
