"""Bad input: one line on stderr naming the problem, exit status 2, no traceback, nothing written.

The tables run in this process against the parsers (the UserError the command would print); one case
of each runs as the command, for the exit status and the one line."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_module, sbatch, train_refusal, wait_for, write_cifar10, write_galaxy10, write_mnist


def snapshot(folder: Path):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else None


def truncated_cifar(d):
    write_cifar10(d / "cifar10" / "cifar-10-batches-py")
    batch = d / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    return ["--dataset", "cifar10"], "is unreadable (", "python -m hpccnn.stage cifar10"


def mnist_wrong_shape(d):
    (d / "mnist").mkdir(parents=True)
    z = np.zeros
    np.savez(d / "mnist" / "mnist.npz", x_train=z((10, 20, 20), np.uint8), y_train=z(10, np.uint8),
             x_test=z((4, 20, 20), np.uint8), y_test=z(4, np.uint8))
    return ["--dataset", "mnist"], "training images of shape (10, 20, 20, 1)", "expected N images of 28x28x1"


def mnist_bad_labels(d):
    arrays = write_mnist(d / "mnist" / "mnist.npz")
    arrays["y_train"][3] = 12
    np.savez(d / "mnist" / "mnist.npz", **arrays)
    return ["--dataset", "mnist"], "training labels outside 0..9 (found 0..12)", "--force"


def galaxy10_not_hdf5(d):
    (d / "galaxy10").mkdir(parents=True)
    (d / "galaxy10" / "Galaxy10.h5").write_bytes(b"<html>404 Not Found</html>")
    return ["--dataset", "galaxy10"], "is unreadable", "python -m hpccnn.stage galaxy10"


def galaxy10_missing_key(d):
    import h5py

    (d / "galaxy10").mkdir(parents=True)
    with h5py.File(d / "galaxy10" / "Galaxy10.h5", "w") as f:
        f.create_dataset("images", data=np.zeros((4, 69, 69, 3), np.uint8))
    return ["--dataset", "galaxy10"], "has no 'ans' data set", ""


def missing(d):
    return ["--dataset", "cifar10"], "is not staged", "python -m hpccnn.stage cifar10"


BAD_CACHES = [truncated_cifar, mnist_wrong_shape, mnist_bad_labels, galaxy10_not_hdf5, galaxy10_missing_key, missing]


@pytest.mark.parametrize("make", BAD_CACHES)
def test_a_bad_data_cache_is_named_with_the_fix(tmp_path, make, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    args, problem, fix = make(cache)
    before = snapshot(cache)
    message = train_refusal("--experiment", "mnist_cnn", *args, "--data-dir", cache, "--epochs", "1",
                            "--results-dir", tmp_path / "results")
    assert problem in message and fix in message, message
    assert not (tmp_path / "results").exists() and snapshot(cache) == before


@pytest.mark.slow
def test_a_bad_data_cache_stops_the_command_in_one_line_and_exit_2_writing_nothing(tmp_path):
    """The command itself, once: the cache is read after TensorFlow and Horovod have started."""
    cache = tmp_path / "cache"
    cache.mkdir()
    args, problem, fix = truncated_cifar(cache)
    before = snapshot(cache)
    proc = run_module("hpccnn.train", "--experiment", "mnist_cnn", *args, "--data-dir", cache, "--epochs", "1",
                      "--results-dir", tmp_path / "results", timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hpccnn:")]
    assert len(lines) == 1 and problem in lines[0] and fix in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists() and snapshot(cache) == before


BAD_SETTINGS = [
    (["--model", "resnet"], "unknown model 'resnet'; give a built-in name, package.module:function (importable "
                            "from this folder or PYTHONPATH) or path/to/file.py:function (built-in: alexnet_galaxy10"),
    (["--optimizer", "lamb"], "--optimizer must be one of sgd, adam, adadelta, rmsprop"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--epochs", "1.5"], "--epochs must be int, got '1.5'"),
    (["--batch-size", "-4"], "--batch-size must be a positive integer"),
    (["--learning-rate", "0"], "--learning-rate must be positive"),
    (["--learning-rate", "fast"], "--learning-rate must be float"),
    (["--batch-per-rank", "maybe"], "--batch-per-rank must be bool"),
    (["--experimnet", "digits_cnn"], "unrecognized arguments: --experimnet"),
    (["--synthetic-size", "0"], "--synthetic-size must be a positive integer, got 0"),
    (["--synthetic-size", "50k"], "--synthetic-size must be int, got '50k'"),
    (["--dataset", "synthetic", "--synthetic-size", "10000000000"], "more than this node's"),
    (["--synthetic-shape", "32x32"], "--synthetic-shape must be HEIGHTxWIDTHxCHANNELS of positive integers"),
    (["--synthetic-shape", "69x0x3"], "(such as 32x32x3), got '69x0x3'"),
    (["--synthetic-shape=-3x3x3"], "--synthetic-shape must be HEIGHTxWIDTHxCHANNELS"),
    (["--synthetic-shape", "32x32x3x1"], "got '32x32x3x1'"),
    (["--steps-per-epoch", "-1"], "--steps-per-epoch must not be negative (0: the whole shard), got -1"),
    (["--steps-per-epoch", "ten"], "--steps-per-epoch must be int, got 'ten'"),
    (["--share-data", "sometimes"], "--share-data must be bool, got 'sometimes'"),
    (["--results-dir", "/proc/hpccnn-results"], "--results-dir /proc/hpccnn-results is not writable"),
    (["--results-dir", "README.md/results"], "is a file, not a folder"),
]


@pytest.mark.parametrize("args, message", BAD_SETTINGS)
def test_bad_settings_and_places(tmp_path, args, message, monkeypatch):
    monkeypatch.chdir(ROOT if "README.md/results" in args else tmp_path)
    assert message in train_refusal("--epochs", "1", *args)
    assert not (tmp_path / "results").exists() and not (ROOT / "README.md").is_dir()


def test_a_bad_setting_is_one_line_on_stderr_and_exit_2(tmp_path):
    args, message = BAD_SETTINGS[2]
    proc = run_module("hpccnn.train", "--epochs", "1", *args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "results").exists()


def test_shell_metacharacters_in_an_sbatch_override_are_never_run(slurm_env, tmp_path):
    marker = tmp_path / "pwned"
    evil = f"digits_cnn;touch {marker};$(touch {marker})`touch {marker}`"
    job = sbatch(dict(slurm_env, EXPERIMENT=evil, EPOCHS="1", RESULTS_DIR=str(tmp_path / "results")),
                 "slurm/alexnet_cpu.sbatch", "--export=ALL", "--cpus-per-task=1", "--mem=2G", "--time=5",
                 f"--output={tmp_path}/slurm-%j.out")
    assert wait_for(slurm_env, job) == "FAILED"
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert "hpccnn: error: unknown experiment 'digits_cnn;touch" in log, log[-2000:]
    assert not marker.exists() and not (tmp_path / "results").exists()


def test_shell_metacharacters_in_submit_values_are_refused_or_inert(tmp_path):
    marker = tmp_path / "pwned"
    proc = run_module("hpccnn.submit", "--experiment", "digits_cnn", "--dry-run", "--data-dir",
                      f"$(touch {marker})", "--results-dir", tmp_path / "r", timeout=120)
    assert proc.returncode == 0 and not marker.exists()
    # the value reaches hpccnn.train as one argument, never through a shell
    assert f"--data-dir '{Path('$(touch ' + str(marker) + ')').resolve()}'" in proc.stdout or \
        "'$(touch" in proc.stdout, proc.stdout
    proc = run_module("hpccnn.submit", "--experiment", "digits_cnn", "--account", "x`id`", "--results-dir",
                      tmp_path / "r", timeout=120)
    assert proc.returncode == 2 and "is not a SLURM account name" in proc.stderr and not (tmp_path / "r").exists()
    env = dict(os.environ)
    out = subprocess.run([str(Path(os.sys.executable)), "-m", "hpccnn.grids", "cifar_hparams", "--task", "0",
                          "--results-dir", str(tmp_path / "g"), "--dataset", "digits;rm -rf /"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 2 and "--dataset digits;rm -rf /: no such file or folder" in out.stderr, out.stderr
