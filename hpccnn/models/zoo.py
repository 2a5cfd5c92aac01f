"""The seeds' networks, layer for layer. Input shape and class count come from the dataset.

Every network takes images already scaled to 0..1 by the input pipeline, so seed
001's ``Rescaling(1/255)`` (no parameters) lives there, as for every dataset.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from hpccnn.common.errors import UserError
from hpccnn.models import usermodel


class Conv(NamedTuple):
    filters: int
    kernel: int
    stride: int = 1
    padding: str = "valid"
    batchnorm: bool = False
    pool: tuple[int, int] | None = None  # (size, stride) of a MaxPool2D after the block


def alexnet(input_shape, convs, dense, activation="relu"):
    """The AlexNet family of seeds 000, 003 and 004: conv blocks, then Dense+Dropout(.5) blocks (the output
    layer is ModelSpec's)."""
    from tensorflow import keras
    from tensorflow.keras import layers

    model = keras.Sequential([keras.Input(input_shape)])
    for c in convs:
        model.add(layers.Conv2D(c.filters, c.kernel, strides=c.stride, padding=c.padding, activation=activation))
        if c.batchnorm:
            model.add(layers.BatchNormalization())
        if c.pool:
            model.add(layers.MaxPool2D(pool_size=c.pool[0], strides=c.pool[1]))
    model.add(layers.Flatten())
    for units in dense:
        model.add(layers.Dense(units, activation=activation))
        model.add(layers.Dropout(0.5))
    return model


def small_cnn(input_shape, convs, dense, activation="relu", dropout=()):
    """Seed 001's three CNNs and seed 002's MNIST CNN: 3x3 convs, 2x2 pools, dense head (the output layer is
    ModelSpec's).

    ``convs`` lists filters, with "pool" marking a MaxPool2D(2); ``dropout`` maps a
    position in the stack ("pool", "dense") to the rate that follows it.
    """
    from tensorflow import keras
    from tensorflow.keras import layers

    dropout = dict(dropout)
    model = keras.Sequential([keras.Input(input_shape)])
    for c in convs:
        if c == "pool":
            model.add(layers.MaxPooling2D(2))
            if "pool" in dropout:
                model.add(layers.Dropout(dropout["pool"]))
        else:
            model.add(layers.Conv2D(c, 3, activation=activation))
    model.add(layers.Flatten())
    for units in dense:
        model.add(layers.Dense(units, activation=activation))
        if "dense" in dropout:
            model.add(layers.Dropout(dropout["dense"]))
    return model


@dataclass(frozen=True)
class ModelSpec:
    build: Callable
    kwargs: dict
    seed: str
    input_side: int = 32  # the side of the seed's square input images
    input_channels: int = 3  # the benchmark's images; training takes the dataset's channels
    logits: bool = False  # True where the seed's last layer has no softmax (from_logits=True)

    def __call__(self, input_shape, classes, activation="relu"):
        from tensorflow.keras import layers

        model = self.build(tuple(input_shape), activation=activation, **self.kwargs)
        # one unit per class, float32 under mixed precision; no softmax where the seed's outputs are logits
        model.add(layers.Dense(classes, activation=None if self.logits else "softmax", dtype="float32"))
        return model

    @property
    def input_shape(self) -> tuple:
        """The seed's input: (side, side, channels)."""
        return self.input_side, self.input_side, self.input_channels

    def output_side(self, side: int) -> int:
        """The side of the last convolution block's output for side x side images; 0 when the
        convolutions and pools shrink them to nothing. Arithmetic only: no model is built."""
        def shrink(side, kernel, stride, padding="valid"):
            return -(-side // stride) if padding == "same" else max(0, (side - kernel) // stride + 1)

        for c in self.kwargs["convs"]:
            if isinstance(c, Conv):
                side = shrink(side, c.kernel, c.stride, c.padding)
                side = shrink(side, *c.pool) if c.pool and side else side
            else:  # small_cnn: a 3x3 valid convolution, or "pool" for a 2x2 max pool
                side = shrink(side, 2, 2) if c == "pool" else shrink(side, 3, 1)
            if side <= 0:
                return 0
        return side


_ALEXNET227 = [
    Conv(96, 11, 4, batchnorm=True, pool=(3, 2)),
    Conv(256, 5, 1, "same", batchnorm=True, pool=(3, 2)),
    Conv(384, 3, 1, "same"),
    Conv(384, 3, 1, "same"),
    Conv(256, 3, 1, "same", batchnorm=True, pool=(3, 2)),
]

MODELS = {
    "alexnet_galaxy10": ModelSpec(alexnet, dict(convs=[
        Conv(96, 11, 4, batchnorm=True, pool=(3, 2)),
        Conv(256, 5, 1, "same", batchnorm=True, pool=(3, 2)),
        Conv(384, 3, 1, "same", batchnorm=True),
        Conv(384, 3, 1, "same", batchnorm=True),
        Conv(256, 3, 1, "same", batchnorm=True, pool=(3, 2)),
    ], dense=[4096]), seed="000", input_side=69),
    "cnn_v1": ModelSpec(small_cnn, dict(convs=[16, "pool", 32], dense=[32]), seed="001", logits=True),
    "cnn_v2": ModelSpec(small_cnn, dict(convs=[32, "pool", 64], dense=[64]), seed="001", logits=True),
    "cnn_v3": ModelSpec(small_cnn, dict(convs=[32, "pool", 64, "pool", 64], dense=[64]), seed="001", logits=True),
    "mnist_cnn": ModelSpec(small_cnn, dict(convs=[32, 64, "pool"], dense=[128], dropout={"pool": 0.25, "dense": 0.5}),
                           seed="002", input_side=28, input_channels=1),
    "alexnet64": ModelSpec(alexnet, dict(convs=[
        Conv(128, 11, 4, batchnorm=True, pool=(2, 2)),
        Conv(256, 5, 1, "same", batchnorm=True, pool=(3, 3)),
        Conv(256, 3, 1, "same", batchnorm=True),
        Conv(256, 1, 1, "same", batchnorm=True),
        Conv(256, 1, 1, "same", batchnorm=True, pool=(2, 2)),
    ], dense=[1024, 1024]), seed="003", input_side=64),
    "alexnet227": ModelSpec(alexnet, dict(convs=_ALEXNET227, dense=[4096, 4096]), seed="004", input_side=227),
    "alexnet227_extra_dense": ModelSpec(alexnet, dict(convs=_ALEXNET227, dense=[4096, 4096, 4096]), seed="004",
                                        input_side=227),
}


_USER_MODELS = {}  # (reference, model_args) -> UserModel: the user's module loaded once per process


def get_model(name: str, model_args: str = ""):
    """A built-in ModelSpec, or a UserModel for a reference to the user's code (path/file.py:function or
    package.module:function), which imports it: both build a keras.Model from (input_shape, classes)."""
    if usermodel.is_reference(name):
        key = (name, model_args)
        if key not in _USER_MODELS:
            _USER_MODELS[key] = usermodel.UserModel(name, model_args)
        return _USER_MODELS[key]
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; give {usermodel.FORMS} (built-in: {', '.join(MODELS)})")
    if model_args:
        raise UserError(f"--model-args is for a model of your own (path/file.py:function); the built-in {name} "
                        f"takes none")
    return MODELS[name]


def for_run_folder(exp, folder):
    """The model a run folder's run trains: a built-in, or the user's function from the copy of its file
    that the folder keeps (or as named, where none was kept: an installed library's)."""
    kept, _ = usermodel.kept_source(folder) if usermodel.is_reference(exp.model) else (None, None)
    if kept is None:
        return get_model(exp.model, exp.model_args)
    where, function = usermodel.split_reference(exp.model)
    package = where.rpartition(".")[0] if not where.endswith(".py") else ""
    # the modules the user's file imports: beside it, or (package.module) the package's, from where it sits
    root = Path(kept["file"]).parents[len(where.split(".")) - 1] if package else Path(kept["file"]).parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    copy = Path(folder).resolve() / kept["copy"]
    if not package:
        return get_model(f"{copy}:{function}", exp.model_args)
    module = usermodel.load_module(str(copy), package)  # its relative imports: the package's modules
    if not callable(getattr(module, function, None)):
        raise UserError(f"--model {exp.model}: the run folder's copy {copy} has no function {function!r}")
    return usermodel.UserModel(exp.model, exp.model_args, function=getattr(module, function), source=copy)


def check_name(name: str, model_args: str = "") -> None:
    """A UserError unless name is a built-in model or a well-formed reference to the user's code with
    well-formed --model-args; nothing is imported (a resumed run builds from its own copy)."""
    if usermodel.is_reference(name):
        usermodel.split_reference(name)
        usermodel.parse_args(model_args)
    else:
        get_model(name, model_args)
