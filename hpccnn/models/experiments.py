"""Experiments are data: one frozen dataclass per run, the seeds' settings as named defaults."""

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass

from hpccnn.common.errors import UserError
from hpccnn.data.builtin import DATASETS, parse_shape
from hpccnn.data.datasets import check_dataset
from hpccnn.models.zoo import MODELS, check_name


@dataclass(frozen=True)
class Experiment:
    name: str
    model: str  # a built-in name, or the user's own: path/to/file.py:function or package.module:function
    dataset: str
    model_args: str = ""  # the user's model function's own keyword arguments: key=value,... (Python literals)
    image_size: int = 0  # square side the images are resized to; 0 keeps the dataset's own size
    activation: str = "relu"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 32  # global: split evenly between the ranks unless batch_per_rank
    batch_per_rank: bool = False  # batch_size is per rank, so the global batch grows with the ranks
    scale_lr: bool = False  # multiply learning_rate by the world size (linear scaling rule)
    warmup_epochs: int = 0  # ramp the learning rate up from learning_rate/size over these epochs
    epochs: int = 10
    validation: str = "split"  # "split": val_fraction of the training set; "test": the test set
    val_fraction: float = 0.2
    test_fraction: float = 0.2  # for data sets without their own test set (galaxy10, digits)
    reduce_lr_monitor: str = ""  # ReduceLROnPlateau on this metric when set (seed 000)
    reduce_lr_factor: float = 0.1
    reduce_lr_patience: int = 1
    reduce_lr_min_delta: float = 1e-4
    seed: int = 0
    # speed, not the model (python -m hpccnn.bench --variants measures them): "auto" is on with a
    # GPU and off on CPUs, where what XLA gains depends on the CPU (README, Performance)
    xla: str = "auto"  # XLA auto-clustering of the training step
    # on: float16 compute with float32 weights (Keras mixed_float16); bfloat16: Keras mixed_bfloat16,
    # for CPUs with AVX-512 BF16 or AMX (never chosen by auto)
    mixed_precision: str = "auto"
    # training steps per call into TensorFlow's graph: 8 saves Keras' per-step Python work, which
    # counts most for models with short steps (README, Performance)
    steps_per_execution: int = 8
    fp16_allreduce: bool = False  # Horovod sends gradients as float16: half the bytes, some precision lost
    steps_per_epoch: int = 0  # at most this many training steps (and validation batches) per epoch; 0: the whole shard
    # the ranks of a node share one copy of the data set (an MPI shared-memory window, hpccnn.training.shared); off by
    # default until a hang at exit is understood: README, Memory per rank
    share_data: bool = True
    synthetic_size: int = 2048  # --dataset synthetic: this many random images and labels
    synthetic_shape: str = "32x32x3"  # of this height x width x channels
    # --dataset PATH, the user's own data (hpccnn.data.userdata)
    channels: int = 0  # an image folder's images converted to 1 or 3 channels; 0: the majority's
    skip_bad_images: bool = False  # train without an image folder's unreadable files instead of refusing
    hdf5_images: str = ""  # an HDF5 file's datasets; empty: images and ans (Galaxy10's), or labels, or x and y
    hdf5_labels: str = ""
    nonfinite: str = ""  # a number replacing NaN and infinite pixels; empty: such images are refused
    pixel_max: float = 0.0  # the value of a white pixel; 0: from the dtype or the values (0..1 or 0..255)
    # a staged pack held in memory or streamed from its shards (hpccnn.training.stream); auto: streamed when its images
    # take more than half the node's memory
    input: str = "auto"
    reported: str = ""  # the figure the seed reports for this experiment
    description: str = ""


