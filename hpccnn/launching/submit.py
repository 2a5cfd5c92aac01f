"""python -m hpccnn.submit: a grid (or one experiment) as a SLURM job array through submitit.

Every point of the grid is one array task, and every array task is a Horovod job: SLURM starts
``--ntasks-per-node`` ranks per node with ``srun --mpi=pmix`` and each rank runs hpccnn.train's
code. All points land in one dated grid folder (one run folder per point, submitit's logs in
``submitit/``), and when the grid has ended ``grid.csv`` sums it up, one row per point: written
by ``--wait``, by a small collector job that SLURM starts after the array (afterany), or by hand
with ``python -m hpccnn.submit --collect GRID_FOLDER``.

``--cluster local`` runs the points one after the other on this machine, each under
``horovodrun -np <ranks>``; ``--cluster debug`` runs them inside this process as one rank
(for pdb). Both wait for the grid.

This module is the command and the submission of a new grid; the points' jobs are hpccnn.launching.jobs,
their resources .resources, the halving's rungs .halving, grid.csv and --status .status, --resubmit
.resubmit.
"""

import argparse
import dataclasses
import datetime
import os
import shlex
import shutil
import sys
from pathlib import Path

from hpccnn.common import slurm
from hpccnn.common.errors import Parser, UserError, cli, command_prog
from hpccnn.common.files import read_json
from hpccnn.common.runs import COMPLETED, create_run_folder, run_folder
from hpccnn.data import datasets
from hpccnn.launching import halving
from hpccnn.launching.jobs import TrainPoint, after_submit, run_points
from hpccnn.launching.record import grid_record
from hpccnn.launching.resources import RESOURCES, check_resources, default_layout, sbatch_script, slurm_parameters
from hpccnn.launching.resubmit import resubmit
from hpccnn.launching.status import collect, format_table, show
from hpccnn.models import grids, userconfig, usermodel
from hpccnn.models.catalog import get_experiment, get_grid, resolve
from hpccnn.models.experiments import add_setting_options, flag
from hpccnn.models.experiments import overrides as experiment_overrides
from hpccnn.models.zoo import get_model


def build_parser():
    p = Parser(prog=command_prog("submit"), description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="example: python -m hpccnn.submit --grid cifar_hparams --dry-run\ndocs: docs/slurm.md")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--grid", help=f"a named grid: {', '.join(grids.GRIDS)}, or one of yours (--list)")
    what.add_argument("--experiment", help="one experiment (see python -m hpccnn.train --list)")
    what.add_argument("--collect", metavar="GRID_FOLDER", help="write GRID_FOLDER/grid.csv from its runs and exit")
    what.add_argument("--status", metavar="GRID_FOLDER",
                      help="one row per point: state, epoch k of N, last validation accuracy, time so far and left")
    what.add_argument("--resubmit", metavar="GRID_FOLDER",
                      help="submit again the points that failed or never ran, each resuming from its checkpoint, "
                           "into the same grid folder (with the resources and cluster it was submitted with)")
    what.add_argument("--list", action="store_true", help="print the grids (built in, and yours) and exit")
    userconfig.add_option(p)
    p.add_argument("--sweep", action="append", metavar="SETTING=V1,V2",
                   help="sweep a setting too (repeatable): --sweep learning-rate=1e-3,1e-4")
    p.add_argument("--sample", action="append", metavar="SETTING=KIND:ARGS",
                   help="draw a setting at random (repeatable): learning-rate=loguniform:1e-4,1e-1, "
                        "dropout=uniform:0.1,0.5, optimizer=choice:sgd,adam; needs --samples")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="how many settings to draw for --sample (each crossed with the grid's points)")
    p.add_argument("--sample-seed", type=int, default=0, metavar="SEED",
                   help="the seed the draws come from: the same seed draws the same points [0]")
    p.add_argument("--halving", type=int, default=None, metavar="ETA",
                   help="successive halving: after each rung only the best 1/ETA of the points (by validation "
                        "accuracy) go on, to ETA times the epochs, resuming from their checkpoints")
    p.add_argument("--min-epochs", type=int, default=None, metavar="N",
                   help="epochs of the first rung of --halving [1]")
    p.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm",
                   help="submitit executor: slurm (sbatch), local (this machine, horovodrun), debug (in process)")
    p.add_argument("--dry-run", action="store_true", help="print each job's resources and command; submit nothing")
    p.add_argument("--wait", action="store_true", help="block until every point has ended, then print grid.csv")
    p.add_argument("--results-dir", default="results", help="the grid folder goes to RESULTS_DIR/<date>/")
    p.add_argument("--data-dir", default=None, help="staged data cache on the compute nodes")
    p.add_argument("--no-save-model", action="store_true", help="skip writing each point's model.h5")
    res = p.add_argument_group("resources per point (one array task)")
    for name, (default, text) in RESOURCES.items():
        res.add_argument(flag(name), dest=name, default=default, type=str if name in ("partition", "account") else int,
                         help=text if default is None else f"{text} [{default}]")
    add_setting_options(p.add_argument_group("experiment settings, applied to every point"))
    return p


