"""The MPI settings each rank gives itself before MPI starts, whoever started the ranks."""

import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, read_json, run_folders, run_to_end
from hpccnn.training.dist import ALLREDUCE_RULES, expand_hostlist, mpi_settings, network_interface

VENV_BIN = str(Path(sys.executable).parent)


def test_slurm_host_lists_expand_as_scontrol_show_hostnames_does():
    assert expand_hostlist("n[1-3,7],gpu01") == ["n1", "n2", "n3", "n7", "gpu01"]
    assert expand_hostlist("cn[008-010]") == ["cn008", "cn009", "cn010"]
    assert expand_hostlist("n1") == ["n1"] and expand_hostlist("") == []
    # what `scontrol show hostnames` prints for it (SLURM 22.05)
    assert expand_hostlist("a[1-2,9],b[01-02]c,single") == ["a1", "a2", "a9", "b01c", "b02c", "single"]


INTERFACES = {"eth0": [ipaddress.ip_interface("10.77.0.11/24")],
              "eth1": [ipaddress.ip_interface("10.78.0.11/24")],  # the same on every node, leads nowhere
              "docker0": [ipaddress.ip_interface("172.17.0.1/16")]}
HOSTS = {"n1": "10.77.0.11", "n2": "10.77.0.12", "n3": "10.77.0.13", "far": "192.168.5.5"}


def resolve(name):
    if name not in HOSTS:
        raise OSError(f"[Errno -2] Name or service not known: {name}")  # as socket.gethostbyname does
    return HOSTS[name]


def choose(environ, route=lambda address: None):
    return network_interface(environ, INTERFACES, resolve, route)


def test_the_interface_is_the_one_whose_subnet_holds_the_other_nodes():
    assert choose({"SLURM_JOB_NODELIST": "n[1-3]", "SLURMD_NODENAME": "n1"})[0] == "eth0"


def test_routed_nodes_get_the_interface_the_kernel_routes_through():
    found, how = choose({"SLURM_JOB_NODELIST": "n1,far", "SLURMD_NODENAME": "n1"},
                        route=lambda address: "eth0" if address == "192.168.5.5" else None)
    assert found == "eth0" and "route" in how


def test_the_documented_setting_wins_and_one_node_needs_no_interface():
    assert choose({"HPCCNN_NETWORK_INTERFACE": "ib0", "SLURM_JOB_NODELIST": "n[1-2]"}) == \
        ("ib0", "HPCCNN_NETWORK_INTERFACE")
    assert choose({"SLURM_JOB_NODELIST": "n1", "SLURMD_NODENAME": "n1"})[0] is None
    found, how = choose({"SLURM_JOB_NODELIST": "n1,nowhere", "SLURMD_NODENAME": "n1"})
    assert found is None and "HPCCNN_NETWORK_INTERFACE" in how  # can't tell: says which setting to use


def test_a_users_own_mpi_variables_win():
    environ = {"HPCCNN_NETWORK_INTERFACE": "eth0"}
    wanted, _ = mpi_settings(environ)
    assert wanted["OMPI_MCA_btl_tcp_if_include"] == "eth0" and wanted["OMPI_MCA_mpi_yield_when_idle"] == "1"
    wanted, how = mpi_settings({**environ, "OMPI_MCA_btl_tcp_if_exclude": "eth1", "OMPI_MCA_mpi_yield_when_idle": "0"})
    assert "OMPI_MCA_btl_tcp_if_include" not in wanted and "OMPI_MCA_mpi_yield_when_idle" not in wanted
    assert "job's own" in how


