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
"""

import dataclasses
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

from hpccnn.models import grids
from hpccnn.launching import halving
from hpccnn.common import slurm, tables
from hpccnn.models import userconfig, usermodel
from hpccnn.common.errors import Parser, UserError, cli
from hpccnn.models.experiments import add_setting_options, flag
from hpccnn.models.experiments import overrides as experiment_overrides
from hpccnn.common.files import read_json, write_atomic, write_json
from hpccnn.common.runs import COMPLETED, FAILED, NOT_RUN, RUNNING, create_run_folder, run_folder

RESOURCES = {  # flag: (default, help). Defaults fit the seeds' CPU nodes: 8 cores, 56 GB.
    "partition": (None, "SLURM partition (default: the cluster's default)"),
    "account": (None, "SLURM account to charge"),
    "nodes": (1, "nodes per point"),
    "ntasks_per_node": (None, "Horovod ranks per node (default: by the model, see --cpus-per-task)"),
    "cpus_per_task": (None, "cores per rank, TensorFlow's intra-op threads (default: an 8-core node as 1 rank x 8 "
                            "for a model whose gradient is over 8 MB, the AlexNets; as 2 x 4 for a smaller one)"),
    "gpus_per_node": (0, "GPUs per node: one rank per GPU, so set --ntasks-per-node to the same"),
    "mem_gb": (56, "memory per node, GB"),
    "time_min": (480, "time limit per point, minutes"),
    "array_parallelism": (None, "at most this many points run at once (default: all)"),
}


def build_parser():
    p = Parser(prog="python -m hpccnn.submit", description=__doc__.split("\n\n")[0])
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


CPU_NODE_CORES = 8  # the seeds' CPU nodes
LARGE_GRADIENT_MB = 8  # the seed models' gradients: 0.5-4.8 MB for the small CNNs, 12-233 MB for the AlexNets


def default_layout(args, exp) -> None:
    """Fills in --ntasks-per-node and --cpus-per-task where not given. The ranks of one node exchange
    gradients through memory, on the cores that compute: a model whose gradient is large beside its step
    (the AlexNets) trains faster as one rank with all the node's cores, and only a model too small to keep
    the cores busy in one process gains from a second rank (measured on two CPUs: README, Ranks per CPU node)."""
    from hpccnn.data import datasets as data
    from hpccnn.training import memory
    from hpccnn.models.zoo import get_model

    spec = get_model(exp.model, exp.model_args)
    if usermodel.is_reference(exp.model):  # built for the data set's images
        height, _, channels = data.image_shape(exp, args.data_dir)
        parameters = memory.layers(spec, height, channels, data.class_count(exp, args.data_dir)).parameters
    else:
        parameters = memory.layers(spec, exp.image_size or spec.input_side, spec.input_channels, 10).parameters
    ranks = args.gpus_per_node or (1 if 4 * parameters > LARGE_GRADIENT_MB * 1e6 else 2)
    if args.ntasks_per_node is None:
        args.ntasks_per_node = ranks
    if args.cpus_per_task is None:
        args.cpus_per_task = max(1, CPU_NODE_CORES // max(1, args.ntasks_per_node))


def check_user_models(points, data_dir=None) -> None:
    """Each model of the user's in the grid built once here, on the login node, for its data set's images,
    and said in one line (parameters, output): a model that can't be built, or whose output doesn't match
    the classes, stops the submission with one line instead of failing alike in every array task."""
    from hpccnn.data import datasets as data
    from hpccnn.models.zoo import get_model

    seen, facts = set(), {}
    for _, _, exp in points:
        if not usermodel.is_reference(exp.model):
            continue
        key = (exp.dataset, exp.image_size, exp.channels, exp.synthetic_shape)
        if key not in facts:  # an array file is read whole to know it: once per data set
            facts[key] = data.image_shape(exp, data_dir), data.class_count(exp, data_dir)
        shape, classes = facts[key]
        if (exp.model, exp.model_args, shape) in seen:
            continue
        seen.add((exp.model, exp.model_args, shape))
        model = get_model(exp.model, exp.model_args)(shape, classes, activation=exp.activation)
        print(f"hpccnn: {exp.model}{f' ({exp.model_args})' if exp.model_args else ''} built for the "
              f"{'x'.join(map(str, shape))} images of {exp.dataset}: {usermodel.describe(model, classes)}",
              flush=True)


def check_resources(args):
    for name in ("nodes", "ntasks_per_node", "cpus_per_task", "mem_gb", "time_min"):
        if getattr(args, name) <= 0:
            raise UserError(f"{flag(name)} must be a positive integer, got {getattr(args, name)}")
    if args.gpus_per_node < 0 or (args.array_parallelism is not None and args.array_parallelism <= 0):
        raise UserError("--gpus-per-node must not be negative and --array-parallelism must be positive")
    for name in ("partition", "account"):
        value = getattr(args, name)
        if value is not None and not value.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise UserError(f"--{name} {value!r} is not a SLURM {name} name (letters, digits, - _ . only)")


def slurm_parameters(args, name: str) -> dict:
    """submitit SlurmExecutor parameters (sbatch's own names) for one point's array task."""
    ranks_per_node = args.ntasks_per_node
    params = dict(job_name=f"hpccnn-{name}", nodes=args.nodes, ntasks_per_node=ranks_per_node,
                  cpus_per_task=args.cpus_per_task, mem=f"{args.mem_gb}GB", time=args.time_min,
                  # pmix: Open MPI inside each rank finds its peers through SLURM (Horovod's MPI);
                  # kill-on-bad-exit: a rank that dies ends the step instead of leaving the rest in allreduce.
                  stderr_to_stdout=True,  # one log per rank, tracebacks included
                  srun_args=["--mpi=pmix", "--kill-on-bad-exit=1", f"--cpus-per-task={args.cpus_per_task}"])
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    if args.partition:
        params["partition"] = args.partition
    if args.account:
        params["account"] = args.account
    if args.array_parallelism:
        params["array_parallelism"] = args.array_parallelism
    return params


def sbatch_script(params: dict, folder: Path, points: int) -> str:
    """The sbatch script submitit writes for these parameters (submitit's own template)."""
    # private to submitit, so requirements/constraints.txt holds submitit at the version it was read from
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=points if points > 1 else None, **params)


class TrainPoint:
    """One grid point, pickled by submitit and called in every rank of its job.

    Under SLURM each rank is a task srun started, so the point trains in this process
    (hpccnn.train's code). Locally it runs ``horovodrun -np <ranks> python -m hpccnn.train``;
    under the debug executor it trains in the submitting process as one rank.
    """

    def __init__(self, train_args: list, launcher: str, ranks: int, workdir=None):
        self.train_args, self.launcher, self.ranks = list(train_args), launcher, ranks
        # the folder the grid was submitted from: a package.module:function model is imported from it
        self.workdir = workdir or os.getcwd()

    def command(self) -> list:
        from hpccnn.launching.launch import horovodrun_command, train_command

        if self.launcher == "horovodrun":
            return horovodrun_command(self.ranks, self.train_args)
        return train_command(self.train_args)

    def __call__(self):
        if self.launcher == "horovodrun":
            import subprocess

            from hpccnn.launching.launch import mpi_env

            env = mpi_env()
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.workdir, env.get("PYTHONPATH")) if p)
            status = subprocess.run(self.command(), env=env, cwd=self.workdir).returncode
            if status != 0:
                raise RuntimeError(f"hpccnn.train under horovodrun exited with status {status}")
            return None
        from hpccnn.training import train

        if getattr(self, "workdir", None) and self.workdir not in sys.path:
            sys.path.insert(0, self.workdir)
        folder, _ = train.train(self.train_args)
        return str(folder) if folder else None