def list_grids() -> str:
    """The built-in grids, then the user's (marked as theirs, with their file)."""
    yours = userconfig.entries()
    lines = []
    for g in [*grids.GRIDS.values(), *yours.grids.values()]:
        axes = " x ".join(f"{k} {'/'.join(map(str, v))}" for k, v in g.axes.items())
        whose = f"yours ({yours.path})" if g.name in yours.grids else ""
        about = "; ".join(t for t in (whose, g.description) if t)
        lines.append(f"{g.name:16} {len(g.points()):>3} points  {g.experiment}: {axes}  ({about})")
    return "\n".join(lines)


def check_user_models(points, data_dir=None) -> None:
    """Each model of the user's in the grid built once here, on the login node, for its data set's images,
    and said in one line (parameters, output): a model that can't be built, or whose output doesn't match
    the classes, stops the submission with one line instead of failing alike in every array task."""
    seen, facts = set(), {}
    for _, _, exp in points:
        if not usermodel.is_reference(exp.model):
            continue
        key = (exp.dataset, exp.image_size, exp.channels, exp.synthetic_shape)
        if key not in facts:  # an array file is read whole to know it: once per data set
            facts[key] = datasets.image_shape(exp, data_dir), datasets.class_count(exp, data_dir)
        shape, classes = facts[key]
        if (exp.model, exp.model_args, shape) in seen:
            continue
        seen.add((exp.model, exp.model_args, shape))
        model = get_model(exp.model, exp.model_args)(shape, classes, activation=exp.activation)
        print(f"hpccnn: {exp.model}{f' ({exp.model_args})' if exp.model_args else ''} built for the "
              f"{'x'.join(map(str, shape))} images of {exp.dataset}: {usermodel.describe(model, classes)}",
              flush=True)


def plan(args):
    """(name, experiment name, axes, [(label, settings, Experiment)]): everything validated, nothing written."""
    overrides = experiment_overrides(args)
    sweep = grids.parse_sweep(args.sweep)
    samples = grids.parse_samples(args.sample)
    if bool(samples) != (args.samples is not None):
        raise UserError("--sample and --samples N go together: what to draw and how many points")
    if args.samples is not None and args.samples <= 0:
        raise UserError(f"--samples must be a positive integer, got {args.samples}")
    drawn = grids.draw(samples, args.samples, args.sample_seed) if samples else []
    if args.grid:
        base = get_grid(args.grid)
        grid = dataclasses.replace(base, axes={**base.axes, **sweep})
    else:
        get_experiment(args.experiment)
        grid = grids.Grid(args.experiment, args.experiment, sweep)
    return grid, resolve(grid, overrides, drawn)


def new_grid_folder(results_dir, name: str) -> Path:
    try:
        return create_run_folder(Path(results_dir).resolve(), name)
    except OSError as err:
        raise UserError(f"--results-dir {results_dir} is not writable ({err.strerror}); choose another "
                        f"--results-dir") from None


def point_args(args, exp_name, settings, run_dir) -> list:
    extra = ["--run-dir", str(run_dir)]
    yours = userconfig.entries()
    if exp_name in yours.experiments:  # the job reads the same file, wherever it starts
        extra += ["--config", str(yours.path)]
    if args.data_dir:
        extra += ["--data-dir", str(Path(args.data_dir).resolve())]
    if args.no_save_model:
        extra.append("--no-save-model")
    return grids.train_args(exp_name, settings) + extra


def describe(args, grid, points, folder: Path) -> str:
    ranks = args.nodes * args.ntasks_per_node
    lines = [f"hpccnn: {grid.name}: {len(points)} point(s) on --cluster {args.cluster}; grid folder {folder}"]
    if args.cluster == "slurm":
        lines.append(f"each point: {args.nodes} node(s) x {args.ntasks_per_node} rank(s) x {args.cpus_per_task} "
                     f"core(s), {args.gpus_per_node} GPU(s)/node, {args.mem_gb} GB/node, {args.time_min} min, "
                     f"partition {args.partition or '(default)'}; {ranks * len(points) * args.time_min / 60:.1f} "
                     f"rank-hours at most")
    elif args.cluster == "local":
        lines.append(f"each point: horovodrun -np {ranks} on this machine, one point at a time")
    else:
        lines.append("each point: one rank inside this process, one point at a time")
    return "\n".join(lines)


