"""Failures a run could hide: settings that can't be finite, a loss that becomes NaN, a setting that
can't fit in memory, a damaged archive to stage, TensorFlow's start-up noise, an unhelpful --help."""

import pytest

from conftest import run_module


@pytest.mark.parametrize("value", ["inf", "nan", "1e999", "-inf"])
def test_a_float_setting_that_is_not_finite_is_refused_at_the_start(tmp_path, value):
    proc = run_module("hpccnn.train", f"--learning-rate={value}", "--results-dir", tmp_path / "results")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"hpccnn: error: --learning-rate must be a finite number, "
                                                f"got {value!r}"]
    assert not (tmp_path / "results").exists()


def test_every_float_setting_must_be_finite_wherever_the_experiment_comes_from():
    import dataclasses

    from hpccnn.errors import UserError
    from hpccnn.experiments import SETTABLE, get_experiment, parse_value, validate

    floats = [name for name, field in SETTABLE.items() if field.type in (float, "float")]
    assert {"learning_rate", "val_fraction", "reduce_lr_factor"} <= set(floats)
    for name in floats:
        with pytest.raises(UserError, match=f"--{name.replace('_', '-')} must be a finite number"):
            parse_value(name, "inf")
        with pytest.raises(UserError, match=f"--{name.replace('_', '-')} must be a finite number"):
            validate(dataclasses.replace(get_experiment("digits_cnn"), **{name: float("nan")}))  # a config.json's


def test_help_shows_each_settings_choices_default_and_meaning():
    proc = run_module("hpccnn.train", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    for expected in [
        "--optimizer {sgd,adam,adadelta,rmsprop} the optimizer",
        "--dataset {cifar10,mnist,galaxy10,digits,synthetic} the data set",
        "--activation {relu,sigmoid,tanh,elu} activation of the hidden layers; default: relu",
        "--mixed-precision {auto,on,off,bfloat16}",
        "--model NAME the network, as in its seed; one of alexnet_galaxy10, cnn_v1, cnn_v2, cnn_v3, mnist_cnn, "
        "alexnet64, alexnet227, alexnet227_extra_dense; default: the experiment's (digits_cnn: mnist_cnn)",
        "--learning-rate FLOAT the optimizer's learning rate: a positive, finite number; "
        "default: the experiment's (digits_cnn: 0.001)",
        "--epochs INT epochs to train",
        "--batch-per-rank {true,false}",
        "--steps-per-execution INT training steps per call into TensorFlow's graph; default: 8",
    ]:
        assert expected in text, expected
    settings = text.split("experiment settings")[1]
    assert " STR " not in settings and "default: None" not in settings


def test_every_setting_has_a_meaning_and_submit_shows_it_too():
    from hpccnn.experiments import MEANING, SETTABLE

    assert set(MEANING) == set(SETTABLE)
    proc = run_module("hpccnn.submit", "--help")
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "--optimizer {sgd,adam,adadelta,rmsprop} the optimizer" in text


TENSORFLOW_NOISE = ("Unable to register cuDNN factory", "Unable to register cuFFT factory",
                    "Unable to register cuBLAS factory", "Could not find TensorRT", "oneDNN custom operations",
                    "This TensorFlow binary is optimized", "Could not find cuda drivers")


def plain_env(**extra):
    """This environment as a user's shell has it: no TF_CPP_MIN_LOG_LEVEL (the tests' conftest sets one)."""
    from hpccnn.launch import mpi_env

    env = {k: v for k, v in mpi_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**env, **extra}


def test_a_run_prints_none_of_tensorflows_start_up_noise(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "hpccnn.train", "--experiment", "digits_cnn", "--epochs", "1",
                           "--results-dir", str(tmp_path)], capture_output=True, text=True, env=plain_env(),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout
    assert not [line for line in proc.stderr.splitlines() if not line.startswith("hpccnn:")], proc.stderr
    # the same import without hpccnn prints them all: the check above can fail
    bare = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                          env=plain_env(), timeout=300)
    assert all(noise in bare.stderr for noise in TENSORFLOW_NOISE), bare.stderr