class Collect:
    """The collector job: writes grid.csv once the array has ended."""

    def __init__(self, folder):
        self.folder = str(folder)

    def __call__(self):
        collect(Path(self.folder))
        return str(Path(self.folder) / "grid.csv")


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
        base = grids.get_grid(args.grid)
        grid = dataclasses.replace(base, axes={**base.axes, **sweep})
    else:
        from hpccnn.models.experiments import get_experiment

        get_experiment(args.experiment)
        grid = grids.Grid(args.experiment, args.experiment, sweep)
    return grid, grids.resolve(grid, overrides, drawn)


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
        if not args.dry_run and not slurm.available():
            raise UserError("sbatch is not on PATH: this is not a SLURM login node; use --cluster local "
                            "to run the grid on this machine")
        limit = slurm.max_array_size() if slurm.available() else None
        if limit is not None and len(points) > limit:
            raise UserError(f"{len(points)} points exceed this cluster's MaxArraySize of {limit}; "
                            f"submit the grid in parts (fewer --sweep values)")
    rungs = halving.check(args.halving, args.min_epochs, [exp.epochs for _, _, exp in points])
    if args.dry_run:
        folder = run_folder(Path(args.results_dir).resolve(), grid.name, datetime.date.today().isoformat(), "<HHMMSS>")
        print(describe(args, grid, points, folder) + "\n")
        if rungs:
            print(describe_rungs(args, points, rungs) + "\n")
        for index, (label, settings, exp) in enumerate(points):
            given = point_args(args, exp.name, settings, folder / label)
            command = TrainPoint(_with_epochs(given, rungs[0]) if rungs else given,
                                 "horovodrun" if args.cluster == "local" else "python", ranks).command()
            where = f"array task {index}" if args.cluster == "slurm" else f"point {index}"
            print(f"[{where}] {label}: {shlex.join(command)}")
        if args.cluster == "slurm":
            script = sbatch_script(slurm_parameters(args, grid.name), folder / "submitit", len(points))
            print("\nsbatch script (submitit); every rank then runs the command above for its array task:\n")
            print(script)
        print("hpccnn: dry run: nothing was submitted or written")
        return 0

    folder = new_grid_folder(args.results_dir, grid.name)
    print(describe(args, grid, points, folder), flush=True)
    if rungs:
        print(describe_rungs(args, points, rungs), flush=True)
    try:
        record = new_record(args, grid, points, folder)
        if rungs:
            record["halving"] = {"eta": args.halving, "epochs": rungs, "rungs": []}
            return run_rung(args, record, folder, 0)
        jobs = _run_points(args, record, record["points"], folder, ranks, grid.name)
    except Exception:
        if not _anything_ran(folder):  # leave no half-made grid behind, but never a result
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        raise
    return _after_submit(args, folder, jobs)


