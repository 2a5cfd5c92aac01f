"""Shared fixtures: small files in each real format, written by the tests themselves."""

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The tiers of the suite (markers registered in pyproject.toml; `make test-fast` leaves all three out).
# A test that uses a SLURM cluster fixture is marked slurm here (FIXTURE_MARKS), so that none is forgotten;
# the others are marked by hand, and the guards below make a forgotten marker visible.
FIXTURE_MARKS = {"slurm_env": "slurm", "nodes_env": "slurm",  # fixtures whose every user has the marker
                 "digits_run": "slow", "digits_pair": "slow"}  # trainings shared by a module's tests
LAUNCHERS = {"mpi": ("mpirun", "mpiexec", "orterun"), "slurm": ("sbatch", "srun", "salloc")}
SLOW_SECONDS = 10  # a test over this (on the 2-core machine) is marked slow


# `make test` runs the suite on 2 workers (pytest-xdist, --dist loadgroup): while one test waits (a
# process importing TensorFlow on one core, SLURM scheduling, a timeout running out), the other works.
# Tests that share something one worker owns run on the same worker (xdist_group): the namespace
# clusters (one bridge for the machine), a session's grid, a module's training.
NAMESPACE_FIXTURES = {"nodes_env"}  # and tests marked xdist_group("namespace") by hand
# Tests that need the machine's cores to themselves (marked exclusive: a bound on time, a measurement)
# run while the other worker waits: a readers-writer lock across the workers, held around each test's
# setup, call and teardown.
LOCKS = Path(os.environ.get("HPCCNN_TEST_LOCKS", "/tmp/hpccnn-test-locks"))


