"""Scaling past one machine: the README's model on paper, and measured on namespace nodes.

The model: a step on N nodes takes the compute of one node's step plus one ring allreduce of
the gradient, in which each node sends and receives 2 (N-1)/N of it over its link; no overlap.

`python -m hpccnn.bench --nodes 2 --link-gbit 0.5,1,2` checks it. It starts a SLURM cluster of N
network-namespace nodes on this machine (scripts/local_slurm.sh), each pinned to its own cores
and joined to a bridge by a link that tc shapes to each speed in turn, and measures per model:
  compute   images/s of 1 rank on each node training alone, all nodes at the same time (so the
            cores are as busy as in the N-node job, without the network): the model's compute step;
  N nodes   images/s of N ranks, one per node, each with that node's cores and the same batch;
  allreduce one whole-gradient allreduce (as Horovod sends it) between the nodes, timed on its own;
  peers     images/s on the same nodes and link, one worker per node under srun, of TensorFlow's
            MultiWorkerMirroredStrategy (mwms: SlurmClusterResolver, collectives over gRPC) and of
            Horovod's own Keras recipe (horovod: its defaults, over MPI);
and beside them what the model predicts from the compute step and the link's speed.
"""

import os
import shlex
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hpccnn.benchmark.measure import parse_result, worker_command
from hpccnn.benchmark.plans import Options, Plan
from hpccnn.benchmark.results import machine, write_tables
from hpccnn.benchmark.runners import PEERS, RUNNERS
from hpccnn.common import tables
from hpccnn.common.errors import UserError
from hpccnn.training import dist

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "local_slurm.sh"
PORT = "6837"  # the tests' clusters use 6817 and 6827
ALLREDUCES = 7  # timed, after 2 untimed ones; the median and the slowest are reported


def allreduce_seconds(gradient_mb: float, nodes: int, gbit_per_s: float) -> float:
    """Ring allreduce: each node sends and receives 2 (N-1)/N of the gradient over its link."""
    return 2 * (nodes - 1) / nodes * gradient_mb * 8e6 / (gbit_per_s * 1e9)


def paper(rows, nodes=(2, 4, 8, 16, 32, 64), links=(10, 25, 100)) -> str:
    """Expected scaling efficiency past one machine, on paper, from a run's 1-rank step times: from
    compute / (compute + allreduce), no overlap, to compute / max(compute, allreduce), the allreduce
    wholly hidden behind the backward pass. Measured on namespace nodes (README, Scaling), the
    AlexNets ran at the first and the small CNNs up to the second."""
    intro = ("Scaling on paper: per-step compute time measured above (hpccnn, 1 rank, this machine), "
             "float32 gradients in one ring allreduce per step (in brackets). Efficiency with no overlap, "
             "compute / (compute + allreduce), the lower bound; the upper, with the allreduce wholly hidden "
             "behind the backward pass, is 100 % where the allreduce is the shorter and is given after a "
             "dash where it is the longer.\n\n")

    def efficiency(step, comm):
        hidden = step / max(step, comm)  # wholly hidden: 100 % unless the allreduce is the longer
        return f"{step / (step + comm):.0%}{'' if hidden > 0.995 else f'–{hidden:.0%}'} ({comm * 1000:.0f} ms)"

    header = ["model", "gradient (MB)", "step (s)", "link", *(f"{n} nodes" for n in nodes)]
    return intro + tables.markdown(header, (
        [r["model"], f"{r['gradient_mb']:.1f}", f"{r['step_seconds']:.3f}", f"{link} Gbit/s",
         *(efficiency(r["step_seconds"], allreduce_seconds(r["gradient_mb"], n, link)) for n in nodes)]
        for r in rows if r["runner"] == "hpccnn 1 rank" for link in links))


def time_allreduce(model, repeats=ALLREDUCES, fp16=False) -> float:
    """Median seconds of one allreduce of model's whole gradient between this job's ranks (time_allreduces)."""
    return statistics.median(time_allreduces(model, repeats, fp16))