def _anything_ran(folder: Path) -> bool:
    """Whether a grid folder holds a submitted job or a point's run folder (a later rung's failure to
    submit must not take the earlier rungs' results with it)."""
    record = read_json(folder / "grid.json") or {"points": []}
    return any(p.get("job_id") or (folder / p["label"]).exists() for p in record["points"])


def _after_submit(args, folder: Path, jobs, final=False) -> int:
    """Once the points are submitted: on SLURM the collector job, or --wait; then grid.csv and the table.
    final: every job has ended already (the last rung of a halving grid): grid.csv and the table now."""
    if args.cluster == "slurm" and not final:
        print(f"hpccnn: submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} task(s))")
        if not args.wait:
            collector = _submit_follow_up(args, folder, jobs, Collect(folder), "hpccnn-collect")
            print(f"hpccnn: grid.csv will be written by job {collector.job_id} when the array has ended "
                  f"(or now: python -m hpccnn.submit --collect {folder}; progress: --status {folder})")
            return 0
        wait_for_slurm(jobs, folder)
    rows = collect(folder)
    print(format_table(rows))
    print(f"hpccnn: {folder / 'grid.csv'}")
    failed = [r for r in rows if r["status"] != COMPLETED]
    if failed:
        print(f"hpccnn: {len(failed)} of {len(rows)} point(s) did not complete; logs: "
              + ", ".join(r["log"] for r in failed if r["log"]), file=sys.stderr)
    return 1 if failed else 0


def describe_rungs(args, points, rungs) -> str:
    """The rungs of a halving grid: points and epochs of each, and the training they cost at most."""
    ranks = args.nodes * args.ntasks_per_node
    counts = halving.survivors(len(points), args.halving, len(rungs))
    lines = [f"successive halving, ETA {args.halving}: {len(rungs)} rungs"]
    for k, (n, e) in enumerate(zip(counts, rungs)):
        lines.append(f"  rung {k}: {'every point' if k == 0 else f'the best {n}'} ({n}) to epoch {e}")
    full = len(points) * rungs[-1] * ranks
    lines.append(f"{halving.rank_epochs(counts, rungs, ranks)} rank-epochs at most, against {full} for the whole grid "
                 f"to epoch {rungs[-1]}")
    if args.cluster == "slurm":
        lines.append(f"{sum(counts) * ranks * args.time_min / 60:.1f} rank-hours at most (each rung one job array "
                     f"of {args.time_min}-minute tasks)")
    return "\n".join(lines)


def run_rung(args, record: dict, folder: Path, k: int) -> int:
    """Starts rung k of a halving grid: its points to the rung's epochs, rung 0 afresh and the others
    resuming their run folders. Locally, and on SLURM with --wait, this process then decides the next
    rung itself; on SLURM without --wait a one-core job (Advance) does, after the rung's array."""
    h = record["halving"]
    epochs = h["epochs"][k]
    if k == 0:
        labels = [p["label"] for p in record["points"]]
    else:
        rows = {r["point"]: r for r in map(progress, point_rows(record))}
        done = [rows[label] for label in h["rungs"][k - 1]["points"]]
        count = halving.survivors(len(record["points"]), h["eta"], len(h["epochs"]))[k]
        labels = halving.promote(done, count)
        h["rungs"][k - 1]["promoted"] = labels
    for p in record["points"]:
        if k and p["label"] in h["rungs"][k - 1]["points"]:  # a failed point did not stop early: it failed
            p["stopped_early"] = p["label"] not in labels and rows[p["label"]]["status"] == COMPLETED
    if not labels:  # every point of the rung before failed
        write_json(folder / "grid.json", record)
        return _after_submit(args, folder, [], final=True)
    h["rungs"].append({"epochs": epochs, "points": labels})
    chosen = [p for p in record["points"] if p["label"] in labels]
    for p in chosen:
        p["rung"], p["stopped_early"] = k, False
        if k == 0:
            p["run_args"] = _with_epochs(p["train_args"], epochs)
        else:
            p["run_args"] = ["--resume", p["run_dir"], "--epochs", str(epochs), *_resume_extras(p["train_args"])]
            for key in ("state", "reason"):
                p.pop(key, None)
    print(f"hpccnn: rung {k}: {len(chosen)} point(s) to epoch {epochs}: {', '.join(labels)}", flush=True)
    jobs = _run_points(args, record, chosen, folder, args.nodes * args.ntasks_per_node, record["grid"])
    return _after_rung(args, folder, jobs, k)


