"""Named hyperparameter grids: an experiment and the settings to sweep, one point per combination.

A grid point is an experiment with a few settings changed; each point becomes one SLURM array
task running ``python -m hpccnn.train`` with those settings as command-line options, so a point
can always be rerun by hand with the command ``python -m hpccnn.submit --dry-run`` prints.
"""

import itertools
import math
import re
from dataclasses import dataclass, field

import numpy as np

from hpccnn.common.errors import UserError
from hpccnn.models.experiments import flag, parse_assignment, parse_value


@dataclass(frozen=True)
class Grid:
    name: str
    experiment: str
    axes: dict  # setting -> the values it takes, swept in this order (last axis fastest)
    fixed: dict = field(default_factory=dict)  # settings every point shares
    linked: dict = field(default_factory=dict)  # setting -> {its value: settings that go with it}
    description: str = ""

    def points(self, overrides=None) -> list:
        """One dict of settings per point: the grid's fixed settings, the axes' values and the
        settings linked to them (a learning rate per optimizer, say), then overrides.

        An override of a swept setting is refused: it would make every point the same.
        """
        overrides = dict(overrides or {})
        clash = sorted(set(overrides) & set(self.axes))
        if clash:
            raise UserError(f"{flag(clash[0])} is swept by grid {self.name!r}; "
                            f"it can't also be overridden (drop the option or use --experiment)")
        keys = list(self.axes)
        points = []
        for values in itertools.product(*(self.axes[k] for k in keys)):
            point = {**self.fixed, **dict(zip(keys, values))}
            for key, value in zip(keys, values):  # a swept setting keeps its own values
                point.update({k: v for k, v in self.linked.get(key, {}).get(value, {}).items() if k not in keys})
            points.append({**point, **overrides})
        return points


GRIDS = {g.name: g for g in [
    Grid("cifar_hparams", "cifar_cnn_v3",
         axes={"activation": ["relu", "sigmoid"], "batch_size": [32, 64, 128], "optimizer": ["sgd", "adam"]},
         fixed={"epochs": 10},
         # the seed passed optimizer="sgd"/"adam" to compile: Keras' default learning rate for each
         linked={"optimizer": {"sgd": {"learning_rate": 0.01}, "adam": {"learning_rate": 0.001}}},
         description="seed 001, Table 1: cnn_v3, activation x batch size x optimizer "
                     "(Keras' default learning rates: sgd 0.01, adam 0.001), 10 epochs each"),
    Grid("alexnet227_lr", "cifar_alexnet227", axes={"learning_rate": [1e-3, 1e-4, 5e-5]},
         description="seed 004: classic AlexNet at 227x227, three learning rates"),
]}


def parse_sweep(specs) -> dict:
    """--sweep KEY=V1,V2,... options as {setting: [typed values]}, for ad-hoc grids."""
    axes = {}
    for spec in specs or ():
        key, values = parse_assignment(spec, "--sweep", "SETTING=VALUE1,VALUE2,...")
        if key in axes:
            raise UserError(f"--sweep {key} is given twice; list all its values in one option")
        axes[key] = [parse_value(key, v.strip()) for v in values.split(",")]
    return axes


DISTRIBUTIONS = {  # --sample SETTING=KIND:ARGS
    "loguniform": "loguniform:LOW,HIGH (0 < LOW < HIGH; uniform in log scale)",
    "uniform": "uniform:LOW,HIGH (LOW < HIGH)",
    "choice": "choice:A,B,C (each equally likely)",
}


@dataclass(frozen=True)
class Sample:
    """A setting drawn at random: kind is one of DISTRIBUTIONS; values are (low, high) or the choices."""

    setting: str
    kind: str
    values: tuple


def parse_samples(specs) -> list:
    """--sample SETTING=KIND:ARGS options as Samples, every bound and choice typed and checked."""
    samples = []
    for spec in specs or ():
        key, text = parse_assignment(spec, "--sample", "SETTING=KIND:ARGS")
        kind, sep, args = text.partition(":")
        if kind not in DISTRIBUTIONS or not sep or not args:
            raise UserError(f"--sample {spec!r}: after SETTING= write one of "
                            f"{'; '.join(DISTRIBUTIONS.values())}")
        if key in [s.setting for s in samples]:
            raise UserError(f"--sample {key} is given twice; give each sampled setting once")
        values = tuple(parse_value(key, v.strip()) for v in args.split(","))
        if kind == "choice":
            samples.append(Sample(key, kind, values))
            continue
        kind_type = type(values[0])
        if kind_type not in (int, float):
            raise UserError(f"--sample {key}: {flag(key)} takes {kind_type.__name__} values; use choice:A,B")
        if len(values) != 2 or not values[0] < values[1] or (kind == "loguniform" and values[0] <= 0):
            raise UserError(f"--sample {spec!r} must be {DISTRIBUTIONS[kind]}")
        samples.append(Sample(key, kind, values))
    return samples


def draw(samples, count: int, seed: int) -> list:
    """count dicts of settings drawn from samples, the same for the same seed. Numbers keep 4
    significant digits (readable labels, a value a user can type again); integers are rounded."""
    rng = np.random.default_rng(seed)
    drawn = []
    for _ in range(count):
        point = {}
        for s in samples:
            if s.kind == "choice":
                value = s.values[int(rng.integers(len(s.values)))]
            else:
                low, high = s.values
                x = (math.exp(rng.uniform(math.log(low), math.log(high))) if s.kind == "loguniform"
                     else rng.uniform(low, high))
                value = int(round(x)) if isinstance(low, int) else float(f"{x:.4g}")
                value = min(max(value, low), high)  # rounding must not carry a draw out of its range
            point[s.setting] = value
        drawn.append(point)
    return drawn


def label(settings: dict, keys) -> str:
    """A folder-safe label for a point from its swept values: relu_b32_sgd."""
    parts = []
    for key in keys:
        value = settings[key]
        text = f"b{value}" if key == "batch_size" else f"lr{value:g}" if key == "learning_rate" else str(value)
        parts.append(re.sub(r"[^A-Za-z0-9.+-]", "-", text).strip(".") or "-")  # never '.', '..' or a path
    return "_".join(parts)


def train_args(experiment: str, settings: dict) -> list:
    """hpccnn.train's command-line options for a point."""
    args = ["--experiment", experiment]
    for key, value in settings.items():
        args += [flag(key), str(value).lower() if isinstance(value, bool) else str(value)]
    return args

