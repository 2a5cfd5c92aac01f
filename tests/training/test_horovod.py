"""Real Horovod over Open MPI with 2 ranks: the build, the maths, and the results."""

import os
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, read_json, run_folders, run_module, run_to_end
from hpccnn.launching.launch import horovodrun_command, horovodrun_prefix, mpi_env, mpirun_command


def run(cmd, timeout=900):
    return run_to_end(cmd, env=mpi_env(), cwd=ROOT, timeout=timeout)


@pytest.mark.slow
def test_horovod_is_built_with_tensorflow_and_mpi():
    proc = run([horovodrun_prefix(1)[0], "--check-build"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any("[X] TensorFlow" in l for l in lines) and any("[X] MPI" in l for l in lines), proc.stdout


def test_build_problems_are_named_with_the_fix():
    # A Horovod built without TensorFlow or MPI cannot exist beside the working one in
    # this environment, so the decision is tested on the facts the real check reads.
    from hpccnn.training.dist import horovod_build_problem

    assert horovod_build_problem(True, True, True) is None
    assert horovod_build_problem(True, False, False) is None  # Gloo is enough without mpirun/srun
    assert "without TensorFlow support" in horovod_build_problem(False, True, False)
    message = horovod_build_problem(True, False, True)
    assert "without MPI support" in message and "HOROVOD_WITH_MPI=1" in message


@pytest.mark.mpi
def test_two_ranks_on_half_batches_take_the_same_step_as_one_rank_on_the_whole_batch(tmp_path):
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    p1 = run([sys.executable, "tests/one_step.py", str(one)])
    assert p1.returncode == 0, p1.stderr[-3000:]
    p2 = run([*horovodrun_prefix(2), sys.executable, "tests/one_step.py", str(two)])
    assert p2.returncode == 0, p2.stderr[-3000:]
    a, b = np.load(one), np.load(two)
    n = len(a.files) // 2
    after_one, before_one = [a[f"arr_{i}"] for i in range(n)], [a[f"arr_{i + n}"] for i in range(n)]
    after_two = [b[f"arr_{i}"] for i in range(n)]
    # the step moved the weights, and both runs moved them to the same place
    assert max(np.abs(x - y).max() for x, y in zip(after_one, before_one)) > 1e-3
    for x, y in zip(after_one, after_two):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.mpi
def test_hpccnns_average_of_two_ranks_gradients_is_horovods_to_the_bit(tmp_path):
    """hpccnn divides each rank's gradients in the backward pass and has Horovod sum them, a pass over
    the gradient less than Horovod's average (a sum, then a division): for 2 ranks that is exact, so
    the step must land on the very same weights as Horovod's own DistributedOptimizer."""
    ours, theirs = tmp_path / "ours.npz", tmp_path / "theirs.npz"
    p1 = run([*horovodrun_prefix(2), sys.executable, "tests/one_step.py", str(ours)])
    assert p1.returncode == 0, p1.stderr[-3000:]
    env = {**mpi_env(), "ONE_STEP_OPTIMIZER": "horovod_average"}
    p2 = run_to_end([*horovodrun_prefix(2), sys.executable, "tests/one_step.py", str(theirs)],
                    env=env, cwd=ROOT, timeout=900)
    assert p2.returncode == 0, p2.stderr[-3000:]
    a, b = np.load(ours), np.load(theirs)
    n = len(a.files) // 2
    assert max(np.abs(a[f"arr_{i}"] - a[f"arr_{i + n}"]).max() for i in range(n)) > 1e-3  # the step moved them
    for i in range(n):
        np.testing.assert_array_equal(a[f"arr_{i}"], b[f"arr_{i}"])


@pytest.fixture(scope="module")
def digits_pair(tmp_path_factory):
    """digits_cnn as one process and under horovodrun -np 2, same settings."""
    results = tmp_path_factory.mktemp("pair")
    one = run_module("hpccnn.train", "--experiment", "digits_cnn", "--results-dir", results / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(horovodrun_command(2, ["--experiment", "digits_cnn", "--share-data", "true",
                                     "--results-dir", str(results / "two")]))
    assert two.returncode == 0, two.stderr[-3000:]
    (f1,) = run_folders(results / "one")
    folders = run_folders(results / "two")
    return f1, folders, two


@pytest.mark.mpi
@pytest.mark.slow
def test_two_ranks_reach_the_accuracy_of_one_process(digits_pair):
    f1, (f2,), _ = digits_pair
    a1 = read_json(f1 / "metrics.json")["test_accuracy"]
    a2 = read_json(f2 / "metrics.json")["test_accuracy"]
    assert a1 > 0.9 and abs(a1 - a2) <= 0.02, (a1, a2)


@pytest.mark.mpi
@pytest.mark.slow
def test_two_rank_run_writes_one_folder_from_rank_zero_with_the_whole_test_set(digits_pair):
    _, folders, proc = digits_pair
    assert len(folders) == 1  # rank 1 created nothing
    (folder,) = folders
    assert proc.stdout.count("hpccnn: results in") == 1
    metrics, prov = read_json(folder / "metrics.json"), read_json(folder / "provenance.json")
    assert metrics["world_size"] == 2 and prov["world_size"] == 2
    assert sorted(r["rank"] for r in prov["ranks"]) == [0, 1]
    # 2 ranks on this machine's cores: each takes an equal share, never all of them
    assert all(r["intra_op_threads"] == max(1, len(os.sched_getaffinity(0)) // 2) for r in prov["ranks"])
    predictions = pd.read_csv(folder / "predictions.csv")
    assert len(predictions) == 360  # both ranks' test shards gathered on rank 0
    assert pd.read_csv(folder / "confusion_matrix.csv", index_col=0).to_numpy().sum() == 360
    assert prov["launcher"] == "horovodrun"
    # the node's 2 ranks shared one copy of the digits; each held only its shards in TensorFlow
    for rank in prov["ranks"]:
        used, data = rank["memory"], rank["memory"]["data"]
        assert data["held_as"] == "node window" and data["window_ranks"] == 2 and data["own_bytes"] == 0
        assert 1797 * 64 < data["window_bytes"] < 1797 * (64 + 8) + 512 and 0 < data["shard_bytes"] < data["window_bytes"]
        # (getrusage's peak and smaps' RSS are counted apart: under gVisor the peak lagged RSS by 0.2 MB)
        assert used["peak_rss_bytes"] > 0.9 * used["rss_bytes"] and used["rss_bytes"] > used["pss_bytes"] > 0
    assert proc.stdout.count("hpccnn: peak memory per rank (0 to 1): ") == 1


@pytest.mark.mpi
@pytest.mark.exclusive  # counts wake-ups in a second: a loaded core would miss some
def test_a_process_alone_wakes_horovod_every_20_ms_and_jobs_of_several_ranks_keep_its_default():
    """Horovod's background thread cycles every 1 ms by default, with nothing to do for one rank."""
    import json

    def wakeups(cmd, **env):
        proc = run_to_end(cmd, cwd=ROOT, timeout=600,
                          env={**mpi_env(), "PYTHONPATH": str(ROOT), **env})
        line = next((x for x in proc.stdout.splitlines() if "WAKEUPS " in x), None)
        assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
        # horovodrun may run another rank's output on into the line: the first JSON value is ours
        return json.JSONDecoder().raw_decode(line.split("WAKEUPS ", 1)[1])[0]

    script = [sys.executable, str(ROOT / "tests" / "wakeups.py")]
    alone = wakeups(script)
    assert alone["size"] == 1 and alone["cycle_ms"] == "20"
    assert alone["wakeups"] < 150, alone  # 50 in an idle second; about 900 at Horovod's 1 ms
    asked = wakeups(script, HOROVOD_CYCLE_TIME="1")  # a user's own setting wins, and the count sees it
    assert asked["cycle_ms"] == "1" and asked["wakeups"] > 300, asked
    several = wakeups([*horovodrun_prefix(2), *script])
    assert several["size"] == 2 and several["cycle_ms"] is None


@pytest.mark.mpi
def test_mpirun_launches_the_same_command(tmp_path):
    proc = run(mpirun_command(2, ["--experiment", "digits_cnn", "--epochs", "1", "--no-save-model",
                                 "--results-dir", str(tmp_path)]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_folders(tmp_path)
    assert read_json(folder / "metrics.json")["world_size"] == 2
    assert read_json(folder / "provenance.json")["launcher"] == "mpirun"


@pytest.mark.mpi
def test_batch_smaller_than_the_ranks_is_refused(tmp_path):
    proc = run(horovodrun_command(2, ["--experiment", "digits_cnn", "--batch-size", "1",
                                      "--results-dir", str(tmp_path / "r")]))
    assert proc.returncode != 0
    assert "--batch-size 1 is smaller than the 2 ranks" in proc.stdout + proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.mpi
def test_srun_with_pmix_launches_the_same_command(tmp_path, slurm_env):
    cmd = ["srun", "--ntasks=2", "--cpus-per-task=1", "--mpi=pmix", "--time=10",
           sys.executable, "-m", "hpccnn.train", "--experiment", "digits_cnn", "--epochs", "1",
           "--no-save-model", "--results-dir", str(tmp_path)]
    proc = run_to_end(cmd, env=mpi_env(slurm_env), cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_folders(tmp_path)
    prov = read_json(folder / "provenance.json")
    assert prov["world_size"] == 2 and prov["launcher"] == "srun"
    assert prov["slurm"]["SLURM_JOB_ID"] and folder.name.endswith(f"job{prov['slurm']['SLURM_JOB_ID']}")
    assert all(r["intra_op_threads"] == 1 for r in prov["ranks"])  # --cpus-per-task=1


@pytest.mark.mpi
def test_allreduce_time_script_times_each_models_whole_gradient_between_two_ranks():
    """scripts/allreduce_time.py, which the README's 2-rank analysis quotes."""
    import re

    proc = run_to_end([*horovodrun_prefix(2), sys.executable, "scripts/allreduce_time.py", "cnn_v3", "mnist_cnn"],
                      cwd=ROOT, timeout=600, env={**mpi_env(), "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = dict(re.findall(r"(\w+): ([\d.]+) MB of float32 gradient, allreduce over 2 ranks [\d.]+ ms", proc.stdout))
    # cnn_v3 and mnist_cnn have 122,570 and 1,199,882 parameters (float32: 4 bytes each)
    assert found == {"cnn_v3": "0.5", "mnist_cnn": "4.8"}, proc.stdout[-2000:]