def time_allreduces(model, repeats=ALLREDUCES, fp16=False) -> list:
    """Seconds of each of repeats allreduces of model's whole gradient between this job's ranks, as
    hpccnn's DistributedOptimizer sends it (one grouped, fused allreduce, a sum of gradients the
    ranks have already divided: hpccnn.training.dist.distributed_optimizer); every rank calls it. All of them,
    not only a median: one allreduce in three that takes half as long again hides under a median."""
    import horovod.tensorflow as hvd_tf
    import tensorflow as tf

    compression = hvd_tf.Compression.fp16 if fp16 else hvd_tf.Compression.none
    grads = [tf.ones_like(v) for v in model.trainable_variables]
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        out = hvd_tf.grouped_allreduce(grads, op=dist.gradient_op(), compression=compression, name=f"bench_{i}")
        _ = [o.numpy() for o in out]
        if i >= 2:
            times.append(time.perf_counter() - start)
    return times


def parse_links(text: str) -> list:
    try:
        links = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        links = []
    if not links or min(links) <= 0 or max(links) > 100:
        raise UserError(f"--link-gbit wants comma-separated link speeds in Gbit/s between 0 and 100 "
                        f"(for example 0.5,1,2), got {text!r}")
    return links


def check_machine(nodes: int) -> int:
    """Cores per node, or a UserError saying why namespace nodes can't run here."""
    cores = os.cpu_count() or 1
    if nodes < 2 or nodes > cores:
        raise UserError(f"--nodes {nodes}: the multi-node benchmark needs 2 to {cores} nodes on this machine "
                        f"({cores} cores), so that every node computes on cores of its own")
    if os.geteuid() != 0:
        raise UserError("the multi-node benchmark makes network namespaces and shapes links: run it as root")
    if not SCRIPT.is_file():
        raise UserError(f"the multi-node benchmark needs hpccnn's checkout ({SCRIPT} is missing)")
    for tool in ("sbatch", "slurmctld", "ip", "tc"):
        if not shutil.which(tool):
            raise UserError(f"the multi-node benchmark needs {tool}; run 'make install' (scripts/install_system.sh)")
    if Path("/var/run/netns/hpccnn-n1").exists():
        raise UserError("namespace nodes of another local cluster are running (hpccnn-n1); stop it with "
                        "scripts/local_slurm.sh stop (and its HPCCNN_SLURM_DIR) first")
    return cores // nodes


