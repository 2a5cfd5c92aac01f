"""The user's own model (--model file.py:function or package.module:function, --model-args) and the user's
own experiments and grids (hpccnn.toml): loaded, checked, and every bad input one line (a UserError)."""

import os
import sys
from pathlib import Path

import pytest

from conftest import ROOT, refusal, train_refusal
from usermodels import write_mynets


@pytest.fixture
def mynets(tmp_path, monkeypatch):
    """The user's model file in a folder of their own (outside the repository), which is the current one."""
    folder = tmp_path / "project"
    path = write_mynets(folder)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("HPCCNN_CONFIG", raising=False)
    return path


def test_model_args_are_python_literals_or_bare_words():
    from hpccnn.models.usermodel import format_args, parse_args

    args = parse_args("weights=None,alpha=0.35,widths=[16, 32],name='a,b',flag=True,pooling=avg")
    assert args == {"weights": None, "alpha": 0.35, "widths": [16, 32], "name": "a,b", "flag": True,
                    "pooling": "avg"}
    assert parse_args(format_args(args)) == args  # TOML's tables go through the same text


@pytest.mark.parametrize("text, message", [
    ("alpha=0.35x", "'0.35x' is not a Python literal"),
    ("alpha", "--model-args wants key=value"),
    ("alpha=1,alpha=2", "gives 'alpha' twice"),
    ("widths=[1,", "is not a Python literal"),
])
def test_model_args_that_are_not_literals_are_refused(text, message):
    from hpccnn.common.errors import UserError
    from hpccnn.models.usermodel import parse_args

    with pytest.raises(UserError) as err:
        parse_args(text)
    assert message in str(err.value)


def test_a_functional_model_with_a_residual_and_a_layer_of_the_users_own_is_built_from_a_file(mynets):
    from hpccnn.models.zoo import get_model

    spec = get_model(f"{mynets}:small_resnet", "width=4")
    model = spec((8, 8, 1), 10, activation="tanh")
    assert model.output_shape == (None, 10)
    assert any(type(layer).__name__ == "Scale" for layer in model.layers)
    assert any(type(layer).__name__ == "Add" for layer in model.layers)
    assert model.layers[1].filters == 4 and model.layers[1].activation.__name__ == "tanh"  # both reached it
    assert spec.logits is True  # its last Dense has no softmax
    assert spec.source == mynets  # the user's file, to be kept in the run folder


def test_only_the_arguments_a_function_declares_are_given(mynets):
    from hpccnn.models.zoo import get_model

    sequential = get_model("mynets:sequential")  # a module, imported from the current folder
    model = sequential((8, 8, 1), 7, activation="elu")  # num_classes, and no activation: it declares none
    assert model.output_shape == (None, 7) and sequential.logits is False  # softmax: probabilities
    subclassed = get_model(f"{mynets.name}:subclassed")  # a relative path; a subclassed model
    assert subclassed((8, 8, 1), 10)(__import__("numpy").zeros((1, 8, 8, 1))).shape == (1, 10)


def test_keras_applications_is_a_module_reference_whose_source_is_not_copied():
    from hpccnn.models.zoo import get_model

    spec = get_model("keras.applications.mobilenet_v2:MobileNetV2", "weights=None,alpha=0.35")
    assert spec.source is None  # an installed library's file is not the user's
    model = spec((32, 32, 3), 10)
    assert model.output_shape == (None, 10) and spec.logits is False  # its classifier's softmax


@pytest.mark.parametrize("model, args, message", [
    ("nowhere.py:f", "", "project/nowhere.py not found; give the path of your .py file"),
    ("no_such_module:f", "", "module 'no_such_module' not found in"),
    ("mynets.py:missing", "", "mynets.py has no 'missing'; its functions: "),
    ("mynets.py:NOT_CALLABLE", "", "'NOT_CALLABLE' is a int, not a function"),
    ("mynets.py:small_resnet", "depth=3", "takes no argument 'depth'; it takes: input_shape, classes, width"),
    ("mynets.py:small_resnet", "width=8x", "'8x' is not a Python literal"),
    ("mynets.py:small_resnet", "classes=3", "hpccnn passes classes itself"),
    ("no/such:thing", "", "is neither a module name"),
    ("alexnet9", "", "give a built-in name, package.module:function"),
    ("cnn_v3", "width=3", "--model-args is for a model of your own"),
])
def test_each_bad_model_reference_is_one_line(mynets, model, args, message):
    argv = ["--model", model, "--dataset", "digits", *(["--model-args", args] if args else [])]
    assert message in train_refusal(*argv)


