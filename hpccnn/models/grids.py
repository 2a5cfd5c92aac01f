"""Named hyperparameter grids: an experiment and the settings to sweep, one point per combination.

A grid point is an experiment with a few settings changed; each point becomes one SLURM array
task running ``python -m hpccnn.train`` with those settings as command-line options, so a point
can always be rerun by hand with the command ``python -m hpccnn.submit --dry-run`` prints.
"""

import itertools
import re
from pathlib import Path
from dataclasses import dataclass, field

from hpccnn.common.errors import UserError
from hpccnn.models.experiments import flag, get_experiment, parse_assignment, parse_value, with_overrides
from hpccnn.data import userdata
from hpccnn.models.usermodel import absolute, is_reference


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


def get_grid(name: str) -> Grid:
    """A built-in grid, or one of the user's (hpccnn.models.userconfig)."""
    from hpccnn.models import userconfig

    return userconfig.lookup("grid", name, GRIDS)


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
    import math

    import numpy as np

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


def resolve(grid: Grid, overrides: dict, drawn=()) -> list:
    """[(label, settings, Experiment)] for every point, each one validated before anything is submitted.

    drawn: settings drawn at random (draw()); each draw is crossed with every point of the grid."""
    base = get_experiment(grid.experiment)
    sampled = list(drawn[0]) if drawn else []
    clash = sorted(set(sampled) & (set(grid.axes) | set(overrides)))
    if clash:
        raise UserError(f"{flag(clash[0])} is sampled by --sample; it can't also be swept or set "
                        f"(drop one of the two)")
    keys = [*grid.axes, *sampled]
    resolved = []
    points = [{**point, **d} for point in grid.points(overrides) for d in (drawn or [{}])]
    for index, settings in enumerate(points):
        if is_reference(settings.get("model", "")):  # a path the jobs find from any folder on any node
            settings = {**settings, "model": absolute(settings["model"])}
        if "dataset" in settings and Path(settings["dataset"]).exists():  # (a missing one is named as given)
            settings = {**settings, "dataset": userdata.resolve(settings["dataset"])}
        exp = with_overrides(base, settings)
        name = label(settings, keys) if keys else exp.name
        resolved.append((f"{index:02d}_{name}", settings, exp))
    return resolved


def train_args(experiment: str, settings: dict) -> list:
    """hpccnn.train's command-line options for a point."""
    args = ["--experiment", experiment]
    for key, value in settings.items():
        args += [flag(key), str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def grid_record(grid: Grid, points: list, folder, cluster: str, job_ids=None) -> dict:
    """grid.json: what hpccnn.submit --collect needs to sum a grid up."""
    import datetime

    return {"grid": grid.name, "experiment": grid.experiment, "axes": grid.axes, "cluster": cluster,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "points": [{"label": label, "settings": settings, "run_dir": str(folder / label),
                        **({"job_id": job_ids[i]} if job_ids else {})}
                       for i, (label, settings, _) in enumerate(points)]}


def _array_point(argv=None) -> int:
    """python -m hpccnn.grids GRID --task N [settings]: hpccnn.train's options for one array task.

    Used by slurm/grid_array.sbatch: prints one option per line, and the first task to run
    writes the grid folder's grid.json so that ``python -m hpccnn.submit --collect`` can sum it up.
    """
    import datetime
    import os

    from hpccnn.common import slurm
    from hpccnn.models import userconfig
    from hpccnn.common.errors import Parser
    from hpccnn.models.experiments import add_setting_options, overrides
    from hpccnn.common.files import write_json

    p = Parser(prog="python -m hpccnn.grids", description=_array_point.__doc__.split("\n")[0])
    p.add_argument("grid")
    p.add_argument("--task", type=int, required=True, help="the array task id: which point")
    p.add_argument("--results-dir", default="results")
    add_setting_options(p)
    userconfig.add_option(p)
    args = p.parse_args(argv)
    userconfig.use(args.config)
    grid = get_grid(args.grid)
    points = resolve(grid, overrides(args))
    if not 0 <= args.task < len(points):
        raise UserError(f"array task {args.task} is outside grid {grid.name!r}'s {len(points)} points; "
                        f"submit with --array=0-{len(points) - 1}")
    array_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID") or str(os.getpid())
    day = slurm.submit_date(os.environ.get("SLURM_JOB_ID")) or datetime.date.today()
    folder = Path(args.results_dir).resolve() / day.isoformat() / f"{grid.name}-job{array_id}"
    folder.mkdir(parents=True, exist_ok=True)
    record = grid_record(grid, points, folder, "slurm", job_ids=[f"{array_id}_{i}" for i in range(len(points))])
    write_json(folder / "grid.json", record, replace=False)  # never replaces the one another task wrote
    label, settings, exp = points[args.task]
    yours = userconfig.entries()
    config = ["--config", str(yours.path)] if exp.name in yours.experiments else []
    print("\n".join(train_args(exp.name, settings) + config + ["--run-dir", str(folder / label)]))
    return 0


def main():
    from hpccnn.common.errors import cli

    return cli(_array_point)()


if __name__ == "__main__":
    import sys

    sys.exit(main())