EXPERIMENTS = {e.name: e for e in [
    Experiment("digits_cnn", "mnist_cnn", "digits", epochs=15, batch_size=32, learning_rate=1e-3,
               description="seed 002's MNIST CNN on scikit-learn's 8x8 digits: the offline demo"),
    Experiment("galaxy10_alexnet", "alexnet_galaxy10", "galaxy10", optimizer="adam", learning_rate=1e-3,
               batch_size=32, epochs=10, reduce_lr_monitor="accuracy", reduce_lr_factor=0.001,
               reduce_lr_patience=1, reduce_lr_min_delta=0.01, reported="val accuracy 0.7513",
               description="seed 000: AlexNet with BatchNorm on Galaxy10 SDSS 69x69"),
    Experiment("cifar_cnn_v1", "cnn_v1", "cifar10", optimizer="sgd", learning_rate=0.01, epochs=20,
               reported="test accuracy 0.60", description="seed 001: small CNN v1 on CIFAR-10"),
    Experiment("cifar_cnn_v2", "cnn_v2", "cifar10", optimizer="sgd", learning_rate=0.01, epochs=20,
               reported="test accuracy 0.63", description="seed 001: small CNN v2 on CIFAR-10"),
    Experiment("cifar_cnn_v3", "cnn_v3", "cifar10", optimizer="sgd", learning_rate=0.01, epochs=20,
               reported="test accuracy 0.67", description="seed 001: small CNN v3 on CIFAR-10"),
    Experiment("mnist_cnn", "mnist_cnn", "mnist", optimizer="adadelta", learning_rate=1.0, batch_size=128,
               epochs=12, validation="test", reported="test accuracy 0.991",
               description="seed 002: Keras' MNIST CNN with Adadelta"),
    Experiment("fashion_mnist_cnn", "mnist_cnn", "fashion_mnist", optimizer="adadelta", learning_rate=1.0,
               batch_size=128, epochs=12, validation="test",
               reported="test accuracy 0.916 (Fashion-MNIST benchmark: 2 Conv+pooling, TensorFlow's tutorial)",
               description="seed 002's MNIST CNN and recipe on Zalando's Fashion-MNIST (Debian's package)"),
    Experiment("cifar_alexnet64", "alexnet64", "cifar10", image_size=64, optimizer="sgd", learning_rate=1e-3,
               batch_size=32, epochs=50, validation="test", reported="test accuracy 0.708",
               description="seed 003: AlexNet variant on CIFAR-10 resized to 64x64"),
    Experiment("cifar_alexnet227", "alexnet227", "cifar10", image_size=227, optimizer="adam", learning_rate=1e-4,
               batch_size=64, epochs=10, reported="best: lr 1e-4 with 5 epochs (curves only)",
               description="seed 004: classic AlexNet on CIFAR-10 resized to 227x227"),
    Experiment("cifar_alexnet227_extra_dense", "alexnet227_extra_dense", "cifar10", image_size=227,
               optimizer="adam", learning_rate=1e-4, batch_size=64, epochs=10,
               reported="(curves only)", description="seed 004: AlexNet with one extra Dense4096 block"),
]}