@pytest.mark.parametrize("function, message", [
    ("not_a_model", "returned a str, not a keras.Model"),
    ("wrong_output", "has shape (2, 3), not (2, 10); its last layer needs one unit per class"),
])
def test_what_a_model_function_returns_is_checked(mynets, function, message):
    from hpccnn.common.errors import UserError
    from hpccnn.models.zoo import get_model

    with pytest.raises(UserError) as err:
        get_model(f"mynets.py:{function}")((8, 8, 1), 10)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_exception_in_the_users_function_shows_their_traceback_not_hpccnns(mynets):
    from hpccnn.common.errors import UserCodeError
    from hpccnn.models.zoo import get_model

    with pytest.raises(UserCodeError) as err:
        get_model("mynets.py:broken")((8, 8, 1), 10)
    text = str(err.value)
    assert text.startswith("Traceback (most recent call last):")
    assert f'File "{mynets}", line' in text and 'return widths["wide"]' in text and "KeyError: 'wide'" in text
    assert "hpccnn/" not in text.split("hpccnn: error:")[0]  # the user's frames only
    assert text.splitlines()[-1].startswith("hpccnn: error: ") and "your code" in text.splitlines()[-1]


def test_a_run_of_a_users_model_needs_a_dataset_and_is_named_after_the_function(mynets):
    from hpccnn.training import train

    assert "--model mynets.py:small_resnet needs --dataset" in train_refusal("--model", "mynets.py:small_resnet")
    _, exp = train.parse(["--model", "mynets.py:small_resnet", "--dataset", "digits", "--epochs", "2"])
    assert exp.name == "small_resnet" and exp.model == f"{mynets}:small_resnet" and exp.epochs == 2  # absolute


TOML = '''
[experiments.resnet_digits]
model = "mynets.py:small_resnet"
dataset = "digits"
epochs = 2
learning_rate = 3e-3
model_args = { width = 4 }
description = "my residual net"

[grids.resnet_widths]
experiment = "resnet_digits"
sweep = { model_args = ["width=4", "width=6"], optimizer = ["sgd", "adam"] }
fixed = { epochs = 1 }
linked = { optimizer = { sgd = { learning_rate = 0.05 } } }
'''


def write_toml(folder: Path, text=TOML) -> Path:
    (folder / "hpccnn.toml").write_text(text)
    return folder / "hpccnn.toml"


def test_experiments_and_grids_of_the_users_file_are_read_like_the_seeds(mynets):
    from hpccnn.models.catalog import get_experiment, get_grid, resolve

    write_toml(mynets.parent)
    exp = get_experiment("resnet_digits")
    assert exp.model == f"{mynets}:small_resnet"  # relative to the file's folder, made absolute
    assert (exp.epochs, exp.learning_rate, exp.model_args, exp.description) == (2, 3e-3, "width=4", "my residual net")
    points = resolve(get_grid("resnet_widths"), {})
    assert [(p[1]["model_args"], p[1]["optimizer"], p[2].learning_rate, p[2].epochs) for p in points] == [
        ("width=4", "sgd", 0.05, 1), ("width=4", "adam", 3e-3, 1), ("width=6", "sgd", 0.05, 1),
        ("width=6", "adam", 3e-3, 1)]


def test_list_shows_the_users_entries_beside_the_seeds_marked_as_theirs(mynets, capsys):
    from hpccnn.launching import submit
    from hpccnn.training import train

    toml = write_toml(mynets.parent)
    train.main.__wrapped__(["--list"])
    submit.main.__wrapped__(["--list"])
    out = capsys.readouterr().out
    assert "digits_cnn" in out and "cifar_hparams" in out
    mine = [line for line in out.splitlines() if line.startswith(("resnet_digits", "resnet_widths"))]
    assert len(mine) == 2 and all(f"yours ({toml})" in line for line in mine), out
    assert "  4 points" in mine[1]


