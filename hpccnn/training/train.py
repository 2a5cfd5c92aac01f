"""python -m hpccnn.train: trains one experiment, data-parallel with Horovod.

The same command runs as one process, under ``horovodrun -np N``, ``mpirun -np N``,
``srun --mpi=pmix`` and submitit: the rank comes from Horovod, and every side effect
sits behind ``world.is_main`` (rank 0) in the results writer.

Its command line is read here; the run itself is hpccnn.training.phases.run's, as for hpccnn.fit.
"""

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

from hpccnn.common.errors import Parser, UserError, cli, command_prog
from hpccnn.data.datasets import DATASETS, resolve
from hpccnn.models import userconfig, usermodel
from hpccnn.models.catalog import get_experiment
from hpccnn.models.experiments import EXPERIMENTS, Experiment, add_setting_options, overrides, with_overrides
from hpccnn.models.zoo import get_model
from hpccnn.training import dist, phases
from hpccnn.training.compute import start, use_xla
from hpccnn.training.context import Options
from hpccnn.training.fitting import (EXIT_DIVERGED, EXIT_INTERRUPTED, Diverged, Interrupted, progress_interval,
                                     stall_timeout)
from hpccnn.training.resuming import check_run_dir, requeued_experiment, resumed_experiment


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The options' defaults shown, and the epilog's lines (the example, the docs file) kept as written."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=command_prog("train"), description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
               epilog="example: python -m hpccnn.train --experiment digits_cnn --epochs 5\ndocs: docs/running.md")
    p.add_argument("--experiment", default=None,
                   help="a named experiment (see --list); without it, --model of your own with --dataset, "
                        "or else digits_cnn")
    p.add_argument("--list", action="store_true", help="print the experiments (built in, and yours) and exit")
    userconfig.add_option(p)
    p.add_argument("--data-dir", default=None, help="staged data cache (default $HPCCNN_DATA or ~/.cache/hpccnn/data)")
    p.add_argument("--results-dir", default="results", help="run folders go to RESULTS_DIR/<date>/<run>")
    p.add_argument("--run-dir", default=None,
                   help="create exactly this run folder instead (must not exist; hpccnn.submit sets it per grid point)")
    p.add_argument("--no-save-model", action="store_true", help="skip writing model.h5")
    p.add_argument("--resume", metavar="RUN_FOLDER", default=None,
                   help="continue a run from its last finished epoch (its own settings; --epochs may grow)")
    add_setting_options(p.add_argument_group("experiment settings (override the experiment's defaults)"))
    return p


def list_experiments() -> str:
    """The built-in experiments, then the user's (marked as theirs, with their file)."""
    lines = [f"{'experiment':30} {'model':24} {'dataset':13} {'epochs':>6}  reported in the seed"]
    for e in EXPERIMENTS.values():
        lines.append(f"{e.name:30} {e.model:24} {e.dataset:13} {e.epochs:>6}  {e.reported or '-'}")
    yours = userconfig.entries()
    for e in yours.experiments.values():
        lines.append(f"{e.name:30} {e.model.rpartition('/')[2]:24} {e.dataset:13} {e.epochs:>6}  "
                     f"yours ({yours.path}){': ' + e.description if e.description else ''}")
    return "\n".join(lines)


def parse(argv):
    """(options, Experiment) from hpccnn.train's command line; a UserError if anything is wrong."""
    args = build_parser().parse_args(argv)
    userconfig.use(args.config)
    stall_timeout(), progress_interval(), dist.malloc_choice()  # checked before anything starts
    changes = overrides(args)
    if args.resume is not None:
        return args, resumed_experiment(args, changes)
    exp = with_overrides(base_experiment(args.experiment, changes), changes)
    kept = requeued_experiment(args, exp, changes)
    if kept is not None:  # its model comes from the run folder's copy (model_spec): nothing to import here
        return args, kept
    # a path the ranks find wherever they start (a staged pack's name stays as it is)
    exp = dataclasses.replace(exp, dataset=resolve(exp.dataset, args.data_dir))
    if usermodel.is_reference(exp.model):
        exp = dataclasses.replace(exp, model=usermodel.absolute(exp.model))
        use_xla(exp)  # the user's module may import TensorFlow, which reads XLA's flags once
        get_model(exp.model, exp.model_args)  # imports the user's code: its errors before anything starts
    if args.run_dir is not None:
        check_run_dir(args.run_dir)
    check_writable(Path(args.run_dir).parent if args.run_dir else Path(args.results_dir), "--results-dir")
    return args, exp


def base_experiment(name, changes: dict) -> Experiment:
    """The experiment a command line starts from: the one named, or, for a --model of the user's own without
    one, an experiment of hpccnn's defaults named after the model function (it needs --dataset); else digits_cnn."""
    if name is not None:
        return get_experiment(name)
    model = changes.get("model", "")
    if not usermodel.is_reference(model):
        base = get_experiment("digits_cnn")
        dataset = changes.get("dataset", "")
        if dataset and dataset not in DATASETS:  # the user's data: the run named after model and data
            stem = Path(dataset.rstrip("/")).stem or "data"
            return dataclasses.replace(base, name=f"{changes.get('model', base.model)}_{stem}")
        return base
    if "dataset" not in changes:
        raise UserError(f"--model {model} needs --dataset (one of: {', '.join(DATASETS)}), or an --experiment "
                        f"that names one")
    return Experiment(usermodel.split_reference(model)[1], model, changes["dataset"])


def check_writable(folder: Path, option: str) -> None:
    """A UserError unless folder exists and is writable or can be made; leaves nothing behind."""
    existing = folder.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {folder}: {existing} is a file, not a folder; choose another {option}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hpccnn-probe-", dir=existing))
    except OSError as err:
        raise UserError(f"{option} {folder} is not writable ({err.strerror}); choose another {option}") from None


def train(argv):
    """Everything python -m hpccnn.train does, in this process: (run folder or None off rank 0, accuracy)."""
    args, exp = parse(argv)
    # start and run, as hpccnn.fit's (api.run) are
    world, fast = start(exp)
    options = Options(args.data_dir, args.results_dir, args.run_dir, args.resume, ("-m", "hpccnn.train", *argv),
                      not args.no_save_model)
    return phases.run(exp, world, fast, options)


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.list:
        userconfig.use(args.config)
        print(list_experiments())
        return 0
    try:
        train(argv)
    except Interrupted as stop:
        if dist.init().is_main:
            print(f"hpccnn: {stop}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Diverged as failure:
        if dist.init().is_main:
            print(f"hpccnn: {failure}", file=sys.stderr, flush=True)
        return EXIT_DIVERGED
    return 0


if __name__ == "__main__":
    sys.exit(main())