def _after_rung(args, folder: Path, jobs, k: int) -> int:
    """Once rung k's points (or those of it resubmitted) are submitted: the next rung, or grid.csv after the last."""
    last = k == len(read_json(folder / "grid.json")["halving"]["epochs"]) - 1
    if args.cluster == "slurm":
        print(f"hpccnn: submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} task(s)) for rung {k}")
        if not args.wait:
            if last:
                return _after_submit(args, folder, jobs)
            job = _submit_follow_up(args, folder, jobs, Advance(folder, k + 1), "hpccnn-halving")
            record = read_json(folder / "grid.json")
            record["halving"]["advance"] = job.job_id  # --resubmit waits for it
            write_json(folder / "grid.json", record)
            print(f"hpccnn: job {job.job_id} starts rung {k + 1} when rung {k} has ended "
                  f"(progress: python -m hpccnn.submit --status {folder})", flush=True)
            return 0
        wait_for_slurm(jobs, folder)
    if last:
        return _after_submit(args, folder, [], final=True)
    return run_rung(args, read_record(folder), folder, k + 1)


class Advance:
    """The small job that runs after a rung of a halving grid on SLURM: promotes and starts the next rung."""

    def __init__(self, folder, rung: int):
        self.folder, self.rung = str(folder), rung

    def __call__(self):
        import argparse

        for key in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_")) and k != "SLURM_CONF"]:
            del os.environ[key]  # this job's own: the next array must not inherit them (the cluster's config stays)
        record = read_record(self.folder)
        args = argparse.Namespace(**record["resources"], cluster="slurm", wait=False)
        try:
            return run_rung(args, record, Path(self.folder), self.rung)
        except Exception as err:  # sbatch refused the rung: the grid says why, and grid.csv sums up what ran
            record = read_json(Path(self.folder) / "grid.json")
            why = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
            record["halving"]["error"] = f"rung {self.rung} could not be submitted: {why}"
            write_json(Path(self.folder) / "grid.json", record)
            collect(Path(self.folder))
            raise


def _with_epochs(train_args: list, epochs: int) -> list:
    args = list(train_args)
    if "--epochs" in args:
        args[args.index("--epochs") + 1] = str(epochs)
        return args
    return [*args, "--epochs", str(epochs)]


def _resume_extras(given: list) -> list:
    """Of a point's hpccnn.train options, those that go with --resume: --no-save-model and --data-dir."""
    extra = ["--no-save-model"] * ("--no-save-model" in given)
    if "--data-dir" in given:
        extra += given[given.index("--data-dir"):given.index("--data-dir") + 2]
    return extra


def new_record(args, grid, points, folder: Path) -> dict:
    record = grids.grid_record(grid, points, folder, args.cluster)
    record["command"] = shlex.join([sys.executable, "-m", "hpccnn.submit", *sys.argv[1:]])
    record["workdir"] = os.getcwd()  # where the points import a package.module:function model from
    record["resources"] = {k: getattr(args, k) for k in RESOURCES}
    if args.sample:
        record["sampled"] = {"sample": args.sample, "samples": args.samples, "seed": args.sample_seed}
    for p, (label, settings, exp) in zip(record["points"], points):
        p["train_args"] = point_args(args, exp.name, settings, folder / label)
    return record


