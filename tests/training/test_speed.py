"""The speed settings (XLA, mixed precision, steps per execution, fp16 allreduce): each one is
applied for real where this machine can run it. Whether they pay is the benchmark's business:
python -m hpccnn.bench --variants measures them (README, Performance)."""

import os
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, read_json, run_folders, run_module, run_to_end
from hpccnn.launching.launch import horovodrun_command, horovodrun_prefix, mpi_env
from hpccnn.training.compute import XLA_CPU_FLAGS, cpu_xla, speed_settings, use_xla
from hpccnn.models.catalog import get_experiment
from hpccnn.models.experiments import EXPERIMENTS, with_overrides


def test_auto_turns_xla_and_mixed_precision_on_with_a_gpu_and_off_on_cpus():
    # This machine has no GPU, so the GPU count is passed in: the only stand-in in this file.
    exp = get_experiment("cifar_alexnet64")
    assert speed_settings(exp, gpus=0) == {"device": "CPU", "xla": False, "mixed_precision": "off",
                                           "steps_per_execution": 8, "fp16_allreduce": False}
    on_gpu = speed_settings(exp, gpus=1)
    assert on_gpu["device"] == "GPU" and on_gpu["xla"] and on_gpu["mixed_precision"] == "float16"
    forced = with_overrides(exp, dict(xla="off", mixed_precision="on"))
    assert not speed_settings(forced, gpus=4)["xla"] and speed_settings(forced, gpus=0)["mixed_precision"] == "float16"
    # bfloat16 only when asked, GPU or not
    for gpus in (0, 1):
        assert speed_settings(with_overrides(exp, dict(mixed_precision="bfloat16")), gpus)["mixed_precision"] == "bfloat16"


def test_bfloat16_hardware_is_read_from_the_cpus_flags(tmp_path):
    from hpccnn.training.compute import cpu_has_bfloat16

    def cpuinfo(flags):
        path = tmp_path / f"cpuinfo-{len(flags)}"
        path.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: " + " ".join(flags) + "\n\n")
        return path

    assert not cpu_has_bfloat16(cpuinfo(["fpu", "avx2", "fma"]))  # AVX2 only: bfloat16 in software
    assert not cpu_has_bfloat16(cpuinfo(["avx2", "avx512f", "avx512bw"]))  # AVX-512 without BF16
    assert cpu_has_bfloat16(cpuinfo(["avx2", "avx512f", "avx512_bf16"]))  # e.g. AMD Zen 4, Cooper Lake
    assert cpu_has_bfloat16(cpuinfo(["avx512f", "amx_tile", "amx_bf16"]))  # Sapphire Rapids
    assert not cpu_has_bfloat16(tmp_path / "missing")


def test_auto_never_compiles_with_xla_on_cpus_whatever_the_model():
    # XLA's effect on a CPU depends on the CPU (faster on one, slower on another:
    # README, Performance), so only --xla on turns it on there, for every experiment.
    for exp in EXPERIMENTS.values():
        assert not cpu_xla(exp) and not speed_settings(exp, gpus=0)["xla"], exp.name
        assert speed_settings(exp, gpus=1)["xla"], exp.name
        assert cpu_xla(with_overrides(exp, dict(xla="on"))), exp.name
        assert not speed_settings(with_overrides(exp, dict(xla="off")), gpus=1)["xla"], exp.name


def test_xla_flags_are_added_once_and_keep_the_users_own():
    env = {"TF_XLA_FLAGS": "--tf_xla_enable_lazy_compilation=false"}
    on = with_overrides(get_experiment("galaxy10_alexnet"), dict(xla="on"))
    use_xla(on, env)
    use_xla(on, env)
    assert env["TF_XLA_FLAGS"].split() == ["--tf_xla_enable_lazy_compilation=false", *XLA_CPU_FLAGS]
    for exp in (get_experiment("galaxy10_alexnet"), with_overrides(get_experiment("cifar_cnn_v3"), dict(xla="off"))):
        untouched = {}
        use_xla(exp, untouched)  # auto or off: nothing at all on CPUs
        assert untouched == {}


