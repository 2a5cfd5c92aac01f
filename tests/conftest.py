"""Shared fixtures: small files in each real format, written by the tests themselves."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_cifar10(folder: Path, per_batch=20, test=30, seed=0):
    """CIFAR-10's python version: pickled dicts with b'data' (N x 3072 uint8, channel-major) and b'labels'."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        images[name] = batch
    meta = {b"label_names": [c.encode() for c in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                   "horse", "ship", "truck"]], b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return images


def write_mnist(path: Path, train=50, test=20, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(x_train=rng.integers(0, 256, (train, 28, 28), dtype=np.uint8), y_train=rng.integers(0, 10, train).astype(np.uint8),
                  x_test=rng.integers(0, 256, (test, 28, 28), dtype=np.uint8), y_test=rng.integers(0, 10, test).astype(np.uint8))
    np.savez_compressed(path, **arrays)
    return arrays


def write_galaxy10(path: Path, n=60, seed=0):
    import h5py

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n, 69, 69, 3), dtype=np.uint8)
    ans = rng.integers(0, 10, n).astype(np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images)
        f.create_dataset("ans", data=ans)
    return images, ans


@pytest.fixture
def data_dir(tmp_path):
    """A staged cache holding small CIFAR-10, MNIST and Galaxy10 files in their real formats."""
    d = tmp_path / "data"
    write_cifar10(d / "cifar10" / "cifar-10-batches-py")
    write_mnist(d / "mnist" / "mnist.npz")
    write_galaxy10(d / "galaxy10" / "Galaxy10.h5")
    return d


def run_module(module, *args, env=None, cwd=None, timeout=900):
    """python -m module args, as a user runs it; returns the CompletedProcess."""
    from hpccnn.launch import mpi_env

    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=mpi_env(env), cwd=cwd or ROOT, timeout=timeout)


def run_folders(results_dir: Path):
    from hpccnn.demo import run_folders as folders

    return sorted(folders(results_dir))


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def running(pid) -> bool:
    """Whether a process runs (a zombie that nobody reaps has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _cluster(directory: str, *start_args, **env):
    """Starts scripts/local_slurm.sh's cluster in directory (unless it runs already); yields its environment."""
    import shutil

    if shutil.which("slurmctld") is None or os.geteuid() != 0:
        pytest.skip("this machine has no SLURM daemons or is not root (scripts/install_system.sh installs them)")
    env = dict(os.environ, HPCCNN_SLURM_DIR=directory, **env)
    pid = Path(directory) / "slurmctld.pid"
    was_running = pid.exists() and running(pid.read_text().strip())
    script = ROOT / "scripts" / "local_slurm.sh"
    proc = subprocess.run([str(script), "start", *start_args], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    daemons = {f.name: f.read_text().strip() for f in Path(directory).glob("*.pid")}
    yield dict(env, SLURM_CONF=f"{directory}/slurm.conf")
    if not was_running:
        proc = subprocess.run([str(script), "stop"], capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # stop removed what start made: its daemons, namespaces, links and host names
        for name, pid in daemons.items():
            assert not running(pid), f"{name}'s process {pid} still runs after stop"
        if "--nodes" in start_args:
            assert_namespace_nodes_gone(f"hpccnn-local-slurm {directory}")


def assert_namespace_nodes_gone(hosts_tag: str):
    """No namespace node of scripts/local_slurm.sh is left: namespaces, bridge, links, /etc/hosts lines
    (those tagged hosts_tag)."""
    left = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "hpccnnbr0" not in left and " hpn1" not in left, left
    assert not list(Path("/var/run/netns").glob("hpccnn-n*"))
    assert hosts_tag not in Path("/etc/hosts").read_text()


@pytest.fixture(scope="session")
def slurm_env():
    """A real one-node SLURM cluster (scripts/local_slurm.sh), started for the tests and stopped after."""
    yield from _cluster(os.environ.get("HPCCNN_SLURM_DIR", "/tmp/hpccnn-slurm"))


NODE_CORES = {"n1": [0], "n2": [1 % os.cpu_count()]}  # each namespace node's pinned core (local_slurm.sh)


@pytest.fixture(scope="module")
def nodes_env():
    """A real SLURM cluster of 2 nodes, each a network namespace (n1, n2) with its own core and a second
    interface that leads nowhere; both declare 2 CPUs, so a 2 x 2 job oversubscribes each node's core.
    Stopped after its module: the multi-node benchmark (test_bench.py) starts namespace nodes of its own."""
    yield from _cluster("/tmp/hpccnn-slurm-nodes", "--nodes", "2", "--cpus-per-node", "2",
                        HPCCNN_SLURMCTLD_PORT="6827", HPCCNN_SLURMD_TIMEOUT="60")


GRID_ARGS = ["--grid", "cifar_hparams", "--dataset", "digits", "--epochs", "1",
             "--cpus-per-task", "1", "--mem-gb", "3", "--time-min", "15"]  # sized for the 2-core local node


@pytest.fixture(scope="session")
def digits_grid(slurm_env, tmp_path_factory):
    """seed 001's cifar_hparams grid on digits, 1 epoch, submitted once for real: (results dir, dry run, run)."""
    results = tmp_path_factory.mktemp("grid") / "results"
    args = [*GRID_ARGS, "--results-dir", results]
    dry = run_module("hpccnn.submit", *args, "--dry-run", env=slurm_env, timeout=120)
    dry_results_existed = results.exists()
    proc = run_module("hpccnn.submit", *args, "--wait", env=slurm_env, timeout=1500)
    return results, dry, dry_results_existed, proc


def write_idx(folder: Path, arrays: dict, gz=True):
    """MNIST's distribution format: one IDX file per array (magic 0x0000080N, big-endian sizes, the bytes)."""
    import gzip

    from hpccnn.data import IDX_FILES

    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        a = np.ascontiguousarray(arrays[key], dtype=np.uint8)
        blob = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()
        (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(blob) if gz else blob)
