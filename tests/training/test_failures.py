"""Failures a run could hide: settings that can't be finite, a loss that becomes NaN, a setting that
can't fit in memory, a damaged archive to stage, TensorFlow's start-up noise, an unhelpful --help."""

import pytest

from conftest import run_module, run_to_end


@pytest.mark.parametrize("value", ["inf", "nan", "1e999", "-inf"])
def test_a_float_setting_that_is_not_finite_is_refused_at_the_start(tmp_path, value):
    proc = run_module("hpccnn.train", f"--learning-rate={value}", "--results-dir", tmp_path / "results")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"hpccnn: error: --learning-rate must be a finite number, "
                                                f"got {value!r}"]
    assert not (tmp_path / "results").exists()


def test_every_float_setting_must_be_finite_wherever_the_experiment_comes_from():
    import dataclasses

    from hpccnn.common.errors import UserError
    from hpccnn.models.catalog import get_experiment
    from hpccnn.models.experiments import SETTABLE, parse_value, validate

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
        "--dataset NAME a built-in data set (all but digits and synthetic are staged first: python -m hpccnn.stage), "
        "or your own: a folder of images in class subfolders, an .npz or an HDF5 file; "
        "one of cifar10, mnist, fashion_mnist, galaxy10, digits, synthetic",
        "--activation {relu,sigmoid,tanh,elu} activation of the hidden layers; default: relu",
        "--mixed-precision {auto,on,off,bfloat16}",
        "--model NAME the network: your own function that returns a keras.Model (path/to/file.py:function or "
        "package.module:function), or a built-in; one of alexnet_galaxy10, cnn_v1, cnn_v2, cnn_v3, mnist_cnn, "
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
    from hpccnn.models.experiments import MEANING, SETTABLE

    assert set(MEANING) == set(SETTABLE)
    proc = run_module("hpccnn.submit", "--help")
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "--optimizer {sgd,adam,adadelta,rmsprop} the optimizer" in text


TENSORFLOW_NOISE = ("Unable to register cuDNN factory", "Unable to register cuFFT factory",
                    "Unable to register cuBLAS factory", "Could not find TensorRT", "oneDNN custom operations",
                    "This TensorFlow binary is optimized", "Could not find cuda drivers")


def plain_env(**extra):
    """This environment as a user's shell has it: no TF_CPP_MIN_LOG_LEVEL (the tests' conftest sets one)."""
    from hpccnn.launching.launch import mpi_env

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
              "from hpccnn.common.quiet import filtered_stderr\n"
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


def _diverged_run(proc, results_dir, steps_per_epoch):
    """The run folder of a run whose loss became NaN, checked as the user sees it: exit status 5, one
    line naming the epoch, the step and what to try, and metrics.json saying failed with that reason."""
    import json
    import re

    from conftest import run_folders

    assert proc.returncode == 5, proc.stderr[-2000:]
    said = [line.split("hpccnn: ", 1)[1] for line in proc.stderr.splitlines() if "hpccnn: " in line]
    assert len(said) == 1, proc.stderr[-2000:]
    found = re.fullmatch(r"loss became nan in epoch (\d+) \(step (\d+)\); try a smaller --learning-rate than "
                         r"1e\+06; recorded as failed in (.*)", said[0])
    assert found, said
    (folder,) = run_folders(results_dir)
    assert str(folder) == found.group(3)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "failed" and said[0].startswith(metrics["reason"]), metrics
    assert "test_accuracy" not in metrics and not (folder / "model.h5").exists()
    epoch, step = int(found.group(1)), int(found.group(2))
    where = metrics["diverged"]
    assert (where["epoch"], where["step"]) == (epoch, step)
    # stopped within a check's interval (a quarter epoch, at most 20 steps), not at the epoch's end
    assert step <= where["stopped_after_step"] < min(step + 20, steps_per_epoch)
    if epoch > 1:  # the epochs before it stay, with their checkpoint; the one that diverged is not one
        import pandas as pd

        assert list(pd.read_csv(folder / "history.csv")["epoch"]) == list(range(1, epoch))
        assert json.loads((folder / "checkpoint" / "latest.json").read_text())["epoch"] == epoch - 1
    else:
        assert not (folder / "history.csv").exists() and not (folder / "checkpoint" / "latest.json").exists()
    return folder


