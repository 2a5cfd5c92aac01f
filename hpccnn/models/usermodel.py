"""A model from the user's own code: ``--model path/to/file.py:function`` or ``package.module:function``.

The function gets, as keyword arguments, whichever of ``input_shape``, ``classes`` (or ``num_classes``)
and ``activation`` it declares, and the user's own from ``--model-args key=value,...``; it returns a
``keras.Model`` with one output per class, compiled or not. Every problem in what the user gave is one
line (a UserError); an exception raised inside the user's own code is theirs, shown with their frames
(UserCodeError).
"""

import ast
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import re
import sys
import sysconfig
import traceback
from pathlib import Path

import numpy as np

from hpccnn.common.errors import UserCodeError, UserError
from hpccnn.data.base import sha256
from hpccnn.models.layers import Layers

FORMS = "a built-in name, package.module:function (importable from this folder or PYTHONPATH) or path/to/file.py:function"
GIVEN_BY_HPCCNN = {"input_shape": "the data's image shape", "classes": "the data's class count",
                   "num_classes": "the data's class count", "activation": "--activation"}
_BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*$")


def is_reference(name: str) -> bool:
    """Whether a --model value names the user's code (module:function) rather than a built-in model."""
    return ":" in str(name)


def split_reference(ref: str) -> tuple:
    """(module or file, function name) of a reference, or a UserError naming both forms."""
    where, _, function = str(ref).rpartition(":")
    if not where or not function.isidentifier():
        raise UserError(f"--model {ref!r} is not a model: give {FORMS}")
    if not where.endswith(".py") and not all(part.isidentifier() for part in where.split(".")):
        raise UserError(f"--model {ref!r}: {where!r} is neither a module name (package.module) nor a .py file; "
                        f"give {FORMS}")
    return where, function


def absolute(ref: str, base=None) -> str:
    """ref with a file path made absolute (relative to base, or the current folder): what a job on another
    node, started in another folder, can still find. Module references stay as they are."""
    where, function = split_reference(ref)
    if not where.endswith(".py"):
        return ref
    return f"{(Path(base or '.') / Path(where).expanduser()).resolve()}:{function}"


def parse_args(text: str) -> dict:
    """--model-args key=value,... as a dict: each value a Python literal (a number, a quoted string, True,
    False, None, a list or tuple), or a bare word, taken as a string (weights=imagenet)."""
    result = {}
    for item in _top_level_items(str(text or "")):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.isidentifier() or not value:
            raise UserError(f"--model-args wants key=value,..., got {item.strip()!r}")
        if key in result:
            raise UserError(f"--model-args gives {key!r} twice; give each argument once")
        try:
            result[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            if not _BARE_WORD.match(value):
                raise UserError(f"--model-args {key}={value}: {value!r} is not a Python literal (a number, a quoted "
                                f"string, True, False, None, a list); quote a string as {key}='...'") from None
            result[key] = value
    return result


def _top_level_items(text: str) -> list:
    """text split at the commas outside brackets and quotes."""
    items, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item.strip()]


def format_args(args: dict) -> str:
    """The --model-args text of a dict (TOML's tables): parse_args reads it back to the same values."""
    return ",".join(f"{key}={value!r}" for key, value in args.items())


def installed(path: Path) -> bool:
    """Whether a module's file belongs to an installed library or Python itself (not the user's code)."""
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    parts = set(path.parts)
    return "site-packages" in parts or "dist-packages" in parts or any(
        path.is_relative_to(Path(root).resolve()) for root in roots if root)


def user_traceback(err: BaseException) -> str:
    """The traceback of an exception raised in the user's code, without hpccnn's and importlib's frames."""
    here = str(Path(__file__).resolve().parents[1])  # the hpccnn package, every subpackage
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith(here) and "importlib" not in f.filename and "<frozen" not in f.filename]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames),
             *traceback.format_exception_only(type(err), err)]
    return "".join(lines).rstrip()