_SETTABLE = [f for f in dataclasses.fields(Experiment) if f.name not in ("name", "reported", "description")]
SETTABLE = {f.name: f for f in _SETTABLE}
_TYPES = typing.get_type_hints(Experiment)
OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adadelta": "Adadelta", "rmsprop": "RMSprop"}  # Keras' class names
CHOICES = {
    "activation": ("relu", "sigmoid", "tanh", "elu"),
    "optimizer": tuple(OPTIMIZERS),
    "validation": ("split", "test"),
    "xla": ("auto", "on", "off"),
    "mixed_precision": ("auto", "on", "off", "bfloat16"),
    "input": ("auto", "memory", "stream"),
}
# One line of meaning per setting, for --help (its choices and default are added from the data).
MEANING = {
    "model": "the network: your own function that returns a keras.Model (path/to/file.py:function or "
             "package.module:function), or a built-in",
    "model_args": "your model function's own keyword arguments, KEY=VALUE,... with Python literals as values "
                  "(weights=None,alpha=0.35)",
    "dataset": "a built-in data set (all but digits and synthetic are staged first: python -m hpccnn.stage), or "
               "your own: a folder of images in class subfolders, an .npz or an HDF5 file",
    "image_size": "side in pixels the images are resized to; 0 keeps the data set's own",
    "activation": "activation of the hidden layers",
    "optimizer": "the optimizer (Keras' own, its gradients averaged by Horovod)",
    "learning_rate": "the optimizer's learning rate: a positive, finite number",
    "batch_size": "images per step, all ranks together (split between them unless --batch-per-rank true)",
    "batch_per_rank": "--batch-size is per rank, so the global batch grows with the ranks",
    "scale_lr": "multiply the learning rate by the number of ranks (linear scaling rule)",
    "warmup_epochs": "ramp the learning rate up from its share per rank over this many epochs",
    "epochs": "epochs to train (with --resume: train on to this many)",
    "validation": "split: validate on --val-fraction of the training images; test: on the test set",
    "val_fraction": "share of the training images held out for validation, between 0 and 1",
    "test_fraction": "share held out as the test set, for data sets without one (galaxy10, digits)",
    "reduce_lr_monitor": "ReduceLROnPlateau watches this metric (accuracy, loss, val_accuracy, val_loss); empty: off",
    "reduce_lr_factor": "ReduceLROnPlateau multiplies the learning rate by this",
    "reduce_lr_patience": "epochs without improvement before ReduceLROnPlateau acts",
    "reduce_lr_min_delta": "the least change ReduceLROnPlateau counts as an improvement",
    "seed": "seeds the splits, the shuffles, the initial weights and dropout",
    "xla": "XLA auto-clustering of the training step; auto: on with a GPU, off on CPUs",
    "mixed_precision": "on: float16 compute, bfloat16: bfloat16 compute, both with float32 weights; "
                       "auto: float16 with a GPU, float32 on CPUs",
    "steps_per_execution": "training steps per call into TensorFlow's graph",
    "fp16_allreduce": "Horovod sends the gradients as float16: half the bytes, some precision lost",
    "steps_per_epoch": "at most this many training steps, and validation batches, per rank per epoch; 0: the whole shard",
    "share_data": "the ranks of a node share one copy of the data set in MPI shared memory; false: each loads its own",
    "synthetic_size": "with --dataset synthetic: how many random images (and labels) it has, all splits together",
    "synthetic_shape": "with --dataset synthetic: the images' HEIGHTxWIDTHxCHANNELS, such as 69x69x3",
    "channels": "with --dataset FOLDER: convert the images to 1 or 3 channels; 0: to the majority's",
    "skip_bad_images": "with --dataset FOLDER: train without its unreadable files (listed) instead of refusing",
    "hdf5_images": "with --dataset FILE.h5: its images dataset; empty: 'images' (or 'x')",
    "hdf5_labels": "with --dataset FILE.h5: its labels dataset; empty: 'ans' or 'labels' (or 'y')",
    "nonfinite": "with --dataset FILE: replace NaN and infinite pixels by this number; empty: refuse such images",
    "pixel_max": "with --dataset FILE: the value of a white pixel; 0: 255 for uint8, else 1 or 255 by the values",
    "input": "a staged pack held in memory, or streamed from its shards by each rank (data larger than memory); "
             "auto streams it when its images take more than half the node's memory",
}


def flag(setting: str) -> str:
    """A setting's command-line option: learning_rate is --learning-rate."""
    return "--" + setting.replace("_", "-")


def parse_value(key: str, text: str):
    """A command-line string as the type of Experiment.<key>, or a UserError naming the problem."""
    if key not in SETTABLE:
        raise UserError(f"unknown setting {key!r}; valid settings: {', '.join(SETTABLE)}")
    kind = _TYPES[key]
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            value = text.lower() in ("true", "1", "yes")
        else:
            value = kind(text)
    except ValueError:
        raise UserError(f"{flag(key)} must be {kind.__name__}, got {text!r}") from None
    if kind is float and not math.isfinite(value):  # float() takes "inf", "nan" and 1e999
        raise UserError(f"{flag(key)} must be a finite number, got {text!r}")
    return value


def check_type(key: str, value):
    """A setting's value given as data (a TOML file, hpccnn.fit's keywords) checked against its type, as
    parse_value checks a command line's text: an int where an int is wanted, a float or an int where a
    float is, a string, a boolean. Returns the value (a float as float); a UserError otherwise."""
    if key not in SETTABLE:
        raise UserError(f"unknown setting {key!r}; valid settings: {', '.join(SETTABLE)}")
    kind = _TYPES[key]
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        raise UserError(f"{key} must be {kind.__name__} (as {flag(key)}), got {value!r}")
    return float(value) if kind is float else value


def parse_assignment(spec: str, option: str, form: str = "SETTING=VALUE") -> tuple:
    """(setting, value text) from a SETTING=VALUE command-line item, or a UserError naming option."""
    key, sep, text = spec.partition("=")
    key = key.strip().lstrip("-").replace("-", "_")
    if not sep or not key or not text:
        raise UserError(f"{option} wants {form}, got {spec!r}")
    return key, text


def choices(key: str) -> tuple:
    """The values a setting can take, where they can be listed (empty otherwise)."""
    if _TYPES[key] is bool:
        return ("true", "false")
    return {"model": tuple(MODELS), "dataset": tuple(DATASETS)}.get(key, CHOICES.get(key, ()))


