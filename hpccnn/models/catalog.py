"""Experiments and grids by name: the built-in ones (hpccnn.models.experiments, hpccnn.models.grids), else the
user's own (hpccnn.models.userconfig); and a grid's points resolved to experiments, each validated."""

from pathlib import Path

from hpccnn.common.errors import UserError
from hpccnn.data import datasets
from hpccnn.models import userconfig
from hpccnn.models.experiments import EXPERIMENTS, Experiment, flag, with_overrides
from hpccnn.models.grids import GRIDS, Grid, label
from hpccnn.models.usermodel import absolute, is_reference


def get_experiment(name: str) -> Experiment:
    """A built-in experiment, or one of the user's (hpccnn.models.userconfig)."""
    return userconfig.lookup("experiment", name, EXPERIMENTS)


def get_grid(name: str) -> Grid:
    """A built-in grid, or one of the user's (hpccnn.models.userconfig)."""
    return userconfig.lookup("grid", name, GRIDS)


def resolve(grid: Grid, overrides: dict, drawn=()) -> list:
    """[(label, settings, Experiment)] for every point, each one validated before anything is submitted.

    drawn: settings drawn at random (hpccnn.models.grids.draw); each draw is crossed with every point of the
    grid."""
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
            settings = {**settings, "dataset": datasets.resolve(settings["dataset"])}
        exp = with_overrides(base, settings)
        name = label(settings, keys) if keys else exp.name
        resolved.append((f"{index:02d}_{name}", settings, exp))
    return resolved