def _run_points(args, record: dict, points: list, folder: Path, ranks: int, name: str):
    """Submits these points of record (each with its run_args, else train_args); grid.json kept current."""
    import submitit

    from hpccnn.launching.launch import mpi_env

    os.environ.update(mpi_env())  # sbatch exports this environment to the ranks (root may run Open MPI)
    if args.cluster == "slurm":
        executor = submitit.SlurmExecutor(folder=folder / "submitit")
        executor.update_parameters(**slurm_parameters(args, name))
        with executor.batch():
            jobs = [executor.submit(TrainPoint(p.get("run_args", p["train_args"]), "python", ranks, record.get("workdir")))
                    for p in points]
        for p, job in zip(points, jobs):
            p.update(job_id=job.job_id, log=str(job.paths.stdout).replace("%t", "0"))
        write_json(folder / "grid.json", record)
        return jobs
    # local and debug: one point at a time, each job awaited before the next starts
    executor = submitit.AutoExecutor(folder=folder / "submitit", cluster=args.cluster)
    executor.update_parameters(timeout_min=args.time_min, tasks_per_node=1, nodes=1)
    launcher = "horovodrun" if args.cluster == "local" else "python"
    record["driver"] = driver()  # --status: while this process lives, its points are pending or running
    for p in points:
        p["state"] = "PENDING"
    write_json(folder / "grid.json", record)
    jobs = []
    for p in points:
        job = executor.submit(TrainPoint(p.get("run_args", p["train_args"]), launcher, ranks, record.get("workdir")))
        print(f"hpccnn: point {p['label']}: job {job.job_id}", flush=True)
        p.update(state="RUNNING", job_id=str(job.job_id))
        write_json(folder / "grid.json", record)
        try:
            job.result()
            p["state"] = "COMPLETED"
        except Exception as err:  # the point failed; its run folder and log say why
            p["state"] = "FAILED"
            p["reason"] = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
        p.update(job_id=str(job.job_id), log=str(job.paths.stdout).replace("%t", "0"))
        jobs.append(job)
        write_json(folder / "grid.json", record)
    return jobs


def driver() -> dict:
    """This process, as grid.json names the process that runs a local or debug grid's points."""
    import socket

    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid())}


def _process_start(pid: int):
    """The process's start time in clock ticks since boot (a pid used again has another), or None."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def driver_alive(record: dict):
    """Whether the process that runs a local or debug grid's points still does: True, False, or None when
    it can't be told from here (another machine)."""
    import socket

    from hpccnn.launching.guard import alive

    d = record.get("driver")
    if not d:
        return False
    if d["host"] != socket.gethostname():
        return None
    return alive(d["pid"]) and _process_start(d["pid"]) == d["started"]


def _local_state(point: dict, live) -> str | None:
    """A local or debug point's state as point_row takes SLURM's: PENDING or RUNNING while the grid's
    process lives, FAILED once it has ended without finishing the point, else None (its run folder says)."""
    state = point.get("state")
    if state not in ("PENDING", "RUNNING"):
        return None
    if live or live is None:
        return state
    point["reason"] = ("hpccnn.submit, which ran this grid's points on this machine, ended before the point "
                       + ("finished" if state == "RUNNING" else "ran"))
    point["state"] = "FAILED" if state == "RUNNING" else None
    return None