def _run_user_code(what: str, call):
    try:
        return call()
    except (UserError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:
        raise UserCodeError(f"{user_traceback(err)}\nhpccnn: error: {what} raised {type(err).__name__} "
                            f"(the traceback above is your code's); fix it and run again") from None


def load_module(where: str, package: str = ""):
    """The user's module: a .py file loaded by path (its folder put on sys.path, so it can import its
    neighbours), or a module imported from sys.path (the current folder first, as python -m does).
    package: the file is loaded as a module of that package (a kept copy of package.module: its relative
    imports find the package's other modules)."""
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"--model: file {where} not found; give the path of your .py file (relative to "
                            f"{Path.cwd()} or absolute)")
        name = "hpccnn_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        name = f"{package}.{name}" if package else name
        if name in sys.modules:
            return sys.modules[name]
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # pickle, dataclasses and Keras' registrations find it by this name
        try:
            _run_user_code(f"loading {path}", lambda: spec.loader.exec_module(module))
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        found = importlib.util.find_spec(where)
    except ModuleNotFoundError:
        found = None
    if found is None:
        raise UserError(f"--model: module {where!r} not found in {Path.cwd()} or on PYTHONPATH; run from the folder "
                        f"that holds it, add that folder to PYTHONPATH, or give path/to/file.py:function")
    return _run_user_code(f"importing {where}", lambda: importlib.import_module(where))


def load_function(ref: str):
    """(the callable a reference names, the file to keep a copy of or None for an installed library)."""
    where, name = split_reference(ref)
    module = load_module(where)
    if not hasattr(module, name):
        raise UserError(f"--model {ref}: {where} has no {name!r}; its functions: "
                        f"{', '.join(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith('_')) or 'none'}")
    function = getattr(module, name)
    if not callable(function):
        raise UserError(f"--model {ref}: {name!r} is a {type(function).__name__}, not a function that returns a "
                        f"keras.Model")
    source = Path(module.__file__).resolve() if getattr(module, "__file__", None) else None
    return function, (source if source is not None and not installed(source) else None)


def kept_source(folder) -> tuple:
    """(provenance.json's model_source record of a run folder or None, and "changed" or "gone" where the
    user's original file is no longer what was copied, else None)."""
    try:
        kept = json.loads((Path(folder) / "provenance.json").read_text()).get("model_source")
    except (OSError, ValueError):
        kept = None
    if kept is None:
        return None, None
    original = Path(kept["file"])
    if not original.is_file():
        return kept, "gone"
    return kept, "changed" if sha256(original) != kept["sha256"] else None


