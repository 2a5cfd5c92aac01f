"""Several nodes, for real: a SLURM cluster of 2 nodes, each a network namespace on this machine (n1, n2)
with its own core, its own hostname and a second interface (eth1) whose address leads nowhere.

Every job here crosses a real network between the nodes (veth links and a bridge made by
scripts/local_slurm.sh), so the interface MPI uses, the local ranks, the cores per rank and
what happens when a node is lost are all exercised as on a real cluster.
"""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import GRID_ARGS, NODE_CORES, ROOT, read_json, run_folders, run_module, run_to_end, sbatch, wait_for
from hpccnn.training.dist import ALLREDUCE_RULES
from hpccnn.launching.launch import mpi_env
from test_resilience import SLOW, metrics, requeued_twice_ends_where_an_uninterrupted_run_does, wait_until

pytestmark = [pytest.mark.mpi, pytest.mark.slow]  # every job here runs 2 ranks or more (slurm: conftest)

SCRIPT = ROOT / "scripts" / "local_slurm.sh"


def run_on_nodes(env, tmp_path, name, command, ranks_per_node=1):
    """sbatch --wrap COMMAND on 2 nodes; (final state, log text)."""
    job = sbatch(mpi_env(env), None, "--nodes=2", f"--ntasks-per-node={ranks_per_node}", "--cpus-per-task=1",
                 "--mem=3G", "--time=15", f"--output={tmp_path}/{name}-%j.out", f"--wrap={command}")
    state = wait_for(env, job, timeout=600)
    return state, (tmp_path / f"{name}-{job}.out").read_text()


def train(*args):
    return shlex.join([sys.executable, "-m", "hpccnn.train", *map(str, args)])


def by_host(prov):
    hosts = {}
    for rank in prov["ranks"]:
        hosts.setdefault(rank["host"], []).append(rank)
    return hosts


def assert_interface_chosen(rank):
    """MPI's TCP transport was given eth0 (the nodes' shared link), read back from Open MPI itself."""
    assert rank["mpi"]["btl_tcp_if_include"] == "eth0", rank
    assert "subnet of the job's other nodes" in rank["mpi"]["interface_chosen_by"], rank
    assert rank["mpi"]["mpi_yield_when_idle"] == 1, rank
    # across nodes, Open MPI's allreduce follows hpccnn's rules (the ring's speed: README, Scaling)
    assert rank["mpi"]["coll_tuned_use_dynamic_rules"] == 1, rank
    assert rank["mpi"]["coll_tuned_dynamic_rules_filename"] == str(ALLREDUCE_RULES), rank
    assert rank["mpi"]["btl_tcp_eager_limit"] == 64 * 2 ** 20, rank
    # larger messages in 1 MB fragments sent as messages: Open MPI's put (flag 0x2) off, its send (0x1) on
    assert rank["mpi"]["btl_tcp_rndv_eager_limit"] == rank["mpi"]["btl_tcp_max_send_size"] == 2 ** 20, rank
    assert rank["mpi"]["btl_tcp_flags"] & 0x1 and not rank["mpi"]["btl_tcp_flags"] & 0x2, rank


def test_the_cpu_template_trains_across_two_nodes(nodes_env, tmp_path):
    """The README's sbatch line for 2 nodes, with the overrides this small machine needs."""
    results = tmp_path / "results"
    job = sbatch(dict(nodes_env, RESULTS_DIR=str(results)), "slurm/alexnet_cpu.sbatch", "--nodes=2",
                 "--ntasks-per-node=1", "--cpus-per-task=1", "--mem=4G",
                 "--export=ALL,EXPERIMENT=digits_cnn,EPOCHS=2", f"--output={tmp_path}/slurm-%j.out")
    state = wait_for(nodes_env, job, timeout=600)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert state == "COMPLETED", log[-3000:]
    (folder,) = run_folders(results)
    prov, done = read_json(folder / "provenance.json"), read_json(folder / "metrics.json")
    assert done["status"] == "completed" and done["world_size"] == 2 and prov["launcher"] == "srun"
    assert prov["hosts"] == ["n1", "n2"]
    hosts = by_host(prov)
    for host, ranks in hosts.items():
        (rank,) = ranks
        assert rank["local_rank"] == 0 and rank["local_size"] == 1, rank
        # the rank sees only its node's core, and takes one thread (--cpus-per-task=1)
        assert rank["cpus"] == NODE_CORES[host] and rank["intra_op_threads"] == 1, rank
        assert_interface_chosen(rank)
    # only rank 0 wrote: one folder, nothing outside it, one "results in" line
    assert {p.relative_to(results).parts[:2] for p in results.rglob("*") if len(p.relative_to(results).parts) > 1} \
        == {folder.relative_to(results).parts}
    assert log.count("hpccnn: results in") == 1
    predictions = pd.read_csv(folder / "predictions.csv")
    assert len(predictions) == 360  # both nodes' test shards gathered on rank 0
    assert pd.read_csv(folder / "confusion_matrix.csv", index_col=0).to_numpy().sum() == 360
    assert pd.read_csv(folder / "history.csv")["epoch"].tolist() == [1, 2]