def _shown(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value != "" else "empty"


def _metavar(key: str) -> str:
    listed = choices(key)
    if 0 < len(listed) <= 5:
        return "{" + ",".join(listed) + "}"
    if key == "synthetic_shape":
        return "HxWxC"
    if key == "model_args":
        return "KEY=VALUE,..."
    if key in ("hdf5_images", "hdf5_labels"):
        return "NAME"
    if key == "nonfinite":
        return "NUMBER"
    return "NAME" if listed else "METRIC" if key == "reduce_lr_monitor" else _TYPES[key].__name__.upper()


def setting_help(key: str, experiment: str = "digits_cnn") -> str:
    """--help's text for a setting: its meaning, its choices (where the metavar can't show them) and
    its default: the one value every experiment has, or the experiment's own, with an example."""
    values = {getattr(e, key) for e in EXPERIMENTS.values()}
    if len(values) == 1:
        default = f"default: {_shown(values.pop())}"
    else:
        default = f"default: the experiment's ({experiment}: {_shown(getattr(EXPERIMENTS[experiment], key))})"
    listed = "" if _metavar(key).startswith("{") or not choices(key) else f"; one of {', '.join(choices(key))}"
    return f"{MEANING[key]}{listed}; {default}"


def add_setting_options(parser) -> None:
    """--<setting> VALUE for every settable Experiment field (typed later, by overrides()), with help.

    Unset options are absent from the parsed arguments (SUPPRESS), which keeps argparse from adding
    a "(default: None)" to help texts that state the experiment's own default.
    """
    for name in SETTABLE:
        parser.add_argument(flag(name), dest=name, default=argparse.SUPPRESS,
                            metavar=_metavar(name), help=setting_help(name))


def overrides(args) -> dict:
    """The settings given on a command line built with add_setting_options, typed and checked."""
    given = {k: getattr(args, k, None) for k in SETTABLE}
    return {k: parse_value(k, v) for k, v in given.items() if v is not None}


def with_overrides(exp: Experiment, overrides: dict) -> Experiment:
    """exp with overrides applied (values already typed) and checked."""
    for key in overrides:
        if key not in SETTABLE:
            raise UserError(f"unknown setting {key!r}; valid settings: {', '.join(SETTABLE)}")
    exp = dataclasses.replace(exp, **overrides)
    validate(exp)
    return exp


def validate(exp: Experiment) -> None:
    check_name(exp.model, exp.model_args)
    check_dataset(exp.dataset)
    for key, allowed in CHOICES.items():
        if getattr(exp, key) not in allowed:
            raise UserError(f"{flag(key)} must be one of {', '.join(allowed)}, got {getattr(exp, key)!r}")
    for key in ("batch_size", "epochs", "steps_per_execution", "synthetic_size"):
        if getattr(exp, key) <= 0:
            raise UserError(f"{flag(key)} must be a positive integer, got {getattr(exp, key)}")
    if exp.steps_per_epoch < 0:
        raise UserError(f"--steps-per-epoch must not be negative (0: the whole shard), got {exp.steps_per_epoch}")
    parse_shape(exp.synthetic_shape)
    for key in SETTABLE:  # an experiment from a config.json or a grid never went through parse_value
        if _TYPES[key] is float and not math.isfinite(getattr(exp, key)):
            raise UserError(f"{flag(key)} must be a finite number, got {getattr(exp, key)}")
    if not exp.learning_rate > 0:
        raise UserError(f"--learning-rate must be positive, got {exp.learning_rate}")
    if exp.channels not in (0, 1, 3) or exp.pixel_max < 0:
        raise UserError(f"--channels must be 0, 1 or 3 and --pixel-max not negative, got {exp.channels} and "
                        f"{exp.pixel_max}")
    if exp.nonfinite:
        try:
            if not math.isfinite(float(exp.nonfinite)):
                raise ValueError
        except ValueError:
            raise UserError(f"--nonfinite must be a finite number, got {exp.nonfinite!r}") from None
    if exp.image_size < 0 or exp.warmup_epochs < 0:
        raise UserError("--image-size and --warmup-epochs must not be negative")
    for key in ("val_fraction", "test_fraction"):
        if not 0 < getattr(exp, key) < 1:
            raise UserError(f"{flag(key)} must be between 0 and 1, got {getattr(exp, key)}")
