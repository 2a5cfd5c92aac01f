"""The user's own experiments and grids, in TOML: ``hpccnn.toml`` in the current folder, or the file
``--config FILE`` (on every command) or ``$HPCCNN_CONFIG`` names. Read with Python's own tomllib.

    [experiments.resnet_digits]
    model = "mynets.py:small_resnet"      # a path is relative to this file's folder
    dataset = "digits"
    epochs = 5
    model_args = { width = 16 }           # or "width=16"

    [grids.resnet_widths]
    experiment = "resnet_digits"
    sweep = { learning_rate = [1e-3, 3e-3], model_args = ["width=8", "width=16"] }
    fixed = { epochs = 3 }
    linked = { optimizer = { sgd = { learning_rate = 0.01 } } }

Every setting is checked as a command-line setting is (its type, then the experiment as a whole); an
unknown setting, a mistyped value, a syntax error (with its line) or a name the seeds already use is one
line naming the file.
"""

import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from hpccnn.common.errors import UserError
from hpccnn.data import datasets
from hpccnn.data.builtin import DATASETS
from hpccnn.models.experiments import EXPERIMENTS, Experiment, check_type, parse_value, with_overrides
from hpccnn.models.grids import GRIDS, Grid
from hpccnn.models.usermodel import absolute, format_args, is_reference

ENV = "HPCCNN_CONFIG"
FILE = "hpccnn.toml"
EXPERIMENT_KEYS = {"model", "dataset", "description"}  # beside the settings (hpccnn.models.experiments.SETTABLE)
GRID_KEYS = {"experiment", "sweep", "fixed", "linked", "description"}


@dataclass(frozen=True)
class Entries:
    """What a user's file defines: experiments and grids by name, and the file itself."""

    path: Path | None
    experiments: dict
    grids: dict


NONE = Entries(None, {}, {})
_LOADED = {}  # (path, modification time) -> Entries


def add_option(parser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help=f"your experiments and grids (TOML; default: ./{FILE} if there, or ${ENV})")


def use(config) -> None:
    """--config FILE: checked, and made this process's and its children's (jobs, horovodrun) file."""
    if config is None:
        return
    path = Path(config).expanduser()
    if not path.is_file():
        raise UserError(f"--config {config}: no such file; give the path of your TOML file")
    os.environ[ENV] = str(path.resolve())


def path() -> Path | None:
    """The user's file: $HPCCNN_CONFIG's (set by --config too), else ./hpccnn.toml, else None."""
    named = os.environ.get(ENV)
    if named:
        if not Path(named).is_file():
            raise UserError(f"{ENV}={named}: no such file; point it at your TOML file or unset it")
        return Path(named).resolve()
    here = Path(FILE)
    return here.resolve() if here.is_file() else None


def entries() -> Entries:
    """The user's experiments and grids (none without a file), read once per version of the file."""
    found = path()
    if found is None:
        return NONE
    key = (found, found.stat().st_mtime_ns)
    if key not in _LOADED:
        _LOADED[key] = load(found)
    return _LOADED[key]


def lookup(kind: str, name: str, built_in: dict):
    """The built-in experiment or grid (kind) of that name, else the user's; a UserError naming both lists."""
    if name in built_in:
        return built_in[name]
    yours = entries()
    mine = getattr(yours, f"{kind}s")
    if name not in mine:
        listed = f"; yours ({yours.path}): {', '.join(mine) or 'none'}" if yours.path else ""
        raise UserError(f"unknown {kind} {name!r}; built in: {', '.join(built_in)}{listed} (see --list)")
    return mine[name]