def exclusive(item) -> bool:
    return item.get_closest_marker("exclusive") is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Shared for a test, exclusive for an exclusive one. A gate before the shared lock lets an exclusive
    test that waits keep the other worker from starting its next test (a writer is not starved)."""
    import fcntl

    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: nothing runs beside
        yield
        return
    LOCKS.mkdir(parents=True, exist_ok=True)
    with open(LOCKS / "gate", "a") as gate, open(LOCKS / "cores", "a") as cores:
        if exclusive(item):
            fcntl.flock(gate, fcntl.LOCK_EX)
            fcntl.flock(cores, fcntl.LOCK_EX)
        else:
            fcntl.flock(gate, fcntl.LOCK_SH)
            fcntl.flock(cores, fcntl.LOCK_SH)
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(cores, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture in FIXTURE_MARKS.keys() & set(item.fixturenames):  # with the fixtures' own fixtures
            item.add_marker(FIXTURE_MARKS[fixture])
    groups = {}
    for item in items:
        shared = [name for name, defs in item._fixtureinfo.name2fixturedefs.items()  # the suite's own (baseid)
                  if defs and defs[-1].baseid and defs[-1].scope in ("module", "session") and name != "slurm_env"]
        if item.get_closest_marker("xdist_group") or NAMESPACE_FIXTURES & set(item.fixturenames):
            groups[item] = "namespace"
        elif "digits_grid" in shared:
            groups[item] = "digits_grid"
        elif shared:
            groups[item] = item.module.__name__
    grid_modules = {item.module.__name__ for item, group in groups.items() if group == "digits_grid"}
    for item, group in groups.items():
        group = "digits_grid" if group in grid_modules else group  # the module's other shared fixtures too
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))
        groups[item] = group
    # the longest groups first, so that neither worker is left with one at the end
    first = {"namespace": 0, "digits_grid": 1}
    items.sort(key=lambda item: first.get(groups.get(item), 2))


@pytest.fixture(autouse=True)
def launchers_need_their_marker(request, tmp_path_factory, monkeypatch):
    """A test not marked mpi that runs mpirun (horovodrun runs it too), or not marked slurm that runs
    sbatch or srun, fails: `make test-fast` would otherwise start MPI or SLURM. Stand-ins of those
    commands come first on PATH, refuse to run, and note that they were called. (A command given its
    absolute path or a PATH of its own passes by them: those tests are marked by reading them.)"""
    marks = {mark.name for mark in request.node.iter_markers()}
    refused = [(kind, tool) for kind, tools in LAUNCHERS.items() if kind not in marks for tool in tools]
    if not refused:
        yield
        return
    shims = tmp_path_factory.mktemp("unmarked-launchers")
    called = shims / "called"
    for kind, tool in refused:
        (shims / tool).write_text(f"#!/bin/sh\necho \"{tool} (needs the {kind} marker)\" >> '{called}'\n"
                                  f"echo 'hpccnn tests: {tool} in a test not marked {kind}' >&2\nexit 97\n")
        (shims / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ.get('PATH', '')}")
    yield
    if called.exists():
        pytest.fail(f"{request.node.nodeid} ran {', '.join(sorted(set(called.read_text().split(chr(10))) - {''}))}")


def pytest_terminal_summary(terminalreporter):
    """Names the tests that took over SLOW_SECONDS without the slow marker (timings vary with the
    machine's load, so this is said rather than failed)."""
    seconds, keywords = {}, {}
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("", []):
        if report.when in ("setup", "call"):  # setup: a fixture's training belongs to its first test
            seconds[report.nodeid] = seconds.get(report.nodeid, 0) + report.duration
            keywords[report.nodeid] = report.keywords
    unmarked = [(took, nodeid) for nodeid, took in seconds.items()
                if took > SLOW_SECONDS and not {"slow", "slurm", "mpi"} & set(keywords[nodeid])]
    if unmarked:
        terminalreporter.write_sep("-", f"over {SLOW_SECONDS} s without the slow marker")
        for duration, nodeid in sorted(unmarked, reverse=True):
            terminalreporter.write_line(f"{duration:6.1f} s  {nodeid}")


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


def run_to_end(cmd, *, timeout, env=None, cwd=ROOT) -> subprocess.CompletedProcess:
    """cmd to its end, its output captured as text. One still running once timeout has passed fails the test,
    ended with its whole process group first (SIGTERM, then SIGKILL 10 s later): subprocess.run's timeout kills
    the launcher alone, and a rank left waiting in a collective spun on a core for the rest of a CI run. The
    same when the test ends otherwise meanwhile (pytest-timeout's limit, Ctrl-C). Under srun the group holds
    the srun client, which ends its step on SIGTERM; the step's own --time bounds it otherwise."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = end_group(proc)
        pytest.fail(f"still running after {timeout} s (ended with its process group): {cmd}\n"
                    + output_of(subprocess.CompletedProcess(cmd, None, stdout, stderr)))
    except BaseException:
        end_group(proc)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def end_group(proc, grace=10):
    """Ends proc's process group (SIGTERM, then SIGKILL after grace seconds); what proc wrote."""
    import signal

    def signal_group(number):
        try:
            os.killpg(proc.pid, number)
        except ProcessLookupError:  # all of the group gone already
            pass

    signal_group(signal.SIGTERM)
    try:
        return proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        signal_group(signal.SIGKILL)
        return proc.communicate()


def run_module(module, *args, env=None, cwd=None, timeout=900):
    """python -m module args, as a user runs it; returns the CompletedProcess."""
    from hpccnn.launching.launch import mpi_env

    return run_to_end([sys.executable, "-m", module, *map(str, args)], env=mpi_env(env), cwd=cwd or ROOT,
                      timeout=timeout)


def output_of(proc, tail=3000) -> str:
    """A failed process's output for an assertion message: the end of stdout and stderr and, where a rank
    crashed, what it printed before Open MPI's "Process received signal" block (the cause, which the
    block's stack frames push out of any tail)."""
    text = proc.stdout[-1500:] + proc.stderr[-tail:]
    crash = proc.stderr.find("Process received signal")
    if crash >= 0 and crash < len(proc.stderr) - tail:
        text = proc.stderr[max(0, crash - 2500):crash + 600] + "\n[...]\n" + text
    return text


def refusal(main, *argv) -> str:
    """The message of the UserError that a command's entry point raises for argv, run in this process
    (its @cli wrapper, which prints the message as one line and exits 2, taken off); one line."""
    from hpccnn.common.errors import UserError

    with pytest.raises(UserError) as err:
        main.__wrapped__([str(a) for a in argv])
    assert "\n" not in str(err.value), str(err.value)
    return str(err.value)


def train_refusal(*argv) -> str:
    """The same for hpccnn.train, which refuses before it trains: its command line (train.parse), then its
    data (data.load_split, as train.run loads it once TensorFlow and Horovod have started)."""
    from hpccnn.data import datasets as data
    from hpccnn.training import train
    from hpccnn.common.errors import UserError

    with pytest.raises(UserError) as err:
        args, exp = train.parse([str(a) for a in argv])
        data.load_split(exp, args.data_dir)
    assert "\n" not in str(err.value), str(err.value)
    return str(err.value)


def run_folders(results_dir: Path):
    from hpccnn.launching.demo import run_folders as folders

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


def worker() -> int:
    """This pytest-xdist worker's number (`make test` runs the suite on several: gw0, gw1, ...); 0 alone."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) if name[2:].isdigit() else 0


@pytest.fixture(scope="session")
def slurm_env():
    """A real one-node SLURM cluster (scripts/local_slurm.sh), started for the tests and stopped after:
    one for each worker of the suite, in a folder, on ports and with job ids of its own."""
    directory, n = os.environ.get("HPCCNN_SLURM_DIR", "/tmp/hpccnn-slurm"), worker()
    if n == 0:
        yield from _cluster(directory)
    else:  # 6827 and 6837 are the namespace clusters' (nodes_env, the multi-node benchmark)
        yield from _cluster(f"{directory}-w{n}", HPCCNN_SLURMCTLD_PORT=str(6847 + 10 * n),
                            HPCCNN_SLURMD_PORT=str(6848 + 10 * n), HPCCNN_SLURM_FIRST_JOB_ID=str(100_000 * n + 1))


NODE_CORES = {"n1": [0], "n2": [1 % os.cpu_count()]}  # each namespace node's pinned core (local_slurm.sh)


@pytest.fixture(scope="module")
def nodes_env():
    """A real SLURM cluster of 2 nodes, each a network namespace (n1, n2) with its own core and a second
    interface that leads nowhere; both declare 2 CPUs, so a 2 x 2 job oversubscribes each node's core.
    Stopped after its module: the multi-node benchmark (test_bench.py) starts namespace nodes of its own."""
    yield from _cluster("/tmp/hpccnn-slurm-nodes", "--nodes", "2", "--cpus-per-node", "2",
                        HPCCNN_SLURMCTLD_PORT="6827", HPCCNN_SLURMD_TIMEOUT="60")


def sbatch(env, template, *options, args=()) -> str:
    """sbatch --parsable OPTIONS TEMPLATE ARGS from the checkout (template None: the options hold --wrap);
    the job id."""
    command = ["sbatch", "--parsable", *options, *([template] if template else []), *args]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def wait_for(env, job, timeout=900) -> str:
    """The state a job (or every task of an array) ended in, read by hpccnn.common.slurm as hpccnn.submit reads
    it; tasks that ended differently give their states joined by commas. Fails the test after timeout s."""
    from hpccnn.common.slurm import ACTIVE, job_states

    deadline = time.time() + timeout
    while time.time() < deadline:
        states = set(job_states(job, env=env).values())
        if states and not states & ACTIVE:  # REQUEUED is active too: a requeued job runs again
            return ",".join(sorted(states))
        time.sleep(2)
    pytest.fail(f"job {job} did not finish in {timeout} s")


def job_field(env, job, key):
    """One field of scontrol show job (Restarts, say); None once SLURM no longer knows the job."""
    from hpccnn.common.slurm import job_fields

    return job_fields(job, env=env).get(key)


GRID_ARGS = ["--grid", "cifar_hparams", "--dataset", "digits", "--epochs", "1",
             "--cpus-per-task", "1", "--mem-gb", "3", "--time-min", "15"]  # sized for the 2-core local node


HALVING_ARGS = ["--epochs", "3", "--halving", "3", "--min-epochs", "1"]  # rung 0: 12 points to epoch 1; rung 1: 4 to 3


@pytest.fixture(scope="session")
def digits_grid(slurm_env, tmp_path_factory):
    """seed 001's cifar_hparams grid on digits, halved (HALVING_ARGS), submitted once for real with --wait:
    (results dir, dry run, run)."""
    results = tmp_path_factory.mktemp("grid") / "results"
    args = [*GRID_ARGS, *HALVING_ARGS, "--results-dir", results]
    dry = run_module("hpccnn.submit", *args, "--dry-run", env=slurm_env, timeout=120)
    dry_results_existed = results.exists()
    proc = run_module("hpccnn.submit", *args, "--wait", env=slurm_env, timeout=1500)
    return results, dry, dry_results_existed, proc


def write_idx(folder: Path, arrays: dict, gz=True):
    """MNIST's distribution format: one IDX file per array (magic 0x0000080N, big-endian sizes, the bytes)."""
    import gzip

    from hpccnn.data.builtin import IDX_FILES

    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        a = np.ascontiguousarray(arrays[key], dtype=np.uint8)
        blob = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()
        (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(blob) if gz else blob)