def test_the_file_can_be_named_by_option_or_environment(mynets, tmp_path, monkeypatch):
    from hpccnn.training import train

    elsewhere = tmp_path / "configs"
    elsewhere.mkdir()
    write_toml(elsewhere, TOML.replace("mynets.py", str(mynets)))
    _, exp = train.parse(["--config", str(elsewhere / "hpccnn.toml"), "--experiment", "resnet_digits"])
    assert exp.name == "resnet_digits" and os.environ["HPCCNN_CONFIG"] == str(elsewhere / "hpccnn.toml")
    monkeypatch.setenv("HPCCNN_CONFIG", str(tmp_path / "none.toml"))
    assert "HPCCNN_CONFIG=" in train_refusal("--experiment", "resnet_digits")
    assert "--config nowhere.toml: no such file" in train_refusal("--config", "nowhere.toml")


@pytest.mark.parametrize("text, message", [
    ("[experiments.a]\nmodel = 'mynets.py:small_resnet'\ndataset = 'digits'\nepochs = \n",
     "(at line 4, column 10)"),
    ("[experiments.a]\nmodel = 'mynets.py:small_resnet'\ndataset = 'digits'\nlerning_rate = 0.1\n",
     "[experiments.a] unknown setting 'lerning_rate'"),
    ("[experiments.a]\nmodel = 'mynets.py:small_resnet'\ndataset = 'digits'\nepochs = 'five'\n",
     "[experiments.a] epochs must be int (as --epochs), got 'five'"),
    ("[experiments.a]\nmodel = 'mynets.py:small_resnet'\ndataset = 'digits'\nepochs = 0\n",
     "[experiments.a] --epochs must be a positive integer"),
    ("[experiments.a]\nmodel = 'x.py:f'\ndataset = 'digits'\n[experiments.a]\nmodel = 'y.py:f'\n",
     "Cannot declare ('experiments', 'a') twice"),
    ("[experiments.digits_cnn]\nmodel = 'mynets.py:small_resnet'\ndataset = 'digits'\n",
     "[experiments.digits_cnn] has the name of a built-in experiment"),
    ("[grids.cifar_hparams]\nexperiment = 'digits_cnn'\nsweep = { epochs = [1, 2] }\n",
     "[grids.cifar_hparams] has the name of a built-in grid"),
    ("[grids.g]\nexperiment = 'nothing'\nsweep = { epochs = [1, 2] }\n", "experiment = 'nothing' is neither"),
    ("[grids.g]\nexperiment = 'digits_cnn'\nsweep = { epochs = [1, 'x'] }\n",
     "[grids.g] epochs must be int (as --epochs), got 'x'"),
    ("[grids.g]\nexperiment = 'digits_cnn'\nsweeps = { epochs = [1] }\n", "unknown key 'sweeps'"),
    ("[experiment.a]\nmodel = 'x.py:f'\n", "unknown table [experiment]"),
    ("[grids.g]\nexperiment = 'digits_cnn'\nsweep = { epochs = [1] }\nfixed = ['epochs=3']\n",
     "[grids.g] fixed must be a table"),
    ("[grids.g]\nexperiment = 'digits_cnn'\nsweep = { optimizer = ['sgd'] }\nlinked = { optimizer = { sgd = 0.1 } }\n",
     "[grids.g] linked.optimizer: link settings to a swept setting's values"),
])
def test_each_mistake_in_the_users_file_is_one_line_naming_it(mynets, text, message):
    toml = write_toml(mynets.parent, text)
    got = train_refusal("--experiment", "a")
    assert message in got and str(toml) in got, got