def load(file: Path) -> Entries:
    try:
        with open(file, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{file}: {err}; fix the TOML there") from None
    except OSError as err:
        raise UserError(f"{file}: can't be read ({err.strerror})") from None
    unknown = sorted(set(doc) - {"experiments", "grids"})
    if unknown:
        raise UserError(f"{file}: unknown table [{unknown[0]}]; the file holds [experiments.NAME] and [grids.NAME]")
    if str(file.parent) not in sys.path:
        sys.path.append(str(file.parent))  # package.module:function references, found beside the file
    experiments = {name: _experiment(file, name, entry) for name, entry in _tables(file, doc, "experiments")}
    entries_so_far = Entries(file, experiments, {})
    grids = {name: _grid(file, name, entry, entries_so_far) for name, entry in _tables(file, doc, "grids")}
    return Entries(file, experiments, grids)


def _tables(file, doc, kind):
    tables = doc.get(kind, {})
    if not isinstance(tables, dict):
        raise UserError(f"{file}: {kind} must be tables, [{kind}.NAME]")
    for name, entry in tables.items():
        if not isinstance(entry, dict):
            raise UserError(f"{file}: {kind}.{name} must be a table, [{kind}.{name}]")
        if not name.replace("-", "_").isidentifier():
            raise UserError(f"{file}: [{kind}.{name}]: a name is letters, digits, _ and - only")
        yield name, entry


def typed(file, where: str, key: str, value):
    """value checked as a command-line setting is (hpccnn.models.experiments.check_type); model_args may be a table.
    A UserError naming the file and the entry otherwise."""
    if key == "nonfinite" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))
    if key == "model_args" and isinstance(value, dict):
        return format_args(value)
    try:
        return check_type(key, value)
    except UserError as err:
        raise UserError(f"{file}: [{where}] {err}") from None


def _resolved(file: Path, key: str, value):
    """A grid's model or dataset value, a path in it relative to the file, as an experiment's is."""
    if key == "model" and is_reference(value):
        return absolute(value, base=file.parent)
    if key == "dataset" and value not in DATASETS:
        return datasets.resolve(value, base=file.parent)
    return value


def _experiment(file: Path, name: str, entry: dict):
    if name in EXPERIMENTS:
        raise UserError(f"{file}: [experiments.{name}] has the name of a built-in experiment; choose another name")
    for key in ("model", "dataset"):
        if not isinstance(entry.get(key), str):
            raise UserError(f"{file}: [experiments.{name}] needs {key} = \"...\"")
    description = entry.get("description", "")
    settings = {k: typed(file, f"experiments.{name}", k, v) for k, v in entry.items() if k not in EXPERIMENT_KEYS}
    model, dataset = entry["model"], entry["dataset"]
    if dataset not in DATASETS:  # the user's own data: a pack's name, or a path relative to this file
        dataset = datasets.resolve(dataset, base=file.parent)
    if is_reference(model):
        try:
            model = absolute(model, base=file.parent)
        except UserError as err:
            raise UserError(f"{file}: [experiments.{name}] {err}") from None
    try:
        return with_overrides(Experiment(name, model, dataset, description=str(description)), settings)
    except UserError as err:
        raise UserError(f"{file}: [experiments.{name}] {err}") from None


def _grid(file: Path, name: str, entry: dict, so_far: Entries):
    where = f"grids.{name}"
    if name in GRIDS:
        raise UserError(f"{file}: [{where}] has the name of a built-in grid; choose another name")
    unknown = sorted(set(entry) - GRID_KEYS)
    if unknown:
        raise UserError(f"{file}: [{where}] has unknown key {unknown[0]!r}; a grid has {', '.join(sorted(GRID_KEYS))}")
    experiment = entry.get("experiment")
    if experiment not in EXPERIMENTS and experiment not in so_far.experiments:
        raise UserError(f"{file}: [{where}] experiment = {experiment!r} is neither one of yours nor built in")
    sweep = entry.get("sweep", {})
    if not isinstance(sweep, dict) or not sweep or not all(isinstance(v, list) and v for v in sweep.values()):
        raise UserError(f"{file}: [{where}] needs sweep = {{ setting = [value, ...], ... }}")
    axes = {key: [_resolved(file, key, typed(file, where, key, v)) for v in values] for key, values in sweep.items()}
    for part in ("fixed", "linked"):
        if not isinstance(entry.get(part, {}), dict):
            raise UserError(f"{file}: [{where}] {part} must be a table, {part} = {{ setting = value, ... }}")
    fixed = {key: _resolved(file, key, typed(file, where, key, v)) for key, v in entry.get("fixed", {}).items()}
    linked = {}
    for key, by_value in entry.get("linked", {}).items():
        if key not in axes or not isinstance(by_value, dict) or not all(isinstance(v, dict) for v in by_value.values()):
            raise UserError(f"{file}: [{where}] linked.{key}: link settings to a swept setting's values, "
                            f"linked = {{ {key} = {{ VALUE = {{ setting = value }} }} }}")
        linked[key] = {parse_value(key, str(value)): {k: typed(file, where, k, v) for k, v in settings.items()}
                       for value, settings in by_value.items()}
    return Grid(name, experiment, axes, fixed, linked, str(entry.get("description", "")))
