"""Preemption, time limits and dead ranks: real signals, real launchers, nothing lost."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import (ROOT, job_field, read_json, run_folders, run_module, run_to_end, sbatch, train_refusal,
                      wait_for)
from hpccnn.launching.launch import horovodrun_command, mpi_env

# digits resized to 32x32 for mnist_cnn (dropout included): a few seconds per epoch on 2 ranks,
# long enough for a signal to land mid-run.
SLOW = ["--experiment", "digits_cnn", "--image-size", "32", "--no-save-model"]


def weights(path: Path):
    found = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.append((name, obj[()])) if isinstance(obj, h5py.Dataset) else None)
    return sorted(found, key=lambda item: item[0])


def final_weights(folder: Path):
    latest = read_json(folder / "checkpoint" / "latest.json")
    return weights(folder / "checkpoint" / latest["folder"] / "weights.h5")


def metrics(folder: Path):
    try:
        return read_json(folder / "metrics.json")
    except (OSError, ValueError):
        return {}


def wait_until(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_requeued_twice_by_real_signals_ends_where_an_uninterrupted_run_does(slurm_env, tmp_path):
    requeued_twice_ends_where_an_uninterrupted_run_does(slurm_env, tmp_path)


def requeued_twice_ends_where_an_uninterrupted_run_does(slurm_env, tmp_path, *layout, data=()):
    """A 2-rank sbatch job gets SLURM's warning signal twice (scancel --signal=USR2), requeues
    itself each time and resumes; its final weights, metrics and history equal a run left alone.
    layout: sbatch options placing the ranks (test_nodes puts them on 2 nodes); data: hpccnn.train options
    naming the data (test_nodes streams a pack)."""
    epochs = "8"
    common = ["--export=ALL", "--cpus-per-task=1", "--mem=3G", "--time=20", *(layout or ["--ntasks-per-node=2"])]
    env = dict(slurm_env, EXPERIMENT="digits_cnn", EPOCHS=epochs)

    alone = tmp_path / "alone"
    job = sbatch(dict(env, RESULTS_DIR=str(alone)), "slurm/alexnet_cpu.sbatch", *common,
                 f"--output={tmp_path}/alone-%j.out", args=[*SLOW[2:], *data])
    assert wait_for(slurm_env, job) == "COMPLETED", (tmp_path / f"alone-{job}.out").read_text()[-3000:]
    (reference,) = run_folders(alone)

    interrupted = tmp_path / "interrupted"
    job = sbatch(dict(env, RESULTS_DIR=str(interrupted)), "slurm/alexnet_cpu.sbatch", *common,
                 f"--output={tmp_path}/interrupted-%j.out", args=[*SLOW[2:], *data])
    folder = wait_until(lambda: (run_folders(interrupted) or [None])[0], 300, "the run folder")
    for restart, after in ((1, 2), (2, 5)):
        wait_until(lambda: metrics(folder).get("last_epoch", 0) >= after and metrics(folder)["status"] == "running",
                   300, f"epoch {after}")
        subprocess.run(["scancel", "--signal=USR2", job], check=True, env=slurm_env)
        wait_until(lambda: job_field(slurm_env, job, "Restarts") == str(restart), 120, f"requeue {restart}")
    log = (tmp_path / f"interrupted-{job}.out")
    assert wait_for(slurm_env, job) == "COMPLETED", log.read_text()[-3000:]

    done = metrics(folder)
    assert done["status"] == "completed" and done["resumes"] == 2, done
    history = pd.read_csv(folder / "history.csv")
    assert history["epoch"].tolist() == list(range(1, int(epochs) + 1))  # every epoch exactly once
    expected = pd.read_csv(reference / "history.csv")
    np.testing.assert_allclose(history["val_accuracy"], expected["val_accuracy"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-5)
    assert done["test_accuracy"] == pytest.approx(metrics(reference)["test_accuracy"], abs=1e-9)
    for (name, a), (_, b) in zip(final_weights(folder), final_weights(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    prov = read_json(folder / "provenance.json")
    assert [r["after_epoch"] for r in prov["resumes"]] == sorted(r["after_epoch"] for r in prov["resumes"])
    assert all(r["after_epoch"] >= 2 for r in prov["resumes"]) and prov["world_size"] == 2
    # each stop said in the log before the job was requeued (SLURM may end the ranks before they say more)
    assert log.read_text().count("hpccnn: stopped by SIGUSR2 after epoch ") >= 2 and \
        log.read_text().count(f"; requeueing job {job}, which resumes from {folder}") == 2, log.read_text()[-3000:]
    return prov


def rank_pids(results: Path):
    """The hpccnn.train processes writing into results (not another test's, running beside), by their
    Open MPI rank."""
    ranks = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"hpccnn.train" in cmd and str(results).encode() in cmd:
            for item in env:
                if item.startswith(b"OMPI_COMM_WORLD_RANK="):
                    ranks[int(item.split(b"=")[1])] = int(proc.name)
    return ranks


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.exclusive  # ended within 60 s of the kill
def test_a_killed_rank_fails_the_job_quickly_and_the_run_resumes(tmp_path):
    results = tmp_path / "results"
    launcher = subprocess.Popen(horovodrun_command(2, [*SLOW, "--epochs", "12", "--results-dir", str(results)]),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=mpi_env(), cwd=ROOT)
    try:
        folder = wait_until(lambda: (run_folders(results) or [None])[0], 300, "the run folder")
        wait_until(lambda: metrics(folder).get("last_epoch", 0) >= 2, 300, "two finished epochs")
        pids = rank_pids(results)
        os.kill(pids[1], signal.SIGKILL)
        killed = time.time()
        status = launcher.wait(timeout=120)
        took = time.time() - killed
    finally:
        if launcher.poll() is None:
            launcher.kill()
    output = launcher.stdout.read().decode(errors="replace")
    assert status != 0, output[-3000:]
    assert took < 60, f"the job took {took:.0f} s to end after a rank died"
    state = wait_until(lambda: metrics(folder) if metrics(folder).get("status") == "failed" else None, 30,
                       "metrics.json to say failed")
    assert state["reason"] and state["last_epoch"] >= 2
    latest = read_json(folder / "checkpoint" / "latest.json")
    assert latest["epoch"] == state["last_epoch"]
    assert not list(folder.rglob(".*.tmp*"))  # no half-written file left behind

    # and the run resumes from that checkpoint to the end, by hand
    proc = run_to_end(horovodrun_command(2, ["--resume", str(folder)]), env=mpi_env(), cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    done = metrics(folder)
    assert done["status"] == "completed" and done["resumed_after_epoch"] == state["last_epoch"]
    assert pd.read_csv(folder / "history.csv")["epoch"].tolist() == list(range(1, 13))


@pytest.mark.slow
def test_sigterm_stops_after_a_finished_epoch_and_says_how_to_resume(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "hpccnn.train", *SLOW, "--epochs", "30", "--results-dir",
                             str(results)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env(), cwd=ROOT)
    folder = wait_until(lambda: (run_folders(results) or [None])[0], 300, "the run folder")
    wait_until(lambda: metrics(folder).get("last_epoch", 0) >= 1, 300, "a finished epoch")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("hpccnn: stopped by SIGTERM after epoch ")
    assert f"--resume {folder}" in err
    state = metrics(folder)
    assert state["status"] == "interrupted" and state["requeued"] is False
    history = pd.read_csv(folder / "history.csv")
    assert history["epoch"].tolist() == list(range(1, state["last_epoch"] + 1))
    assert read_json(folder / "checkpoint" / "latest.json")["epoch"] == state["last_epoch"]


@pytest.mark.exclusive  # the ranks have SLURM's KillWait (5 s on the local cluster) to say it before SIGKILL
def test_a_job_slurm_requeues_says_slurm_resumes_it_and_one_it_wont_says_how_to_resume(slurm_env, tmp_path):
    """scontrol requeue (as a preemption that requeues does) sends the job's ranks SIGTERM and starts the job
    again: the run says SLURM resumes it (a --resume by hand would train a second copy beside it), and the
    requeued job does, every epoch once. The same SIGTERM sent to a job SLURM won't start again (scancel
    --signal=TERM): that run says how to resume it by hand."""
    common = ["--export=ALL", "--cpus-per-task=1", "--mem=3G", "--time=20", "--ntasks-per-node=2"]
    env = dict(slurm_env, EXPERIMENT="digits_cnn", EPOCHS="5")
    outcome = {}
    for how in ("requeue", "terminate"):
        results = tmp_path / how
        job = sbatch(dict(env, RESULTS_DIR=str(results)), "slurm/alexnet_cpu.sbatch", *common,
                     f"--output={tmp_path}/{how}-%j.out", args=SLOW[2:])
        folder = wait_until(lambda: (run_folders(results) or [None])[0], 300, "the run folder")
        wait_until(lambda: metrics(folder).get("last_epoch", 0) >= 2 and metrics(folder)["status"] == "running",
                   300, "epoch 2")
        if how == "requeue":
            subprocess.run(["scontrol", "requeue", job], check=True, env=slurm_env)
            wait_until(lambda: job_field(slurm_env, job, "Restarts") == "1", 120, "the requeue")
        else:  # the ranks get SIGTERM; the job is not cancelled, and ends when they do
            subprocess.run(["scancel", "--signal=TERM", job], check=True, env=slurm_env)
        state = wait_for(slurm_env, job)
        outcome[how] = (state, folder, (tmp_path / f"{how}-{job}.out").read_text(), job)

    state, folder, log, job = outcome["requeue"]
    assert state == "COMPLETED", log[-3000:]
    assert f"hpccnn: stopped by SIGTERM after epoch " in log and \
        f"; SLURM is requeueing job {job}, which resumes from {folder}" in log, log[-3000:]
    assert "SLURM will start the job again and it resumes from there by itself" in log and "resume with --resume" not in log
    done = metrics(folder)
    assert done["status"] == "completed" and done["resumes"] == 1, done
    assert pd.read_csv(folder / "history.csv")["epoch"].tolist() == [1, 2, 3, 4, 5]

    state, folder, log, job = outcome["terminate"]
    assert state == "FAILED" and job_field(slurm_env, job, "Restarts") == "0", state  # exit status 3
    stopped = metrics(folder)
    assert stopped["status"] == "interrupted" and stopped["requeued"] is False, stopped
    assert f"--resume {folder}" in log and "SLURM is requeueing" not in log, log[-3000:]


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_a_stop_signal_is_acted_on_within_one_check_whatever_the_steps_per_execution(steps_per_execution):
    """Keras calls batch-end callbacks once per execution; the stop check must still come round."""
    import os

    import horovod.tensorflow as hvd
    import numpy as np
    import tensorflow as tf

    from hpccnn.training.callbacks import StopOnSignal

    hvd.init()  # one rank, for the allreduce the check makes (not dist.init: TF may be running already)
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
    model.compile("sgd", "mse", steps_per_execution=steps_per_execution)
    ends = []

    class SignalAtStep4(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(batch + 1)
            if batch + 1 == 4:
                os.kill(os.getpid(), signal.SIGUSR2)

    stopper = StopOnSignal(every=5).install()
    try:
        model.fit(np.zeros((64, 4)), np.zeros((64, 2)), batch_size=2, epochs=3, verbose=0,
                  callbacks=[SignalAtStep4(), stopper])
    finally:
        stopper.uninstall()
    assert stopper.signal == signal.SIGUSR2 and stopper.partial_epoch == 0 and not stopper.finished(0)
    assert ends[-1] <= 8  # within one check of step 4, not at a multiple of 5 steps or the epoch's end (32)


@pytest.mark.parametrize("args, message", [
    (["--resume", "nowhere"], "not a run folder made by hpccnn.train"),
    (["--resume", "a/../b"], "contains '..'"),
    (["--run-dir", "results/../../etc/x"], "contains '..'"),
])
def test_resume_and_run_dir_bad_input(tmp_path, args, message, monkeypatch):
    """In this process (hpccnn.train as a command: tests/test_bad_input.py)."""
    monkeypatch.chdir(tmp_path)
    assert message in train_refusal(*args)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_resume_refuses_changed_settings(tmp_path):
    results = tmp_path / "results"
    assert run_module("hpccnn.train", "--epochs", "1", "--no-save-model", "--results-dir", results).returncode == 0
    (folder,) = run_folders(results)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    proc = run_module("hpccnn.train", "--resume", folder, "--learning-rate", "0.5")
    assert proc.returncode == 2 and "only --epochs may change, not --learning-rate" in proc.stderr
    assert before == {p: p.stat().st_mtime_ns for p in folder.rglob("*")}  # nothing touched


@pytest.mark.mpi
@pytest.mark.slow
def test_a_submitit_grid_point_requeues_itself_on_the_warning_signal_and_resumes(slurm_env, tmp_path):
    results = tmp_path / "results"
    proc = run_module("hpccnn.submit", "--experiment", "digits_cnn", "--image-size", "32", "--epochs", "6",
                      "--no-save-model", "--results-dir", results, "--cpus-per-task", "1", "--mem-gb", "3",
                      "--time-min", "20", env=slurm_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    job = re.search(r"submitted job array (\d+)", proc.stdout).group(1)
    folder = wait_until(lambda: next(iter(results.glob("*/*/00_digits_cnn")), None), 300, "the point's run folder")
    wait_until(lambda: metrics(folder).get("last_epoch", 0) >= 2, 300, "two finished epochs")
    subprocess.run(["scancel", "--signal=USR2", job], check=True, env=slurm_env)
    wait_until(lambda: job_field(slurm_env, job, "Restarts") == "1", 120, "the requeue")
    assert wait_for(slurm_env, job) == "COMPLETED"
    done = metrics(folder)
    assert done["status"] == "completed" and done["resumes"] == 1 and done["resumed_after_epoch"] >= 2
    assert pd.read_csv(folder / "history.csv")["epoch"].tolist() == list(range(1, 7))