def test_submit_and_grids_take_the_users_grid_and_the_jobs_read_the_same_file(mynets, capsys):
    from hpccnn.launching.grid_task import array_point

    toml = write_toml(mynets.parent)
    array_point(["resnet_widths", "--task", "3", "--results-dir", str(mynets.parent / "results")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["--experiment", "resnet_digits"]
    assert lines[lines.index("--config") + 1] == str(toml)
    assert lines[lines.index("--model-args") + 1] == "width=6"
    from hpccnn.launching import submit

    message = refusal(submit.main, "--grid", "nothing", "--dry-run")
    assert "unknown grid 'nothing'" in message and "resnet_widths" in message


def test_a_compiled_user_model_keeps_its_loss_and_metrics_and_gets_horovods_optimizer(mynets):
    import horovod.tensorflow as hvd

    from hpccnn.training import compute, dist
    from hpccnn.models.experiments import Experiment
    from hpccnn.models.zoo import get_model

    hvd.init()  # one rank (not dist.init: TensorFlow may be running already in this process)
    exp = Experiment("c", "mynets.py:compiled", "digits", steps_per_execution=1)
    model, lr = compute.compile_model(exp, dist.World(0, 0, 1, 1, 1), get_model(exp.model), (8, 8, 1), 10)
    assert model.loss == "sparse_categorical_crossentropy" and lr == pytest.approx(3e-3)
    names = [m if isinstance(m, str) else m.name for m in model.compiled_metrics._user_metrics]
    assert names == ["sparse_top_k_categorical_accuracy", "accuracy"]
    assert type(model.optimizer).__module__.startswith("horovod.")  # Horovod's DistributedOptimizer
    assert type(model.optimizer).__name__ == "Adam" and model.optimizer.__class__.__mro__[1].__name__ == "Adam"


def test_a_requeued_job_goes_on_with_its_run_folders_settings_not_the_edited_file(mynets, monkeypatch):
    import dataclasses
    import json

    from hpccnn.training import train
    from hpccnn.models.catalog import get_experiment

    write_toml(mynets.parent)
    run = mynets.parent / "results" / "point"
    run.mkdir(parents=True)
    started = dataclasses.replace(get_experiment("resnet_digits"), model_args="width=4")
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(started)))
    write_toml(mynets.parent, TOML.replace("width = 4", "width = 32"))  # edited after submission
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _, exp = train.parse(["--experiment", "resnet_digits", "--run-dir", str(run), "--epochs", "5"])
    assert exp.model_args == "width=4" and exp.epochs == 5  # the folder's settings; --epochs may grow
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert "already exists" in train_refusal("--experiment", "resnet_digits", "--run-dir", str(run))


def test_non_square_images_and_a_users_schedule_are_built_as_they_are(mynets):
    import horovod.tensorflow as hvd
    import numpy as np
    import tensorflow as tf

    from hpccnn.data import datasets as data
    from hpccnn.training import compute, dist
    from hpccnn.models.experiments import Experiment
    from hpccnn.models.zoo import get_model

    hvd.init()
    world = dist.World(0, 0, 1, 1, 1)
    splits = data.Splits(*(np.zeros((4, 6, 10, 3), np.uint8), np.zeros(4, np.int64)) * 3, ["a", "b"], 1 / 255)
    exp = Experiment("n", "mynets.py:sequential", "x.npz")
    model, _ = compute.build_model(exp, get_model(exp.model), world, splits, None)
    assert model.input_shape == (None, 6, 10, 3)  # height 6, width 10: not a square of either
    (mynets.parent / "sched.py").write_text(
        "from tensorflow import keras\n"
        "def build(input_shape, classes):\n"
        "    m = keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(classes)])\n"
        "    m.compile(keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.5), clipnorm=1.0),\n"
        "              'sparse_categorical_crossentropy', metrics=['acc'])\n"
        "    return m\n")
    exp = Experiment("s", "sched.py:build", "x.npz", scale_lr=True)
    model, lr = compute.compile_model(exp, dist.World(0, 0, 2, 2, 1), get_model(exp.model), (6, 10, 3), 2)
    inner = model.optimizer
    assert isinstance(inner._get_hyper("learning_rate"), tf.keras.optimizers.schedules.ExponentialDecay)
    assert lr == pytest.approx(1e-3) and inner.clipnorm == 1.0  # the schedule as it is; clipping kept
    names = [m if isinstance(m, str) else m.name for m in model.compiled_metrics._user_metrics]
    assert names == ["acc", "accuracy"]  # val_accuracy for the reports and halving