def submit(args) -> int:
    grid, points = plan(args)
    check_user_models(points, args.data_dir)
    default_layout(args, points[0][2])
    check_resources(args)
    ranks = args.nodes * args.ntasks_per_node
    if args.cluster == "slurm":
        check_slurm(args, len(points))
    rungs = halving.check(args.halving, args.min_epochs, [exp.epochs for _, _, exp in points])
    if args.dry_run:
        return dry_run(args, grid, points, rungs)

    folder = new_grid_folder(args.results_dir, grid.name)
    print(describe(args, grid, points, folder), flush=True)
    if rungs:
        print(halving.describe_rungs(args, points, rungs), flush=True)
    try:
        record = new_record(args, grid, points, folder)
        if rungs:
            record["halving"] = {"eta": args.halving, "epochs": rungs, "rungs": []}
            return halving.run_rung(args, record, folder, 0)
        jobs = run_points(args, record, record["points"], folder, ranks, grid.name)
    except Exception:
        if not _anything_ran(folder):  # leave no half-made grid behind, but never a result
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return after_submit(args, folder, jobs)


def check_slurm(args, points: int):
    """On a SLURM login node (unless a dry run), a grid that fits in one job array."""
    if not args.dry_run and not slurm.available():
        raise UserError("sbatch is not on PATH: this is not a SLURM login node; use --cluster local "
                        "to run the grid on this machine")
    limit = slurm.max_array_size() if slurm.available() else None
    if limit is not None and points > limit:
        raise UserError(f"{points} points exceed this cluster's MaxArraySize of {limit}; "
                        f"submit the grid in parts (fewer --sweep values)")


def dry_run(args, grid, points, rungs) -> int:
    """--dry-run: each point's command and, on SLURM, the sbatch script; nothing submitted or written."""
    ranks = args.nodes * args.ntasks_per_node
    folder = run_folder(Path(args.results_dir).resolve(), grid.name, datetime.date.today().isoformat(), "<HHMMSS>")
    print(describe(args, grid, points, folder) + "\n")
    if rungs:
        print(halving.describe_rungs(args, points, rungs) + "\n")
    for index, (label, settings, exp) in enumerate(points):
        given = point_args(args, exp.name, settings, folder / label)
        command = TrainPoint(halving.with_epochs(given, rungs[0]) if rungs else given,
                             "horovodrun" if args.cluster == "local" else "python", ranks).command()
        where = f"array task {index}" if args.cluster == "slurm" else f"point {index}"
        print(f"[{where}] {label}: {shlex.join(command)}")
    if args.cluster == "slurm":
        script = sbatch_script(slurm_parameters(args, grid.name), folder / "submitit", len(points))
        print("\nsbatch script (submitit); every rank then runs the command above for its array task:\n")
        print(script)
    print("hpccnn: dry run: nothing was submitted or written")
    return 0


def _anything_ran(folder: Path) -> bool:
    """Whether a grid folder holds a submitted job or a point's run folder (a later rung's failure to
    submit must not take the earlier rungs' results with it)."""
    record = read_json(folder / "grid.json") or {"points": []}
    return any(p.get("job_id") or (folder / p["label"]).exists() for p in record["points"])


def new_record(args, grid, points, folder: Path) -> dict:
    record = grid_record(grid, points, folder, args.cluster)
    record["command"] = shlex.join([sys.executable, "-m", "hpccnn.submit", *sys.argv[1:]])
    record["workdir"] = os.getcwd()  # where the points import a package.module:function model from
    record["resources"] = {k: getattr(args, k) for k in RESOURCES}
    if args.sample:
        record["sampled"] = {"sample": args.sample, "samples": args.samples, "seed": args.sample_seed}
    for p, (label, settings, exp) in zip(record["points"], points):
        p["train_args"] = point_args(args, exp.name, settings, folder / label)
    return record


@cli
def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    userconfig.use(args.config)
    if args.list:
        print(list_grids())
        return 0
    if args.status:
        print(show(args.status))
        return 0
    if args.resubmit:
        argv = sys.argv[1:] if argv is None else argv
        given = [name for name in RESOURCES if any(a == flag(name) or a.startswith(flag(name) + "=") for a in argv)]
        return resubmit(args, given)
    if args.collect:
        folder = Path(args.collect)
        rows = collect(folder)
        print(format_table(rows))
        print(f"hpccnn: {folder / 'grid.csv'}")
        return 1 if any(r["status"] != COMPLETED for r in rows) else 0
    return submit(args)


if __name__ == "__main__":
    sys.exit(main())
