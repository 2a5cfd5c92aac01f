"""python -m hpccnn.grids GRID --task N: one array task's point of a grid, read from SLURM's array task id.

The grids themselves are data (hpccnn.models.grids); this is the command slurm/hpccnn_job.sh (which
slurm/grid_array.sbatch sources) runs in each array task. It also writes the grid folder's grid.json.
"""

import datetime
import os
from pathlib import Path

from hpccnn.common import slurm
from hpccnn.common.errors import Parser, UserError, cli
from hpccnn.common.files import write_json
from hpccnn.launching.record import grid_record
from hpccnn.models import userconfig
from hpccnn.models.experiments import add_setting_options, overrides
from hpccnn.models.catalog import get_grid, resolve
from hpccnn.models.grids import train_args


def array_point(argv=None) -> int:
    """python -m hpccnn.grids GRID --task N [settings]: hpccnn.train's options for one array task.

    Used by slurm/grid_array.sbatch: prints one option per line, and the first task to run
    writes the grid folder's grid.json so that ``python -m hpccnn.submit --collect`` can sum it up.
    """
    p = Parser(prog="python -m hpccnn.grids", description=array_point.__doc__.split("\n")[0])
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


def main(argv=None):
    return cli(array_point)(argv)
