"""grid.json: a grid folder's record of its points, written when the grid is submitted (or by its first
array task) and read back by --collect, --status and --resubmit."""

import datetime
from pathlib import Path

from hpccnn.common.errors import UserError
from hpccnn.common.files import read_json
from hpccnn.models.grids import Grid


def grid_record(grid: Grid, points: list, folder, cluster: str, job_ids=None) -> dict:
    """grid.json: what hpccnn.submit --collect needs to sum a grid up."""
    return {"grid": grid.name, "experiment": grid.experiment, "axes": grid.axes, "cluster": cluster,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "points": [{"label": label, "settings": settings, "run_dir": str(folder / label),
                        **({"job_id": job_ids[i]} if job_ids else {})}
                       for i, (label, settings, _) in enumerate(points)]}


def read_record(folder) -> dict:
    """A grid folder's grid.json, its points' run folders found beside it (a grid folder copied elsewhere)."""
    folder = Path(folder)
    record = read_json(folder / "grid.json")
    if record is None:
        raise UserError(f"{folder} has no readable grid.json: not a grid folder made by python -m hpccnn.submit")
    for p in record["points"]:
        if (folder / p["label"]).is_dir():
            p["run_dir"] = str(folder / p["label"])
    return record