@pytest.mark.slow
def test_a_loss_that_becomes_nan_stops_the_run_at_once_and_records_it_failed(tmp_path):
    proc = run_module("hpccnn.train", "--experiment", "digits_cnn", "--learning-rate", "1e6", "--epochs", "3",
                      "--results-dir", tmp_path / "results")
    _diverged_run(proc, tmp_path / "results", steps_per_epoch=35)  # 1,149 images, batches of 32


@pytest.mark.mpi
@pytest.mark.slow
def test_a_loss_that_becomes_nan_stops_every_rank_together(tmp_path):
    """Two ranks under horovodrun: both stop after the same step (no rank left in an allreduce, which
    would hang the job until the watchdog's ten minutes), and rank 0 records it before either exits."""
    import os
    import re

    from hpccnn.launching.launch import horovodrun_command, mpi_env

    cmd = horovodrun_command(2, ["--experiment", "digits_cnn", "--learning-rate", "1e6", "--epochs", "3",
                                 "--results-dir", str(tmp_path / "results")])
    env = mpi_env({**os.environ, "HPCCNN_STALL_TIMEOUT": "120"})  # a rank left waiting ends in 2 minutes
    proc = run_to_end(cmd, env=env, timeout=600)
    # what the ranks wrote to stderr, as horovodrun tags it ("[1,0]<stderr>:", not always at a line's start)
    parts = re.split(r"\[1,\d+\]<(stderr|stdout)>:", proc.stdout + proc.stderr)
    proc.stderr = "\n".join(text.strip() for kind, text in zip(parts[1::2], parts[2::2]) if kind == "stderr")
    _diverged_run(proc, tmp_path / "results", steps_per_epoch=35)  # 1,149 images, 16 per rank per step


# The seeds' data sets as a rank holds them: images (uint8) and labels, all splits.
SEED_DATA = {"cifar10": (60_000, 32, 3), "mnist": (70_000, 28, 1), "fashion_mnist": (70_000, 28, 1), "galaxy10": (21_785, 69, 3), "digits": (1_797, 8, 1)}