def _submit_follow_up(args, folder: Path, jobs, call, name: str):
    """A one-core job that SLURM starts once the array of jobs has ended, however it ended (afterany)."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder / "submitit")
    params = dict(job_name=name, nodes=1, ntasks_per_node=1, cpus_per_task=1, mem="1GB", time=10,
                  dependency=f"afterany:{jobs[0].job_id.split('_')[0]}")
    for key in ("partition", "account"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    executor.update_parameters(**params)
    return executor.submit(call)


def wait_for_slurm(jobs, folder: Path):
    """Blocks until every array task has left SLURM's active states; prints a line for each of their
    points whose progress changed (state, epoch, validation accuracy), so that a log stays readable
    (a later rung's or a resubmission's lines are of its own points only)."""
    array_id = jobs[0].job_id.split("_")[0]
    ids = {j.job_id for j in jobs}
    shown, misses = {}, 0
    while True:
        states = slurm.job_states(array_id)
        if not states and misses < 12:  # sacct and scontrol both failed to answer: not an end, ask again
            misses += 1
            time.sleep(5)
            continue
        misses = 0
        mine = [states.get(j.job_id, states.get(array_id, "UNKNOWN")) for j in jobs]
        record = read_record(folder)
        waited = {**record, "points": [p for p in record["points"] if p.get("job_id") in ids]}
        for p in (progress(r) for r in point_rows(waited)):
            key = (p["status"], p["epoch"], p["val_accuracy"])
            if shown.get(p["point"]) != key:
                shown[p["point"]] = key
                cells = progress_cells(p)
                print(f"hpccnn: {datetime.datetime.now():%H:%M:%S} {cells[0]}: {cells[1]}, epoch {cells[2]}, "
                      f"val_acc {cells[3]}, elapsed {cells[4]}, left {cells[5]}", flush=True)
        if not any(s in slurm.ACTIVE for s in mine):
            return
        time.sleep(5)


def _count(values):
    counts = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


def point_row(point: dict, state: str | None) -> dict:
    """One grid.csv row: the point's settings, its metrics, and a status SLURM and metrics.json agree on."""
    metrics = read_json(Path(point["run_dir"]) / "metrics.json") or {}
    status, reason = metrics.get("status"), metrics.get("reason", "")
    log = point.get("log") or _slurm_log(point)
    if state is not None and state not in slurm.ACTIVE and state not in ("COMPLETED", "UNKNOWN"):
        if status == COMPLETED:  # rank 0 finished but the job did not: another rank failed
            reason = f"job ended {state} although rank 0 finished"
        status = FAILED
        reason = reason or f"job ended {state}"
    elif state in slurm.ACTIVE:  # its latest job (a resubmission, a later rung, a requeue) is still on its way
        status, reason = state.lower(), ""
    elif status in (None, RUNNING):
        if status is None and state is None and not point.get("state") and not Path(log or "/nonexistent").exists():
            status, reason = NOT_RUN, point.get("reason") or (
                f"its job {point['job_id']} never ran (cancelled while pending?)" if point.get("job_id")
                else "no job ran this point (not in the submitted --array?)")
        else:  # the job has ended (or SLURM has forgotten it) and the run never finished
            status = FAILED
            reason = reason or point.get("reason") or (
                f"job ended {state}" if state and state != "UNKNOWN" else "no finished run in the run folder")
    if point.get("state") == "FAILED" and status == COMPLETED:
        status, reason = FAILED, point.get("reason", "the job failed")
    if status == FAILED and not metrics.get("reason"):
        reason = last_error(log) or reason
    return {"point": point["label"], **point["settings"], "status": status,
            "test_accuracy": metrics.get("test_accuracy"), "test_loss": metrics.get("test_loss"),
            "wall_seconds": metrics.get("wall_seconds"), "world_size": metrics.get("world_size"),
            "last_epoch": metrics.get("last_epoch"), "job_id": point.get("job_id"), "reason": reason,
            "run_folder": point["run_dir"], "log": log,
            **({"rung": point["rung"], "rung_epochs": _epochs_of(point.get("run_args", point["train_args"])),
                "epochs_trained": metrics.get("last_epoch") or 0,
                "rank_epochs": (metrics.get("last_epoch") or 0) * (metrics.get("world_size") or 0),
                "stopped_early": point.get("stopped_early", False)} if "rung" in point else {})}


def _epochs_of(run_args: list) -> int | None:
    """The epochs a point's latest command trains to (a halving rung's), from its --epochs."""
    return int(run_args[run_args.index("--epochs") + 1]) if "--epochs" in run_args else None


def _slurm_log(point: dict) -> str:
    """A point's log when grid.json has none (slurm/grid_array.sbatch): its run folder's link, else SLURM's."""
    link = Path(point["run_dir"]) / "slurm.out"
    if link.exists():
        return str(link.resolve())
    return slurm.job_fields(point["job_id"]).get("StdOut", "") if point.get("job_id") else ""


def last_error(log) -> str | None:
    """The last exception line in a point's log ('UserError: batch of ...'), if it has one."""
    import re

    try:
        text = Path(log).read_text(errors="replace") if log else ""
    except OSError:
        return None
    found = re.findall(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Interrupt)): (.+)$", text, re.M)
    return f"{found[-1][0]}: {found[-1][1]}"[:300] if found else None


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


def point_rows(record: dict) -> list:
    """grid.csv's rows: each point's status from its run folder and SLURM's state of its latest job."""
    if record.get("cluster") != "slurm":
        live = driver_alive(record)
        return [point_row(p, _local_state(p, live)) for p in record["points"]]
    states = {}
    for array in sorted({p["job_id"].split("_")[0] for p in record["points"] if p.get("job_id")}):
        states.update(slurm.job_states(array))  # a resubmitted point's job is in another array
    return [point_row(p, states.get(p.get("job_id"))) for p in record["points"]]


def collect(folder: Path) -> list:
    """Writes folder/grid.csv from grid.json, the run folders and SLURM's job states; returns the rows."""
    import pandas as pd

    rows = point_rows(read_record(folder))
    frame = pd.DataFrame(rows)
    for key in ("world_size", "last_epoch"):
        frame[key] = frame[key].astype("Int64")
    write_atomic(folder / "grid.csv", lambda tmp: frame.to_csv(tmp, index=False))
    return rows


