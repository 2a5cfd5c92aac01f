"""Resuming a run: the experiment a run folder was started with (--resume, or a requeued SLURM job's own folder),
and the checks that it goes on as it started, on the data it started with. The checkpoint itself is
hpccnn.training.checkpoint's."""

import json
from pathlib import Path

from hpccnn.common.errors import UserError
from hpccnn.common.files import read_json
from hpccnn.common.runs import this_jobs_folders
from hpccnn.models.experiments import Experiment, flag, with_overrides
from hpccnn.training import checkpoint
from hpccnn.training.results import pack_record


def requeued_experiment(args, exp, changes):
    """In a SLURM job that was requeued, the experiment its run folder was started with (its config.json; only
    --epochs may differ, as on --resume): an edit of the user's hpccnn.toml or model file since the job was
    submitted must not change a running experiment. None in a job's first run, or before its folder exists."""
    if checkpoint.restart_count() == 0:
        return None
    if args.run_dir is not None:
        found = [Path(args.run_dir)] if Path(args.run_dir).is_dir() else []
    else:
        found = this_jobs_folders(args.results_dir, exp.name)
    config = found[-1] / "config.json" if found else None
    if config is None or not config.is_file():
        return None
    try:
        kept = Experiment(**json.loads(config.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return with_overrides(kept, {k: v for k, v in changes.items() if k == "epochs"})


def resumed_experiment(args, overrides):
    """The experiment a run folder was started with (only --epochs may change, to train longer)."""
    folder = folder_option("--resume", args.resume)
    try:
        config = json.loads((folder / "config.json").read_text())
        json.loads((folder / "metrics.json").read_text())
        exp = Experiment(**config)
    except (OSError, ValueError, TypeError):
        raise UserError(f"--resume {args.resume}: not a run folder made by hpccnn.train (no readable config.json "
                        f"and metrics.json)") from None
    changed = sorted(set(overrides) - {"epochs"})
    if changed or args.run_dir:
        what = flag(changed[0]) if changed else "--run-dir"
        raise UserError(f"--resume continues a run with its own settings; only --epochs may change, not {what}")
    return with_overrides(exp, overrides)


def folder_option(option: str, value: str) -> Path:
    """A run folder given on the command line, refused if it climbs out with '..'."""
    path = Path(value)
    if ".." in path.parts:
        raise UserError(f"{option} {value!r} contains '..'; give the run folder's path without it")
    return path


def check_run_dir(run_dir) -> None:
    path = folder_option("--run-dir", run_dir)
    if path.exists() and checkpoint.restart_count() == 0:  # a requeued job resumes its own folder
        raise UserError(f"--run-dir {run_dir} already exists; hpccnn never writes into an existing run folder "
                        f"(to continue that run: --resume {run_dir})")


def read_at_start(resume) -> str:
    """How a resumed run read its pack when it started ("memory" or "stream"), so that it goes on alike; or ""."""
    if resume is None:
        return ""
    return ((read_json(Path(resume.folder) / "provenance.json") or {}).get("input") or {}).get("read", "")


def same_data(resume, exp, data_dir) -> None:
    """A UserError, before anything is written, when a resumed run's pack was staged again since it started, or its
    folder or file of the user's own has changed."""
    if resume is None:
        return
    started = (read_json(Path(resume.folder) / "provenance.json") or {}).get("pack")
    now = pack_record(exp.dataset, data_dir)
    if started and started != now:
        what = (f"pack {exp.dataset} was staged again since {resume.folder} started (its index.json differs)"
                if "name" in started else f"--dataset {exp.dataset} has changed since {resume.folder} started (its "
                f"files' names, sizes or times differ)")
        raise UserError(f"{what}; a resumed run must train on the data it started with: start a new run")