class Cluster:
    """scripts/local_slurm.sh's cluster of namespace nodes, started in a folder of its own and stopped
    (namespaces, links, daemons) when the with-block ends, whatever happened in it."""

    def __init__(self, nodes, cores_per_node, gbit):
        self.names, self.cores = [f"n{k + 1}" for k in range(nodes)], cores_per_node  # its nodes, cores each
        self.dir = Path(tempfile.mkdtemp(prefix="hpccnn-bench-nodes-"))
        self.dir.chmod(0o755)  # munged runs as its own user
        self.env = {**os.environ, "HPCCNN_SLURM_DIR": str(self.dir), "HPCCNN_SLURMCTLD_PORT": PORT,
                    "SLURM_CONF": str(self.dir / "slurm.conf")}
        self.start = ["start", "--nodes", str(nodes), "--cpus-per-node", str(cores_per_node), "--link-gbit", str(gbit)]
        self.jobs = []  # the sbatch --wait of every job submitted: none outlives the cluster

    def script(self, *args, timeout=120):
        proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"local_slurm.sh {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")

    def __enter__(self):
        try:
            self.script(*self.start)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for proc in self.jobs:  # a job still waited for when the benchmark failed or was killed
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, env=self.env, timeout=180)
        shutil.rmtree(self.dir, ignore_errors=True)

    def job(self, nodes, cores, command, out, timeout=1800, env=None) -> subprocess.Popen:
        """Submits command under srun on the nodes named (one task each, cores each) with sbatch --wait,
        and returns at once; wait() gives its measurement. env: variables for the job beside the cluster's."""
        wrap = "srun --mpi=pmix " + shlex.join(command)
        proc = subprocess.Popen(["sbatch", "--wait", "--parsable", f"--nodes={len(nodes)}", "--ntasks-per-node=1",
                                 f"--cpus-per-task={cores}", f"--nodelist={','.join(nodes)}",
                                 f"--time={timeout // 60}", f"--output={out}", "--wrap", wrap],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**self.env, **(env or {})})
        proc.out, proc.timeout = out, timeout + 120
        self.jobs.append(proc)
        return proc

    @staticmethod
    def wait(proc) -> dict:
        """The measurement a job's rank 0 printed, or a RuntimeError with the job's last output."""
        try:
            _, err = proc.communicate(timeout=proc.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError(f"a job did not end in {proc.timeout} s: {proc.out}") from None
        text = proc.out.read_text() if proc.out.exists() else ""
        if proc.returncode != 0:
            raise RuntimeError(f"a job failed: {err.strip()[-300:]}\n{text[-1500:]}")
        return parse_result(text)


@dataclass(frozen=True)
class Compute:
    """A model's compute step on the nodes: 1 rank on each node training alone, all at the same time."""
    model: str
    batch: int  # per rank
    images_per_second: float  # the nodes' mean
    per_node: list  # each node's images/s
    params: int


def compute_step(cluster, model, how: Plan, settings, jobs: Path) -> Compute:
    """model's Compute: each node trains alone, all at once: the cores are as busy as in the N-node job,
    and no rank waits on the network. settings: hpccnn.train's, jobs: the folder of the jobs' output."""
    alone = [cluster.job([node], cluster.cores, worker_command("hpccnn", model, how, settings),
                         jobs / f"{model}-alone-{node}.out") for node in cluster.names]
    alone = [cluster.wait(job) for job in alone]
    return Compute(model, how.batch, statistics.mean(r["images_per_second"] for r in alone),
                   [round(r["images_per_second"], 1) for r in alone], alone[0]["params"])


def run_nodes(options: Options, nodes: int, links, fp16=False):
    """Per model: compute (every node training alone, all at once), then at each link speed N nodes'
    images/s and a whole-gradient allreduce, beside the README model's prediction for that link, and
    each peer's images/s (options.peers: of hpccnn.benchmark.runners.PEERS) on the same nodes and link;
    fp16: the gradients sent as float16. Writes nodes.csv, nodes.md and the jobs' output (jobs/) to
    options.out, a new folder."""
    models, log = options.models, options.log
    cores = check_machine(nodes)
    work = options.out.with_name(options.out.name + ".partial")
    jobs = work / "jobs"
    jobs.mkdir(parents=True, exist_ok=False)  # each job's output, kept beside the tables
    settings = {"steps_per_execution": 1, **({"fp16_allreduce": "true"} if fp16 else {})}
    plans = {model: options.plan(model) for model in models}
    rows = []

    def stop(signum, frame):  # SIGTERM (kill, a job's time limit) too takes the cluster down on its way out
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with Cluster(nodes, cores, links[0]) as cluster:
            log(f"{nodes} namespace nodes up, {cores} core(s) each (scripts/local_slurm.sh)")
            compute = {}
            for model in models:
                compute[model] = compute_step(cluster, model, plans[model], settings, jobs)
                log(f"{model:17} alone on each node at once: {compute[model].per_node} img/s (compute)")
            for gbit in links:
                cluster.script("link", "--gbit", str(gbit))
                for model in models:
                    how = plans[model]
                    per_rank = Plan(how.batch * nodes, how.warmup, how.steps, how.seconds)
                    got = cluster.wait(cluster.job(
                        cluster.names, cores, worker_command("hpccnn", model, per_rank, settings, allreduce=True),
                        jobs / f"{model}-{nodes}-nodes-{gbit}-gbit.out"))
                    rows.append(row(compute[model], nodes, gbit, got, fp16))
                    for peer in options.peers:  # the same model, global batch and nodes, each set up its own way
                        got = cluster.wait(cluster.job(
                            cluster.names, cores, worker_command(peer, model, per_rank, settings),
                            jobs / f"{model}-{nodes}-nodes-{gbit}-gbit-{peer}.out", env=PEER_ENV.get(peer)))
                        rows[-1].update(peer_row(peer, got, rows[-1]))
                    log(format_row(rows[-1]))
        md = markdown(rows, nodes, cores, fp16)
        write_tables(work, "nodes", rows, md)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # no half-written results: the error says what failed
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    work.rename(options.out)
    return rows, md


def row(compute: Compute, nodes, gbit, got, fp16) -> dict:
    """nodes.csv's row of compute's model on nodes at link speed gbit: got, the N-node job's measurement, beside
    the README model's prediction from compute's step."""
    model, batch = compute.model, compute.batch
    gradient_mb = compute.params * 4 / 1e6
    sent_mb = gradient_mb / 2 if fp16 else gradient_mb
    step = batch / compute.images_per_second
    ring = allreduce_seconds(sent_mb, nodes, gbit)
    predicted = nodes * batch / (step + ring)  # the README's model: a compute step, then the ring; no overlap
    return {"model": model, "nodes": nodes, "link_gbit": gbit, "batch_per_rank": batch,
            "gradient_mb": round(gradient_mb, 2), "fp16_allreduce": fp16,
            "compute_images_per_second": round(compute.images_per_second, 1), "compute_step_seconds": round(step, 4),
            "compute_per_node": " ".join(map(str, compute.per_node)),
            "allreduce_ms": round(got["allreduce_seconds"] * 1000, 1), "ring_bound_ms": round(ring * 1000, 1),
            "allreduce_vs_ring": round(got["allreduce_seconds"] / ring, 3),
            "allreduce_slowest_ms": round(max(got["allreduce_all_seconds"]) * 1000, 1),
            "allreduce_slowest_vs_ring": round(max(got["allreduce_all_seconds"]) / ring, 3),
            "images_per_second": round(got["images_per_second"], 1),
            "predicted_images_per_second": round(predicted, 1),
            "measured_vs_predicted": round(got["images_per_second"] / predicted, 3),
            # the other bound: the allreduce wholly hidden behind the backward pass (Horovod starts each
            # gradient's as soon as it is computed), so a step is the longer of the two
            "full_overlap_images_per_second": round(nodes * batch / max(step, ring), 1),
            # the model with the allreduce as measured: what is left is overlap and shared CPU
            "with_measured_allreduce": round(nodes * batch / (step + got["allreduce_seconds"]), 1),
            "efficiency": round(got["images_per_second"] / (nodes * compute.images_per_second), 3),
            "predicted_efficiency": round(predicted / (nodes * compute.images_per_second), 3),
            "timed_steps": got["timed_steps"],
            "peak_rss_mb_per_rank": round(max(r["rss_mb"] for r in got["ranks"]))}


def peer_row(peer, got, hpccnn) -> dict:
    """A peer's measurement (runner peer) beside hpccnn's row of the same model and link."""
    workers = got["setup"]["workers"]
    if workers != hpccnn["nodes"]:  # e.g. a resolver that saw one worker: each node would have trained alone
        raise RuntimeError(f"{peer} ran {workers} worker(s) on {hpccnn['nodes']} nodes")
    return {f"{peer}_images_per_second": round(got["images_per_second"], 1),
            f"hpccnn_vs_{peer}": round(hpccnn["images_per_second"] / got["images_per_second"], 3),
            f"{peer}_collective": got["setup"]["collective"], f"{peer}_threads": got["setup"]["threads"]}


def _peers_of(rows) -> list:
    """(peer, title) of each peer measured in rows."""
    return [(p, RUNNERS[p].title) for p in PEERS if rows and f"{p}_images_per_second" in rows[0]]


def format_row(r) -> str:
    return (f"{r['model']:17} {r['nodes']} nodes {r['link_gbit']:5g} Gbit/s {r['images_per_second']:9.1f} img/s "
            f"(predicted {r['predicted_images_per_second']:.1f}, x{r['measured_vs_predicted']:.2f})  allreduce "
            f"{r['allreduce_ms']:.0f} ms = x{r['allreduce_vs_ring']:.2f} the ring's {r['ring_bound_ms']:.0f} ms "
            f"(slowest x{r['allreduce_slowest_vs_ring']:.2f})"
            + "".join(f"; {title} {r[f'{p}_images_per_second']:.1f} img/s (hpccnn x{r[f'hpccnn_vs_{p}']:.2f})"
                      for p, title in _peers_of([r])))


def markdown(rows, nodes, cores, fp16) -> str:
    head = (f"Measured {datetime.now():%Y-%m-%d %H:%M} on {machine()}: {nodes} network-namespace nodes of "
            f"{cores} core(s) each, one rank per node, links shaped by tc tbf; "
            f"{'fp16' if fp16 else 'float32'} gradients. Compute: each node trains alone, all at the same time (the "
            f"cores as busy as in the N-node job, no network). Predicted: N x batch / "
            f"(compute step + ring allreduce of the gradient at the link's speed), no overlap. The allreduce "
            f"is timed on its own, {ALLREDUCES} times (the median, and the slowest of them).\n\n")
    return head + tables.markdown(*tables.cells({
        "model": tables.key("model"), "batch per rank": tables.key("batch_per_rank"),
        "gradient (MB)": tables.key("gradient_mb", ".1f"), "link (Gbit/s)": tables.key("link_gbit", "g"),
        "compute, a node alone (img/s)": tables.key("compute_images_per_second", ",.1f"),
        f"{nodes} nodes measured (img/s)": tables.key("images_per_second", ",.1f"),
        "predicted (img/s)": tables.key("predicted_images_per_second", ",.1f"),
        "measured / predicted": lambda r: f"{r['measured_vs_predicted']:.2f}×",
        "with full overlap (img/s)": tables.key("full_overlap_images_per_second", ",.1f"),
        "efficiency measured (predicted)": lambda r: f"{r['efficiency']:.0%} ({r['predicted_efficiency']:.0%})",
        "allreduce measured (ms)": tables.key("allreduce_ms", ",.0f"),
        "ring bound (ms)": tables.key("ring_bound_ms", ",.0f"),
        "allreduce / ring": lambda r: f"{r['allreduce_vs_ring']:.2f}×",
        f"slowest of {ALLREDUCES} / ring": lambda r: f"{r['allreduce_slowest_vs_ring']:.2f}×",
        **{k: v for p, title in _peers_of(rows) for k, v in (
            (f"{title}, {nodes} nodes (img/s)", tables.key(f"{p}_images_per_second", ",.1f")),
            (f"hpccnn / {title}", lambda r, p=p: f"{r[f'hpccnn_vs_{p}']:.2f}×"))},
    }, rows)) + "".join(
        f"\n\n{title}: {PEER_SETUPS[p]}, one worker per node under srun, the same model and global batch as "
        f"hpccnn's ranks; {rows[0][f'{p}_collective']}; threads {rows[0][f'{p}_threads']} per worker (intra-op/"
        f"inter-op; 0 is TensorFlow's default, every core it sees)"
        + ("; float32 gradients (only hpccnn's are sent as fp16)." if fp16 else ".") for p, title in _peers_of(rows))


# What a peer's user must set for it to run on these nodes at all. Each node has a second interface that
# leads nowhere (eth1, as real nodes have a docker bridge or a second network; scripts/local_slurm.sh):
# Open MPI, left to choose, tried it and the recipe hung in its first allreduce. Horovod's documentation
# tells such a user to name the interface (horovodrun --network-interfaces, mpirun -mca btl_tcp_if_include).
PEER_ENV = {"horovod": {"OMPI_MCA_btl_tcp_if_include": "eth0"}}
PEER_SETUPS = {"horovod": "Horovod's own Keras recipe as its example writes it (its input pipeline, TensorFlow's "
                          "threads at their defaults), with " + " ".join(f"{k}={v}" for k, v in PEER_ENV["horovod"].items())
                          + " (the nodes' second interface leads nowhere, and left to choose Open MPI hung the "
                            "recipe's first allreduce)",
               "mwms": "TensorFlow's MultiWorkerMirroredStrategy (SlurmClusterResolver; hpccnn's input pipeline)"}