class UserModel:
    """A model function of the user's, with the interface of hpccnn.models.zoo.ModelSpec."""

    seed = "yours"
    kwargs: dict = {}
    input_side = 32  # the benchmark's images when nothing else says (--image-size)
    input_channels = 3

    def __init__(self, ref: str, model_args="", function=None, source=None):
        self.ref = ref
        self.args = parse_args(model_args) if isinstance(model_args, str) else dict(model_args)
        if function is None:
            function, source = load_function(ref)
        self.function, self.source = function, source
        self.logits = None  # known once built: whether the outputs are logits rather than probabilities
        self.check_args()

    @property
    def input_shape(self) -> tuple:
        return self.input_side, self.input_side, self.input_channels

    def output_side(self, side: int) -> int:
        return side  # only building tells: the user's function sees the data's own size unless --image-size

    def parameters(self) -> dict:
        try:
            return dict(inspect.signature(self.function).parameters)
        except (TypeError, ValueError):  # a builtin or C callable: take what is given
            return {}

    def check_args(self) -> None:
        params = self.parameters()
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for key in self.args:
            if key in GIVEN_BY_HPCCNN:
                raise UserError(f"--model-args {key}: hpccnn passes {key} itself ({GIVEN_BY_HPCCNN[key]}); "
                                f"leave it out of --model-args")
            if params and key not in params and not takes_any:
                named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
                raise UserError(f"--model-args {key}: {self.ref} takes no argument {key!r}; it takes: "
                                f"{', '.join(named) or 'none'}")

    def given(self, input_shape, classes, activation) -> dict:
        """The keyword arguments the function gets: those of hpccnn's it declares, then the user's."""
        params = self.parameters()
        offered = {"input_shape": tuple(input_shape), "classes": classes, "num_classes": classes,
                   "activation": activation}
        return {**{k: v for k, v in offered.items() if k in params}, **self.args}

    def __call__(self, input_shape, classes, activation="relu"):
        """The user's model, built for input_shape and checked: a keras.Model with classes outputs."""
        import tensorflow as tf

        kwargs = self.given(input_shape, classes, activation)
        model = _run_user_code(f"{self.ref}", lambda: self.function(**kwargs))
        if not isinstance(model, tf.keras.Model):
            raise UserError(f"--model {self.ref} returned a {type(model).__name__}, not a keras.Model; return the "
                            f"model itself (tf.keras.Model, Sequential or a subclass)")
        probe = np.random.default_rng(0).random((2, *input_shape), dtype=np.float32)
        outputs = _run_user_code(f"{self.ref}'s model on a batch of {tuple(input_shape)} images",
                                 lambda: model(probe, training=False))
        outputs = np.asarray(tf.cast(outputs, tf.float32)) if tf.is_tensor(outputs) else outputs
        if not isinstance(outputs, np.ndarray) or outputs.shape != (2, classes):
            shape = getattr(outputs, "shape", type(outputs).__name__)
            raise UserError(f"--model {self.ref}: the model's output for 2 images has shape {tuple(shape)}, not "
                            f"(2, {classes}); its last layer needs one unit per class of the data set ({classes})")
        self.logits = not probabilities(outputs)
        return model

    def layers(self, side: int, channels: int, classes: int):
        """hpccnn.models.layers.Layers of the built model: its parameters and the outputs of its layers."""

        model = self((side, side, channels), classes)
        kept, largest = 0, side * side * channels
        for layer in model.layers:
            try:
                shapes = layer.output_shape
            except (AttributeError, RuntimeError):
                continue
            for shape in shapes if isinstance(shapes, list) else [shapes]:
                if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape[1:]):
                    elements = math.prod(shape[1:])
                    kept, largest = kept + 2 * elements, max(largest, elements)
        return Layers(model.count_params(), kept, largest)


def legacy_optimizer(optimizer):
    """The optimizer a user's model was compiled with, as the Keras 2.15 legacy optimizer Horovod 0.28's
    DistributedOptimizer wraps (the same class and settings), or a UserError where there is none."""
    import tensorflow as tf

    legacy = tf.keras.optimizers.legacy
    if isinstance(optimizer, legacy.Optimizer):
        return optimizer
    kind = getattr(legacy, type(optimizer).__name__, None)
    if kind is None:
        raise UserError(f"your model was compiled with {type(optimizer).__name__}, which Horovod 0.28 can't wrap; "
                        f"compile it with one of SGD, Adam, Adadelta, Adagrad, Adamax, Ftrl, Nadam or RMSprop, "
                        f"or leave it uncompiled and give --optimizer")
    takes = set(inspect.signature(kind.__init__).parameters) | {"clipnorm", "clipvalue", "global_clipnorm"}
    config = {k: v for k, v in optimizer.get_config().items() if k in takes and k != "name" and v is not None}
    if optimizer.get_config().get("weight_decay"):
        raise UserError(f"your model's {type(optimizer).__name__} has weight_decay, which Keras 2.15's legacy "
                        f"optimizers (the ones Horovod 0.28 wraps) don't have; put it in the layers' "
                        f"kernel_regularizer instead")
    return kind.from_config(config)


def metrics_with_accuracy(model) -> list:
    """The metrics a user's model was compiled with, and accuracy where they have none of that name
    (the reports, halving and the status table read it)."""
    compiled = getattr(model, "compiled_metrics", None)
    given = list(getattr(compiled, "_user_metrics", None) or [])
    names = {m if isinstance(m, str) else getattr(m, "name", "") for m in given}
    return given + ([] if "accuracy" in names else ["accuracy"])


def probabilities(outputs) -> bool:
    """Whether a model's outputs are class probabilities (a softmax), not logits."""
    return bool(np.all(outputs >= 0) and np.all(outputs <= 1) and np.allclose(outputs.sum(axis=1), 1, atol=1e-3))


def describe(model, classes: int) -> str:
    """One line about a built model: its parameters and its output (checked to be one unit per class)."""
    return f"{model.count_params():,} parameters, output (None, {classes})"