@pytest.mark.mpi
@pytest.mark.slow
def test_xla_mixed_precision_steps_per_execution_and_fp16_allreduce_train_under_two_ranks(tmp_path):
    runs = {"on": ["--xla", "on"], "auto": ["--xla", "auto", "--mixed-precision", "on"]}
    procs = {}
    for name, extra in runs.items():
        args = ["--experiment", "digits_cnn", "--epochs", "3", "--results-dir", str(tmp_path / name), *extra,
                "--steps-per-execution", "4", "--fp16-allreduce", "true", "--no-save-model"]
        env = mpi_env({**os.environ, "XLA_FLAGS": f"--xla_dump_to={tmp_path / ('xla-' + name)}"})
        procs[name] = run_to_end(horovodrun_command(2, args), env=env, cwd=ROOT, timeout=900)
    for name, proc in procs.items():
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        (folder,) = run_folders(tmp_path / name)
        metrics, prov = read_json(folder / "metrics.json"), read_json(folder / "provenance.json")
        assert metrics["status"] == "completed" and metrics["world_size"] == 2
        # 3 epochs of digits learn (float16 compute learns a little slower at first)
        assert metrics["test_accuracy"] > (0.8 if name == "on" else 0.5)
        assert list(pd.read_csv(folder / "history.csv")["epoch"]) == [1, 2, 3]
        assert prov["speed"] == {"device": "CPU", "xla": name == "on",
                                 "mixed_precision": "float16" if name == "auto" else "off",
                                 "steps_per_execution": 4, "fp16_allreduce": True}
    # XLA compiled parts of the step on the CPU only when asked ("auto" leaves CPUs alone)
    assert any((tmp_path / "xla-on").glob("*.txt")) and not (tmp_path / "xla-auto").exists()


@pytest.mark.slow
@pytest.mark.parametrize("option,compute", [("on", "float16"), ("bfloat16", "bfloat16")])
def test_mixed_precision_computes_in_its_type_keeps_float32_outputs_and_resumes(tmp_path, option, compute):
    import tensorflow as tf

    proc = run_module("hpccnn.train", "--experiment", "digits_cnn", "--epochs", "2", "--mixed-precision", option,
                      "--results-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_folders(tmp_path)
    assert read_json(folder / "provenance.json")["speed"]["mixed_precision"] == compute
    model = tf.keras.models.load_model(folder / "model.h5")
    assert model.layers[0].dtype_policy.name == f"mixed_{compute}"
    assert model.layers[-1].dtype_policy.name == "float32"  # softmax in float32: float16 overflows
    assert np.isfinite(read_json(folder / "metrics.json")["test_loss"])
    again = run_module("hpccnn.train", "--resume", folder, "--epochs", "3")  # (loss-scaled) optimizer restored
    assert again.returncode == 0, again.stderr[-3000:]
    assert list(pd.read_csv(folder / "history.csv")["epoch"]) == [1, 2, 3]
    assert read_json(folder / "metrics.json")["test_accuracy"] > 0.5


@pytest.mark.mpi
def test_fp16_allreduce_sends_float16_gradients(tmp_path):
    """One step on 2 ranks: with fp16 compression the update differs from float32's by float16
    rounding (about 1e-4 of its size); without it, by float32 rounding only."""
    def step(path, *settings, ranks=2):
        prefix = horovodrun_prefix(ranks) if ranks > 1 else []
        proc = run_to_end([*prefix, sys.executable, "tests/one_step.py", str(path), *settings],
                          env=mpi_env(), cwd=ROOT, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        saved = np.load(path)
        n = len(saved.files) // 2
        return np.concatenate([(saved[f"arr_{i}"] - saved[f"arr_{i + n}"]).ravel() for i in range(n)])

    whole = step(tmp_path / "one.npz", ranks=1)
    plain = step(tmp_path / "fp32.npz")
    half = step(tmp_path / "fp16.npz", "fp16_allreduce=true")
    size = np.abs(whole).max()
    assert np.abs(plain - whole).max() / size < 1e-5
    assert 1e-5 < np.abs(half - whole).max() / size < 3e-3