def format_table(rows) -> str:
    """grid.csv as a fixed-width table, best test accuracy first (like seed 001's Table 1)."""
    if not rows:
        return "(no points)"
    settings = [k for k in rows[0] if k not in ("point", "status", "test_accuracy", "test_loss", "wall_seconds",
                                                 "world_size", "last_epoch", "job_id", "reason", "run_folder", "log",
                                                 *HALVING_COLUMNS)]
    halved = "rung" in rows[0]
    header = ["point", *settings, "status", "test_acc", "test_loss", "seconds", "ranks",
              *(["rung", "trained", "stopped"] if halved else [])]
    ordered = sorted(rows, key=lambda r: (-(r.get("epochs_trained") or 0),
                                          -(r["test_accuracy"] if r["test_accuracy"] is not None else -1)))
    return tables.text(header, ([r["point"], *(r[k] for k in settings), r["status"], tables.number(r["test_accuracy"]),
                                 tables.number(r["test_loss"]), tables.number(r["wall_seconds"], 0),
                                 tables.number(r["world_size"]),
                                 *([r["rung"], r["epochs_trained"], "early" if r["stopped_early"] else ""]
                                   if halved else [])] for r in ordered))


HALVING_COLUMNS = ("rung", "rung_epochs", "epochs_trained", "rank_epochs", "stopped_early")


def progress(row: dict, now=None) -> dict:
    """Where a point is: epoch k of N, last validation accuracy, seconds so far and an estimate of those left."""
    import csv

    now = now or time.time()
    run = Path(row["run_folder"])
    config, metrics = read_json(run / "config.json") or {}, read_json(run / "metrics.json") or {}
    try:
        with open(run / "history.csv") as f:
            history = list(csv.DictReader(f))
    except OSError:
        history = []
    # a halving point's target is its rung's (its run folder's config.json holds it only once that rung's run starts)
    epochs = row.get("rung_epochs") or config.get("epochs") or row.get("epochs")
    done = int(history[-1]["epoch"]) if history else 0
    val = history[-1].get("val_accuracy") if history else None
    val_loss = history[-1].get("val_loss") if history else None
    seconds = [float(h["epoch_seconds"]) for h in history if h.get("epoch_seconds")]
    elapsed = left = None
    if row["status"] == RUNNING:
        started = _started(run)
        elapsed = metrics.get("wall_seconds", 0) * bool(metrics.get("resumes")) + (now - started if started else 0)
        if seconds and epochs:
            since_last = now - (run / "history.csv").stat().st_mtime
            left = max(0.0, sum(seconds) / len(seconds) * (epochs - done) - since_last)
    elif metrics.get("wall_seconds") is not None:
        elapsed, left = metrics["wall_seconds"], 0.0 if row["status"] == COMPLETED else None
    return {"point": row["point"], "status": row["status"], "epoch": done, "epochs": epochs,
            "val_accuracy": float(val) if val not in (None, "") else None,
            "val_loss": float(val_loss) if val_loss not in (None, "") else None, "elapsed": elapsed, "left": left,
            "reason": row["reason"]}


def _started(run: Path):
    """When the run's latest attempt started (provenance.json), in seconds since the epoch."""
    prov = read_json(run / "provenance.json") or {}
    when = (prov.get("resumes") or [prov])[-1].get("started")
    return datetime.datetime.fromisoformat(when).timestamp() if when else None


def progress_cells(p: dict) -> list:
    return [p["point"], p["status"], f"{p['epoch']}/{p['epochs'] or '?'}", tables.number(p["val_accuracy"]),
            tables.clock(p["elapsed"]) if p["elapsed"] is not None else "-",
            tables.clock(p["left"]) if p["left"] is not None else "-", (p["reason"] or "")[:80]]


PROGRESS_HEADER = ["point", "status", "epoch", "val_acc", "elapsed", "left", "reason"]


def status(folder) -> str:
    """python -m hpccnn.submit --status GRID_FOLDER: the table, and a line of totals."""
    record = read_record(folder)
    rows = [progress(r) for r in point_rows(record)]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(_count([r["status"] for r in rows]).items()))
    text = tables.text(PROGRESS_HEADER, [progress_cells(r) for r in rows]) + f"\nhpccnn: {len(rows)} point(s): {counts}"
    h = record.get("halving")
    if h:
        done = len(h["rungs"])
        if done:
            text += (f"\nhpccnn: successive halving to epochs {', '.join(map(str, h['epochs']))}: the latest rung "
                     f"started is rung {done - 1} (to epoch {h['epochs'][done - 1]})")
        if h.get("error"):
            text += f"\nhpccnn: the halving stopped: {h['error']}; --resubmit {folder} starts that rung again"
    return text


RESUBMITTABLE = (FAILED, NOT_RUN, "interrupted")