def test_the_allreduce_settings_are_set_for_jobs_across_nodes_unless_the_user_chose_them():
    mpirun_on_2_nodes = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    for across in (mpirun_on_2_nodes, {"SLURM_STEP_NUM_NODES": "2"}):
        wanted, _ = mpi_settings(across)
        assert wanted["OMPI_MCA_coll_tuned_use_dynamic_rules"] == "1"
        assert wanted["OMPI_MCA_coll_tuned_dynamic_rules_filename"] == str(ALLREDUCE_RULES)
        assert wanted["OMPI_MCA_btl_tcp_eager_limit"] == str(64 * 2 ** 20)
        # a larger message in 1 MB fragments sent as messages: no 64 MB first fragment, no put
        assert wanted["OMPI_MCA_btl_tcp_rndv_eager_limit"] == wanted["OMPI_MCA_btl_tcp_max_send_size"] == str(2 ** 20)
        assert "put" not in wanted["OMPI_MCA_btl_tcp_flags"].split(",") and "send" in wanted["OMPI_MCA_btl_tcp_flags"]
    assert ALLREDUCE_RULES.is_file()
    # one node (horovodrun on a workstation, srun on one node, a process alone): Open MPI's own choice
    for one in ({}, {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, {"SLURM_STEP_NUM_NODES": "1"}):
        wanted, _ = mpi_settings(one)
        assert not any(k.startswith(("OMPI_MCA_coll_tuned_", "OMPI_MCA_btl_tcp_eager")) for k in wanted), (one, wanted)
    for own in ({"OMPI_MCA_coll_tuned_use_dynamic_rules": "0"}, {"OMPI_MCA_coll_tuned_allreduce_algorithm": "4"}):
        wanted, _ = mpi_settings({**mpirun_on_2_nodes, **own})
        assert not any(k.startswith("OMPI_MCA_coll_tuned_") for k in wanted), wanted
        assert "OMPI_MCA_btl_tcp_eager_limit" in wanted  # the other setting stays
    # the user's own variable of a group leaves that group to the user, and only that group
    eager = ("OMPI_MCA_btl_tcp_eager_limit", "OMPI_MCA_btl_tcp_rndv_eager_limit")
    fragments = ("OMPI_MCA_btl_tcp_flags", "OMPI_MCA_btl_tcp_max_send_size")
    for group, other in ((eager, fragments), (fragments, eager)):
        for own in group:
            wanted, _ = mpi_settings({**mpirun_on_2_nodes, own: "65536"})
            assert not any(k in wanted for k in group), (own, wanted)
            assert all(k in wanted for k in other), (own, wanted)
            assert "OMPI_MCA_coll_tuned_use_dynamic_rules" in wanted  # the rules stay
    # Open MPI's put back, as the README tells a fast network's user: the 64 MB eager limit stays
    wanted, _ = mpi_settings({**mpirun_on_2_nodes, "OMPI_MCA_btl_tcp_flags": "send,put,inplace,need-ack,need-csum"})
    assert wanted["OMPI_MCA_btl_tcp_eager_limit"] == str(64 * 2 ** 20) and "OMPI_MCA_btl_tcp_flags" not in wanted


def read_rules(path):
    """{collective id: {communicator size: [(message bytes, algorithm, segment bytes)]}}, read as Open MPI 4.1's
    coll/tuned reader does: numbers in order, a '#' comment to the end of its line."""
    numbers = iter(int(n) for line in path.read_text().splitlines() for n in line.split("#")[0].split())
    rules = {}
    for _ in range(next(numbers)):
        sizes = rules.setdefault(next(numbers), {})
        for _ in range(next(numbers)):
            size = next(numbers)
            sizes[size] = [(lambda m, alg, fan, seg: (m, alg, seg))(*(next(numbers) for _ in range(4)))
                           for _ in range(next(numbers))]
    assert next(numbers, None) is None, "numbers left over: the counts in the file are wrong"
    return rules


def chosen(rules, ranks, nbytes, segment=False):
    """The algorithm Open MPI takes (or its segment size): the rule of the largest listed size at or
    below each."""
    size = max(s for s in rules if s <= ranks)
    return max(rule for rule in rules[size] if rule[0] <= nbytes)[2 if segment else 1]


def test_the_allreduce_rules_pick_what_measured_fastest():
    """Two ranks exchange a small buffer whole (recursive doubling, 3) and send a fused gradient's
    megabytes in the segmented ring (5) of 1 MB segments, which overlaps the sum with the sending,
    up to Horovod's fusion buffer, and the ring (4) beyond; more ranks use the ring (4) for a gradient's megabytes and leave small messages to Open MPI (0)."""
    allreduce = read_rules(ALLREDUCE_RULES)[2]
    assert all(chosen(allreduce, 2, n) == 3 for n in (8, 2 ** 20, 5 * 10 ** 6))
    for n in (8 * 2 ** 20, 19 * 10 ** 6, 64 * 2 ** 20):  # Horovod's fused messages of the AlexNets
        assert (chosen(allreduce, 2, n), chosen(allreduce, 2, n, segment=True)) == (5, 2 ** 20), n
    # a tensor above the 64 MB fusion buffer goes alone, out of place (AlexNet-227's 151 MB dense layer):
    # the segmented ring took 1.58x the ring bound there, the ring 1.07x
    assert all(chosen(allreduce, 2, n) == 4 for n in (64 * 2 ** 20 + 1, 151 * 2 ** 20, 2 ** 31))
    for ranks in (3, 4, 7, 8, 64, 1024):
        assert chosen(allreduce, ranks, 8) == 0 and chosen(allreduce, ranks, 19 * 10 ** 6) == 4, ranks
    assert all(comment.count("#") <= 1 and not any(c.isdigit() for c in comment.partition("#")[2])
               for comment in ALLREDUCE_RULES.read_text().splitlines())


def plain_shell(**extra):
    """A shell with only PATH (the venv first, as after `source .venv/bin/activate`), HOME and
    Open MPI's two run-as-root variables: nothing hpccnn's own launchers would add."""
    env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), **extra}
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