def test_the_estimate_fits_every_seed_experiment_on_the_seeds_nodes():
    """The seeds' CPU nodes: 8 cores and 56 GB, as many ranks each as hpccnn.submit puts there (2 for
    a small CNN, 1 for an AlexNet); the estimate must leave every seed experiment room on them, at its own
    batch, and room for 2 ranks of every one (a user who asks for them)."""
    from types import SimpleNamespace

    from hpccnn.training import memory
    from hpccnn.models.experiments import EXPERIMENTS
    from hpccnn.models.zoo import get_model
    from hpccnn.launching.resources import default_layout

    per_rank = 56 * memory.GB / 2
    for exp in EXPERIMENTS.values():
        layout = SimpleNamespace(gpus_per_node=0, ntasks_per_node=None, cpus_per_task=None)
        default_layout(layout, exp)
        assert (layout.ntasks_per_node, layout.cpus_per_task) == ((1, 8) if "alexnet" in exp.model else (2, 4))
        images, side, channels = SEED_DATA[exp.dataset]
        spec = get_model(exp.model)
        side = exp.image_size or (side if spec.output_side(side) > 0 else spec.input_side)
        data_bytes = 2 * images * (SEED_DATA[exp.dataset][1] ** 2 * channels + 8)
        need = memory.estimate(exp, memory.Step(exp.batch_size // 2, side, channels), 10, data_bytes)
        assert need.total < per_rank, (exp.name, need)
        assert need.total > memory.RUNTIME_BYTES + data_bytes  # the model counts for something
    alexnet227 = memory.estimate(EXPERIMENTS["cifar_alexnet227"], memory.Step(32, 227, 3), 10, 0)
    assert 1 * memory.GB < alexnet227.parameters + alexnet227.activations < 4 * memory.GB


def test_the_estimates_layers_are_the_models_own():
    import numpy as np

    from hpccnn.training.memory import layers
    from hpccnn.models.zoo import MODELS

    for name, spec in MODELS.items():
        side = spec.input_side
        model = spec((side, side, 3), 10)
        counted = layers(spec, side, 3, 10)
        outputs = [int(np.prod(layer.output.shape[1:])) for layer in model.layers]
        assert counted.parameters == model.count_params(), name
        assert counted.largest_per_image == max(outputs, default=0) or counted.largest_per_image == side * side * 3
        assert counted.kept_per_image >= sum(outputs), name  # every layer's output, some twice


def test_a_far_too_large_image_size_is_refused_before_anything_is_written(tmp_path):
    proc = run_module("hpccnn.train", "--experiment", "digits_cnn", "--model", "alexnet227", "--image-size", "2048",
                      "--results-dir", tmp_path / "results")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpccnn: error: --image-size 2048 needs about "), proc.stderr
    assert "GB of memory per rank" in lines[0] and "use a smaller --image-size" in lines[0]
    assert not (tmp_path / "results").exists()


def test_a_batch_too_large_for_slurms_memory_is_refused_naming_the_batch_that_fits(tmp_path):
    import os
    import re

    proc = run_module("hpccnn.train", "--experiment", "cifar_alexnet227", "--dataset", "synthetic",
                      "--batch-size", "1024", "--results-dir", tmp_path / "results",
                      env={**os.environ, "SLURM_MEM_PER_NODE": "4096"})  # sbatch --mem=4G
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    found = re.fullmatch(r"hpccnn: error: --batch-size 1024 needs about ([\d.]+) GB of memory per rank \(.*\) but a "
                         r"rank here has 4.0 GB \(SLURM's --mem\); use a smaller --batch-size \(at most (\d+) images "
                         r"per rank fit\) or more ranks", lines[0])
    assert found, lines[0]
    assert float(found.group(1)) > 4 and 1 <= int(found.group(2)) < 1024
    assert not (tmp_path / "results").exists()


def test_the_memory_a_rank_has_is_the_least_of_slurms_the_cgroups_and_the_nodes(tmp_path):
    from hpccnn.training import memory

    assert memory.available(2, environ={"SLURM_MEM_PER_NODE": "8192"}) == (4 * memory.GB, "SLURM's --mem")
    assert memory.available(2, environ={"SLURM_MEM_PER_CPU": "1024", "SLURM_CPUS_PER_TASK": "3"}) == \
        (3 * memory.GB, "SLURM's --mem-per-cpu")
    assert memory.available(1, environ={"SLURM_MEM_PER_NODE": str(10 ** 9)})[1] != "SLURM's --mem"  # a petabyte
    # cgroup v2 and v1, in the files' own formats: the smallest limit from the process's cgroup up
    (tmp_path / "v2" / "slurm" / "job_7").mkdir(parents=True)
    (tmp_path / "v2" / "slurm" / "memory.max").write_text("6442450944\n")
    (tmp_path / "v2" / "slurm" / "job_7" / "memory.max").write_text("max\n")
    (tmp_path / "cgroup").write_text("0::/slurm/job_7\n")
    assert memory._cgroup_limit(tmp_path / "cgroup", tmp_path / "v2") == 6 * memory.GB
    (tmp_path / "v1" / "memory" / "job_7").mkdir(parents=True)
    (tmp_path / "v1" / "memory" / "job_7" / "memory.limit_in_bytes").write_text("2147483648\n")
    (tmp_path / "v1" / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "cgroup1").write_text("5:cpu:/\n4:memory:/job_7\n")
    assert memory._cgroup_limit(tmp_path / "cgroup1", tmp_path / "v1") == 2 * memory.GB
    (tmp_path / "cgroup0").write_text("4:memory:/\n")
    assert memory._cgroup_limit(tmp_path / "cgroup0", tmp_path / "v1") is None  # v1's "no limit"