def resubmit(args, given=()) -> int:
    """Submits again, into the same grid folder, the points that failed or never ran: a point whose run
    folder was started resumes from its latest checkpoint (--resume), the others start afresh. The grid's
    resources are those it was submitted with, except those given (given: their names).

    A halving grid: the failed points of its latest rung, each to that rung's epochs; then the halving goes
    on from that rung (a halving stopped because a rung could not be submitted starts that rung)."""
    if args.dry_run:
        raise UserError("--resubmit has no --dry-run: run --status GRID_FOLDER to see which points it would submit")
    changed = [name for name in ("sweep", "sample", "samples", "halving", "min_epochs") if getattr(args, name)]
    changed += list(experiment_overrides(args))
    if changed:
        raise UserError(f"--resubmit takes resource options only, not {flag(changed[0])}: each point keeps the "
                        f"settings it was submitted with (submit a new grid for others)")
    folder = Path(args.resubmit)
    record = read_record(folder)
    if any("train_args" not in p for p in record["points"]):
        raise UserError(f"{folder} was not made by python -m hpccnn.submit (slurm/grid_array.sbatch?); "
                        f"resubmit its failed array tasks with sbatch --array=...")
    h = record.get("halving")
    if h and h.get("advance") and record["cluster"] == "slurm":
        state = slurm.job_states(h["advance"]).get(h["advance"])
        if state in slurm.ACTIVE:
            raise UserError(f"job {h['advance']}, which starts the next rung of {folder}, is {state.lower()}; wait "
                            f"for it, or scancel it to resubmit the failed points of the rung first (the halving "
                            f"goes on after them)")
    rows = point_rows(record)
    active = [r["point"] for r in rows if r["status"] not in (COMPLETED, *RESUBMITTABLE)]
    if active:
        raise UserError(f"{len(active)} point(s) of {folder} are still pending or running ({', '.join(active[:3])}); "
                        f"wait for them (python -m hpccnn.submit --status {folder}) before --resubmit")
    for key, value in record.get("resources", {}).items():
        if key not in given:
            setattr(args, key, value)
    check_resources(args)
    record["resources"] = {k: getattr(args, k) for k in RESOURCES}  # later rungs (Advance) take them too
    args.cluster = record["cluster"]
    again = [p for p, r in zip(record["points"], rows) if r["status"] in RESUBMITTABLE]
    rung = len(h["rungs"]) - 1 if h else None
    if h:
        latest = set(h["rungs"][rung]["points"]) if h["rungs"] else set()
        left = [p["label"] for p in again if p["label"] not in latest]
        if left:
            print(f"hpccnn: {len(left)} point(s) that failed in an earlier rung stay as they are (the halving went on "
                  f"without them): {', '.join(left)}")
        again = [p for p in again if p["label"] in latest]
        if not again and 0 <= rung < len(h["epochs"]) - 1:  # the next rung never started: start it now
            why = h.pop("error", None) or f"rung {rung + 1} was never started (its job cancelled, or the grid's process ended)"
            print(f"hpccnn: {why}; starting rung {rung + 1}", flush=True)
            write_json(folder / "grid.json", record)
            return run_rung(args, record, folder, rung + 1)
    if not again:
        print(f"hpccnn: nothing to resubmit: every point of {folder} completed"
              + (" or was stopped early by the halving" if h else ""))
        return 0
    epochs = [] if not h else ["--epochs", str(h["epochs"][rung])]
    for p in again:
        run = Path(p["run_dir"])
        p.setdefault("attempts", []).append({k: p[k] for k in ("job_id", "log", "state", "reason") if p.get(k)})
        for key in ("state", "reason"):
            p.pop(key, None)
        if (run / "config.json").exists() and (run / "metrics.json").exists():
            p["run_args"] = ["--resume", str(run), *epochs, *_resume_extras(p["train_args"])]
        else:
            if run.exists():  # started but never got as far as its settings: kept beside, never overwritten
                aside = run.with_name(f"{run.name}.attempt-{len(p['attempts'])}")
                run.rename(aside)
                print(f"hpccnn: {p['label']}: its unfinished run folder is now {aside}")
            p["run_args"] = _with_epochs(p["train_args"], int(epochs[1])) if h else p["train_args"]
    ranks = args.nodes * args.ntasks_per_node
    print(f"hpccnn: resubmitting {len(again)} of {len(record['points'])} point(s) of {folder} on --cluster "
          f"{args.cluster}{f' (rung {rung}, to epoch {epochs[1]})' if h else ''}: "
          f"{', '.join(p['label'] for p in again)}", flush=True)
    if h:
        h.pop("error", None)
    jobs = _run_points(args, record, again, folder, ranks, record["grid"])
    if h:
        return _after_rung(args, folder, jobs, rung)
    return _after_submit(args, folder, jobs)


@cli
def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    userconfig.use(args.config)
    if args.list:
        print(list_grids())
        return 0
    if args.status:
        print(status(args.status))
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