@pytest.mark.parametrize("line", [
    "horovodrun -np 2 -H localhost:2 python -m hpccnn.train --experiment digits_cnn",
    "mpirun -np 2 --bind-to none python -m hpccnn.train --experiment digits_cnn",
])
@pytest.mark.mpi
def test_the_readmes_launch_lines_typed_in_a_plain_shell_get_hpccnns_mpi_settings(tmp_path, line):
    """The README's Run lines, as typed (results land in ./results of the working folder): each rank
    reads Open MPI's parameters back through MPI_T, so provenance shows what took effect."""
    assert line in (ROOT / "README.md").read_text()
    proc = run_to_end(["env", "-i", *(f"{k}={v}" for k, v in plain_shell().items()), "sh", "-c", line],
                      cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (folder,) = run_folders(tmp_path / "results")
    prov = read_json(folder / "provenance.json")
    assert prov["world_size"] == 2 and prov["launcher"] == line.split()[0]
    for rank in prov["ranks"]:
        assert rank["mpi"]["mpi_yield_when_idle"] == 1, rank  # waiting ranks give their core to TensorFlow
        # one node: Open MPI's own allreduce choice, the faster one in memory (README, Scaling)
        assert rank["mpi"]["coll_tuned_use_dynamic_rules"] == 0, rank
        # glibc keeps what a step frees for the next one (hpccnn.training.dist.keep_freed_memory)
        assert rank["malloc"].startswith("kept for reuse"), rank


@pytest.mark.mpi
def test_mpi_t_reads_what_took_effect_so_a_users_own_value_shows(tmp_path):
    """The read-back is Open MPI's own: a value the user exported (0) is what provenance would show."""
    script = "from hpccnn.training import dist; w = dist.init(); import json; print('MPI ' + json.dumps(dist.host_and_rank(w)['mpi']))"
    proc = run_to_end(["env", "-i", *(f"{k}={v}" for k, v in plain_shell(OMPI_MCA_mpi_yield_when_idle="0").items()),
                      "mpirun", "-np", "2", "--bind-to", "none", "python", "-c", script],
                      cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("MPI ")]
    assert len(found) == 2 and all(f["mpi_yield_when_idle"] == 0 for f in found), proc.stdout


MALLINFO = """
import ctypes, json, os
from hpccnn.training import dist
how = dist.keep_freed_memory(os.environ)
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
before = libc.mallinfo2().hblks  # blocks glibc took from the kernel with mmap, unmapped again when freed
block = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblks - before
libc.free(block)
print(json.dumps({"how": how, "mapped": mapped, "heap_after_free_mb": libc.mallinfo2().arena / 2 ** 20}))
"""


def malloc_after(**env):
    """What a process does with a freed 64 MB block once hpccnn.training.dist.keep_freed_memory has run in it."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "HPCCNN_MALLOC", "GLIBC_TUNABLES"))}
    proc = subprocess.run([sys.executable, "-c", MALLINFO], capture_output=True, text=True, cwd=ROOT,
                          env={**environ, **env}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_ranks_keep_the_memory_a_step_frees_unless_told_otherwise():
    """A large block comes from the heap and stays there when freed, so the next step's gradients
    reuse pages the process has; HPCCNN_MALLOC=glibc, or a user's own glibc variable, leaves glibc's way
    (the block mmapped, and unmapped when freed)."""
    kept = malloc_after()
    assert kept["how"].startswith("kept for reuse") and kept["mapped"] == 0 and kept["heap_after_free_mb"] >= 64, kept
    for env in ({"HPCCNN_MALLOC": "glibc"}, {"MALLOC_TRIM_THRESHOLD_": "131072"},
                {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"}):
        own = malloc_after(**env)
        assert own["mapped"] == 1 and own["heap_after_free_mb"] < 64 and not own["how"].startswith("kept"), (env, own)


@pytest.mark.parametrize("value", ["yes", "", "jemalloc"])
def test_a_bad_malloc_choice_is_refused_in_one_line(tmp_path, value, monkeypatch):
    from conftest import train_refusal

    monkeypatch.setenv("HPCCNN_MALLOC", value)
    assert f"HPCCNN_MALLOC={value!r} must be keep" in train_refusal("--epochs", "1", "--results-dir", tmp_path / "results")
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_the_stall_watchdog_ends_a_rank_that_makes_no_progress(tmp_path):
    script = ("import time; from hpccnn.training.callbacks import Watchdog\n"
              "Watchdog(1.5, on_stall=lambda m: print('STALL ' + m, flush=True), poll=0.2).start()\n"
              "time.sleep(30)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert re.match(r"STALL no progress for [2-9] s", proc.stdout) and "ending this rank" in proc.stderr, proc.stdout


@pytest.mark.parametrize("name", ["HPCCNN_STALL_TIMEOUT", "HPCCNN_PROGRESS_SECONDS"])
@pytest.mark.parametrize("value", ["soon", "-5", "inf", "nan"])
def test_a_bad_stall_timeout_or_progress_interval_is_refused_in_one_line(tmp_path, name, value, monkeypatch):
    """In this process (hpccnn.train as a command: tests/test_bad_input.py)."""
    from conftest import train_refusal

    monkeypatch.setenv(name, value)
    assert f"{name}={value!r} must be a number of seconds" in train_refusal(
        "--epochs", "1", "--results-dir", tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_the_watchdog_counts_neither_a_phases_first_batch_nor_the_work_between_epochs():
    from hpccnn.training.callbacks import Watchdog

    dog = Watchdog(600)
    dog.on_train_begin()
    dog.last -= 90  # the first batch took 90 s to trace and compile
    dog.on_train_batch_end(0)
    assert dog.longest == 0 and dog.allowed() == 600
    dog.last -= 2  # then a step of 2 s
    dog.on_train_batch_end(1)
    assert 2 <= dog.longest < 3 and dog.allowed() == 600
    dog.on_epoch_end(0)
    dog.last -= 30  # the checkpoint and results between epochs took 30 s: not a step's gap
    dog.on_epoch_begin(1)
    dog.on_train_batch_end(0)
    assert 2 <= dog.longest < 3 and dog.allowed() == 600
    dog.last -= 70
    dog.on_train_batch_end(1)
    assert dog.allowed() >= 700  # ten times the longest gap seen


def test_after_srun_fails_the_job_script_marks_a_run_still_running_failed(tmp_path):
    """slurm/hpccnn_job.sh's fallback for clusters whose proctrack kills the guard with the step."""
    runs = [tmp_path / "2026-11-25" / f"digits_cnn-120000-job{job}" for job in ("77", "78")]
    for folder in runs:
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"status": "running", "last_epoch": 3}))
    proc = subprocess.run([sys.executable, "-m", "hpccnn.guard", "--job-ended", "137", str(tmp_path)],
                          env={**os.environ, "SLURM_JOB_ID": "77", "SLURM_CONF": "/nonexistent"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    mine, other = (read_json(f / "metrics.json") for f in runs)
    assert mine["status"] == "failed" and "srun exited with status 137" in mine["reason"] and mine["last_epoch"] == 3
    assert other["status"] == "running"  # another job's run is not this job's to judge


def test_the_guard_leaves_a_run_that_a_newer_attempt_resumed(tmp_path):
    from hpccnn.launching.guard import mark_failed

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"status": "running", "resumes": 2}))
    assert not mark_failed(path, "gone", attempt=1) and read_json(path)["status"] == "running"
    assert mark_failed(path, "gone", attempt=2) and read_json(path)["status"] == "failed"