def test_the_users_log_level_wins_and_0_shows_everything():
    import subprocess
    import sys

    everything = subprocess.run([sys.executable, "-c", "import hpccnn, tensorflow"], capture_output=True,
                                text=True, env=plain_env(TF_CPP_MIN_LOG_LEVEL="0"), timeout=300)
    assert all(noise in everything.stderr for noise in TENSORFLOW_NOISE), everything.stderr
    quieter = subprocess.run([sys.executable, "-c", "import hpccnn, os, tensorflow; "
                              "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"], capture_output=True, text=True,
                             env=plain_env(TF_CPP_MIN_LOG_LEVEL="2"), timeout=300)
    assert quieter.stdout.strip() == "2" and quieter.stderr == "", quieter.stderr


def test_every_other_line_passes_the_filter_even_when_the_process_dies_in_it():
    import subprocess
    import sys

    script = ("import os\n"
              "from hpccnn.quiet import filtered_stderr\n"
              "with filtered_stderr():\n"
              "    os.write(2, b'E cuda_dnn.cc:9261] Unable to register cuDNN factory: Attempting to register "
              "factory for plugin cuDNN when one has already been registered\\n')\n"
              "    os.write(2, b'F cpu_feature_guard.cc] a real error, then the process dies\\n')\n"
              "    os.abort()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=plain_env(), timeout=60)
    assert proc.returncode != 0
    assert proc.stderr == "F cpu_feature_guard.cc] a real error, then the process dies\n"


def _cifar10_tarball(tmp_path, leave_out=()):
    import tarfile

    from conftest import write_cifar10

    folder = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar10(folder, per_batch=3, test=4)
    for name in leave_out:
        (folder / name).unlink()
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return path


def _damaged(kind, tmp_path):
    """(data set, a damaged copy of it) of each kind a download or a copy can go wrong."""
    import gzip

    import numpy as np

    from conftest import write_galaxy10, write_mnist

    noise = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    path = tmp_path / {"npz": "mnist.npz", "h5": "Galaxy10.h5", "truncated h5": "Galaxy10.h5",
                       "truncated npz": "mnist.npz"}.get(kind, "cifar-10-python.tar.gz")
    if kind == "truncated tar.gz":
        whole = _cifar10_tarball(tmp_path).read_bytes()
        path.write_bytes(whole[:len(whole) // 2])
    elif kind == "random bytes":
        path.write_bytes(noise)
    elif kind == "gzip, not a tar":
        path.write_bytes(gzip.compress(noise))
    elif kind == "tar missing members":
        path = _cifar10_tarball(tmp_path, leave_out=["data_batch_3"])
    elif kind in ("npz", "h5"):
        path.write_bytes(noise)
    elif kind == "truncated npz":
        write_mnist(path, train=40, test=10)
        path.write_bytes(path.read_bytes()[:-3000])
    elif kind == "truncated h5":
        write_galaxy10(path, n=20)
        path.write_bytes(path.read_bytes()[:100_000])
    dataset = {"npz": "mnist", "truncated npz": "mnist", "h5": "galaxy10", "truncated h5": "galaxy10"}.get(kind,
                                                                                                        "cifar10")
    return dataset, path


@pytest.mark.parametrize("kind", ["truncated tar.gz", "random bytes", "gzip, not a tar", "tar missing members",
                                  "npz", "truncated npz", "h5", "truncated h5"])
def test_a_damaged_source_is_one_line_and_nothing_is_staged(tmp_path, kind):
    dataset, source = _damaged(kind, tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    proc = run_module("hpccnn.stage", dataset, "--data-dir", cache, "--source", source)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hpccnn: error: {source} "), proc.stderr
    assert "nothing was staged" in lines[0] and "Traceback" not in proc.stderr
    assert list(cache.rglob("*")) == []  # no staged copy, no temporary folder, no empty cache folders
    if kind == "tar missing members":
        assert "cifar-10-batches-py/data_batch_3 is missing" in lines[0]