def test_two_nodes_by_two_ranks_get_their_local_ranks_and_cores(nodes_env, tmp_path):
    """2 nodes x 2 ranks. Each node declares 2 CPUs but is pinned to 1 real core of this 2-core
    machine, so each node's 2 ranks share its one core: oversubscribed on purpose, to have 4 ranks."""
    results = tmp_path / "results"
    job = sbatch(dict(nodes_env, RESULTS_DIR=str(results)), "slurm/alexnet_cpu.sbatch", "--nodes=2",
                 "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=4G",
                 "--export=ALL,EXPERIMENT=digits_cnn,EPOCHS=1", f"--output={tmp_path}/slurm-%j.out",
                 args=["--no-save-model"])
    state = wait_for(nodes_env, job, timeout=600)
    assert state == "COMPLETED", (tmp_path / f"slurm-{job}.out").read_text()[-3000:]
    (folder,) = run_folders(results)
    prov = read_json(folder / "provenance.json")
    assert prov["world_size"] == 4 and sorted(r["rank"] for r in prov["ranks"]) == [0, 1, 2, 3]
    hosts = by_host(prov)
    assert sorted(hosts) == ["n1", "n2"]
    for host, ranks in hosts.items():
        assert sorted(r["local_rank"] for r in ranks) == [0, 1] and {r["local_size"] for r in ranks} == {2}
        assert all(r["cpus"] == NODE_CORES[host] and r["intra_op_threads"] == 1 for r in ranks), ranks
        assert len({r["rank"] // 2 for r in ranks}) == 1  # SLURM's block layout: ranks 0-1 on n1, 2-3 on n2
    assert len(pd.read_csv(folder / "predictions.csv")) == 360


def test_two_ranks_on_two_nodes_take_the_same_step_as_one_rank_on_the_whole_batch(nodes_env, tmp_path):
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    p1 = run_to_end([sys.executable, "tests/one_step.py", str(one)], env=mpi_env(), cwd=ROOT, timeout=600)
    assert p1.returncode == 0, p1.stderr[-3000:]
    state, log = run_on_nodes(nodes_env, tmp_path, "step",
                              f"srun --mpi=pmix {shlex.quote(sys.executable)} tests/one_step.py {shlex.quote(str(two))}"
                              " && srun hostname")
    assert state == "COMPLETED", log[-3000:]
    assert sorted(log.split()[-2:]) == ["n1", "n2"]  # the two ranks ran on different nodes
    a, b = np.load(one), np.load(two)
    n = len(a.files) // 2
    assert max(np.abs(a[f"arr_{i}"] - a[f"arr_{i + n}"]).max() for i in range(n)) > 1e-3  # the step moved them
    for i in range(n):
        np.testing.assert_allclose(a[f"arr_{i}"], b[f"arr_{i}"], rtol=1e-4, atol=1e-5)


ALLREDUCE = ("import os, sys; from hpccnn.training import dist; "
             "os.environ.update(dist.mpi_settings()[0]) if sys.argv[1] == 'hpccnn' else None; "
             "import numpy as np; from mpi4py import MPI; x = np.ones(1 << 20, np.float32); "
             "MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, x); print('SUM', x[0], flush=True)")


@pytest.mark.exclusive  # 15 s for Python, MPI and an allreduce on both nodes
@pytest.mark.parametrize("settings", ["none", "hpccnn"])
def test_the_second_interface_hangs_mpi_unless_the_interface_is_chosen(nodes_env, settings):
    """eth1 has an address in the same subnet on both nodes but is connected to nothing, as a
    second network of real nodes can be. Left to choose, Open MPI tries it and hangs in the first
    collective; with the interface hpccnn chooses (what every hpccnn rank sets) it finishes at once."""
    proc = run_to_end(["srun", "-N2", "-n2", "--mpi=pmix", "--time=2", "timeout", "15", sys.executable, "-c",
                       ALLREDUCE, settings], env=mpi_env(nodes_env), cwd=ROOT, timeout=120)
    if settings == "hpccnn":
        assert proc.returncode == 0 and proc.stdout.split().count("2.0") == 2, proc.stdout + proc.stderr[-2000:]
    else:
        assert proc.returncode != 0 and "SUM" not in proc.stdout, proc.stdout  # still waiting after 15 s
        assert "10.78.0.1" in proc.stderr  # Open MPI tried eth1's addresses


TIMED_ALLREDUCE = ("import os, time; from hpccnn.training import dist; os.environ.update(dist.mpi_settings()[0]); "
                   "import numpy as np; from mpi4py import MPI; x = np.ones(1 << 20, np.float32); "
                   "MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, x); t = time.perf_counter(); "
                   "MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, x); print('SECONDS', time.perf_counter() - t)")


@pytest.mark.exclusive  # an unshaped allreduce a third of the shaped one
def test_link_gbit_shapes_what_crosses_between_the_nodes(nodes_env):
    """link --gbit 0.1: a 4 MB allreduce between the 2 nodes must send at least 4 MB over some node's
    link (each node sends 2 x (N-1)/N of it), which at 100 Mbit/s takes at least 0.32 s; unshaped it
    takes a few tens of ms here. A shaper can only slow it, so the bound can't fail from noise."""
    def allreduce_seconds():
        proc = run_to_end(["srun", "-N2", "-n2", "--mpi=pmix", "--time=2", sys.executable, "-c", TIMED_ALLREDUCE],
                          env=mpi_env(nodes_env), cwd=ROOT, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return max(float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("SECONDS"))

    shaped = subprocess.run([str(SCRIPT), "link", "--gbit", "0.1"], capture_output=True, text=True, env=nodes_env)
    assert shaped.returncode == 0, shaped.stderr
    try:
        slow = allreduce_seconds()
    finally:
        subprocess.run([str(SCRIPT), "link", "--unshaped"], capture_output=True, env=nodes_env)
    fast = allreduce_seconds()
    assert slow >= 0.8 * (4 * 2 ** 20 * 8) / 0.1e9, slow
    assert fast < slow / 3, (fast, slow)


def test_mpirun_inside_a_two_node_allocation_uses_both_nodes(nodes_env, tmp_path):
    results = tmp_path / "results"
    state, log = run_on_nodes(nodes_env, tmp_path, "mpirun",
                              "mpirun -np 2 --bind-to none " + train("--experiment", "digits_cnn", "--epochs", "1",
                                                                      "--no-save-model", "--results-dir", results))
    assert state == "COMPLETED", log[-3000:]
    (folder,) = run_folders(results)
    prov = read_json(folder / "provenance.json")
    assert prov["launcher"] == "mpirun" and prov["hosts"] == ["n1", "n2"]
    for rank in prov["ranks"]:
        assert_interface_chosen(rank)


def test_horovodrun_inside_a_two_node_allocation_is_refused_in_one_line(nodes_env, tmp_path):
    """horovodrun reads no SLURM allocation (horovod#2097): in a job of 2 nodes x 2 tasks, -np 2 puts
    both ranks on the first node and leaves the second idle. (With fewer slots on the first node than
    ranks, Open MPI's mpirun, which horovodrun runs, refuses by itself before hpccnn starts.)"""
    results = tmp_path / "results"
    state, log = run_on_nodes(nodes_env, tmp_path, "horovodrun",
                              f"{shlex.quote(str(Path(sys.executable).parent / 'horovodrun'))} -np 2 "
                              + train("--experiment", "digits_cnn", "--epochs", "1", "--results-dir", results),
                              ranks_per_node=2)
    assert state == "FAILED", log[-3000:]
    errors = [line for line in log.splitlines() if "hpccnn: error:" in line]  # horovodrun prefixes [1,0]<stderr>:
    assert len(errors) == 1, log[-3000:]
    assert "horovodrun ignores SLURM's allocation" in errors[0] and "srun --mpi=pmix" in errors[0]
    assert not results.exists()


def test_a_grid_runs_every_point_on_two_nodes(nodes_env, tmp_path):
    results = tmp_path / "results"
    args = [*GRID_ARGS, "--nodes", "2", "--ntasks-per-node", "1", "--results-dir", results]
    dry = run_module("hpccnn.submit", *args, "--dry-run", env=nodes_env, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "each point: 2 node(s) x 1 rank(s)" in dry.stdout and "#SBATCH --nodes=2" in dry.stdout
    proc = run_module("hpccnn.submit", *args, "--wait", env=nodes_env, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (grid,) = list(results.glob("*/cifar_hparams-*"))
    rows = pd.read_csv(grid / "grid.csv")
    assert len(rows) == 12 and set(rows["status"]) == {"completed"} and set(rows["world_size"]) == {2}
    for folder in rows["run_folder"]:
        prov = read_json(Path(folder) / "provenance.json")
        assert prov["hosts"] == ["n1", "n2"], folder
        for rank in prov["ranks"]:  # submitit's ranks set the same MPI settings as any other
            assert_interface_chosen(rank)


def test_requeued_twice_on_two_nodes_streaming_a_pack_ends_where_an_uninterrupted_run_does(nodes_env, tmp_path):
    """The digits staged as a pack and streamed (--input stream), each node's rank reading its own shards; requeued
    mid-epoch twice, the run ends with the weights of one left alone (each epoch's order is the seed's and the
    epoch's: hpccnn.training.stream)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(tmp_path / "digits.npz", x_train=(digits.images * 15).astype(np.uint8), y_train=digits.target)
    proc = run_module("hpccnn.stage", tmp_path / "digits.npz", "--name", "digpack", "--data-dir", tmp_path / "cache",
                      timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    prov = requeued_twice_ends_where_an_uninterrupted_run_does(
        nodes_env, tmp_path, "--nodes=2", "--ntasks-per-node=1",
        data=["--dataset", "digpack", "--data-dir", str(tmp_path / "cache"), "--input", "stream"])
    assert prov["hosts"] == ["n1", "n2"] and all(r["hosts"] == ["n1", "n2"] for r in prov["resumes"])
    assert prov["input"]["read"] == "stream"
    reads = {rank["host"]: {f for f in rank["memory"]["data"]["reads"] if f.startswith("train-")}
             for rank in prov["ranks"]}
    assert len(reads["n1"]) == len(reads["n2"]) == 4 and not reads["n1"] & reads["n2"], reads


def train_until_epoch_two(env, tmp_path, results, **variables):
    """A 2-node sbatch job of 30 slow epochs, not requeued; (job id, run folder) once epoch 2 is saved."""
    job = sbatch(dict(env, EXPERIMENT="digits_cnn", EPOCHS="30", RESULTS_DIR=str(results), **variables),
                 "slurm/alexnet_cpu.sbatch", "--export=ALL", "--nodes=2", "--ntasks-per-node=1",
                 "--cpus-per-task=1", "--mem=3G", "--time=20", "--no-requeue", f"--output={tmp_path}/slurm-%j.out",
                 args=SLOW[2:])
    folder = wait_until(lambda: (run_folders(results) or [None])[0], 300, "the run folder")
    wait_until(lambda: metrics(folder).get("last_epoch", 0) >= 2, 300, "two finished epochs")
    return job, folder


def training_processes(results: Path):
    """The ranks (python -m hpccnn.train) of this test, on any node (the namespaces share the process table).
    Not the job's srun, whose arguments name hpccnn.train and the results folder too: with a node's link
    down, srun waits to hear from that node's slurmstepd until SLURM marks the node DOWN (SlurmdTimeout)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd[1:3] == [b"-m", b"hpccnn.train"] and str(results).encode() in cmd:
            found.append(int(proc.name))
    return found


def resume_on_n1(env, folder, epochs="4"):
    proc = run_to_end(["srun", "-w", "n1", "-N1", "-n1", "--mpi=pmix", "--cpus-per-task=1", "--mem=3G",
                       "--time=10", sys.executable, "-m", "hpccnn.train", "--resume", str(folder),
                       "--epochs", epochs], env=mpi_env(env), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    done = metrics(folder)
    assert done["status"] == "completed" and done["world_size"] == 1
    assert pd.read_csv(folder / "history.csv")["epoch"].tolist() == list(range(1, int(epochs) + 1))
    assert read_json(folder / "provenance.json")["resumes"][-1]["hosts"] == ["n1"]


@pytest.mark.exclusive  # ended within 60 s
def test_a_rank_killed_on_one_node_ends_the_job_and_the_run_resumes_on_the_other(nodes_env, tmp_path):
    results = tmp_path / "results"
    job, folder = train_until_epoch_two(nodes_env, tmp_path, results)
    ranks = {}
    for pid in training_processes(results):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if b"SLURM_PROCID=1" in environ and b"SLURMD_NODENAME=n2" in environ:
            ranks[1] = pid
    os.kill(ranks[1], signal.SIGKILL)  # rank 1, on n2
    killed = time.time()
    assert wait_for(nodes_env, job, timeout=120) == "FAILED"
    took = time.time() - killed
    assert took < 60, f"the job took {took:.0f} s to end after its rank on n2 died"
    state = wait_until(lambda: metrics(folder) if metrics(folder).get("status") == "failed" else None, 60,
                       "metrics.json to say failed")
    # the guard (with SLURM's FAILED) or, first as a rule, the job script after srun returned
    assert "ended without finishing" in state["reason"], state
    assert f"job {job} FAILED" in state["reason"] or "srun exited with status" in state["reason"], state
    assert state["last_epoch"] >= 2 and read_json(folder / "checkpoint" / "latest.json")["epoch"] == state["last_epoch"]
    wait_until(lambda: not training_processes(results), 30, "no rank left")
    resume_on_n1(nodes_env, folder, epochs=str(state["last_epoch"] + 2))


@pytest.mark.exclusive  # no rank left within 60 s; the watchdog counts the steps' gaps
def test_a_node_whose_link_goes_down_ends_the_job_in_bounded_time_and_the_run_resumes(nodes_env, tmp_path):
    """n2's link taken down mid-run: no TCP reset reaches anyone, so both ranks wait in their allreduce.
    SLURM would end the rank on n1 once it marks n2 DOWN (SlurmdTimeout, 60 s on this cluster), but the
    rank on n2 can't hear of it. hpccnn's watchdog (here HPCCNN_STALL_TIMEOUT=20 s, before SLURM acts)
    ends both ranks, and rank 0 records why."""
    results = tmp_path / "results"
    job, folder = train_until_epoch_two(nodes_env, tmp_path, results, HPCCNN_STALL_TIMEOUT="20")
    env = dict(nodes_env)
    down = subprocess.run([str(SCRIPT), "link", "--node", "n2", "--down"], capture_output=True, text=True, env=env)
    assert down.returncode == 0, down.stderr
    cut = time.time()
    try:
        wait_until(lambda: not training_processes(results), 90, "no rank left waiting in a collective")
        took = time.time() - cut
        state = metrics(folder)
        assert state["status"] == "failed" and "no progress for" in state["reason"], state
        assert "--resume" in state["reason"] and state["last_epoch"] >= 2
        # SLURM ends the job once it has marked n2 DOWN (SlurmdTimeout) and heard from n1
        assert wait_for(nodes_env, job, timeout=240) in {"FAILED", "NODE_FAIL", "CANCELLED"}
    finally:
        subprocess.run([str(SCRIPT), "link", "--node", "n2", "--up"], capture_output=True, env=env)
    assert took < 60, f"{took:.0f} s from the link going down to no rank left ({state['reason']})"
    resume_on_n1(nodes_env, folder, epochs=str(state["last_epoch"] + 2))
    # n2 back in service for the tests after this one
    wait_until(lambda: "n2 idle" in subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True,
                                                    text=True, env=env).stdout, 120, "n2 back in service")
