"""python -m hpccnn.submit --resubmit GRID_FOLDER: the points of a grid that failed or never ran, submitted
again into the same grid folder, each resuming from its checkpoint where it has one."""

from pathlib import Path

from hpccnn.common import slurm
from hpccnn.common.errors import UserError
from hpccnn.common.files import write_json
from hpccnn.common.runs import COMPLETED, FAILED, NOT_RUN
from hpccnn.launching.halving import after_rung, resume_extras, run_rung, with_epochs
from hpccnn.launching.jobs import after_submit, run_points
from hpccnn.launching.record import read_record
from hpccnn.launching.resources import RESOURCES, check_resources
from hpccnn.launching.status import point_rows
from hpccnn.models.experiments import flag
from hpccnn.models.experiments import overrides as experiment_overrides

RESUBMITTABLE = (FAILED, NOT_RUN, "interrupted")


def resubmit(args, given=()) -> int:
    """Submits again, into the same grid folder, the points that failed or never ran: a point whose run
    folder was started resumes from its latest checkpoint (--resume), the others start afresh. The grid's
    resources are those it was submitted with, except those given (given: their names).

    A halving grid: the failed points of its latest rung, each to that rung's epochs; then the halving goes
    on from that rung (a halving stopped because a rung could not be submitted starts that rung)."""
    _check_options(args)
    folder = Path(args.resubmit)
    record = read_record(folder)
    _check_record(record, folder)
    rows = _ended_rows(record, folder)
    _take_resources(args, record, given)
    again = [p for p, r in zip(record["points"], rows) if r["status"] in RESUBMITTABLE]
    h = record.get("halving")
    rung = len(h["rungs"]) - 1 if h else None
    if h:
        again = _of_latest_rung(again, h, rung)
        if not again and 0 <= rung < len(h["epochs"]) - 1:  # the next rung never started: start it now
            return _start_next_rung(args, record, folder, rung)
    if not again:
        print(f"hpccnn: nothing to resubmit: every point of {folder} completed"
              + (" or was stopped early by the halving" if h else ""))
        return 0
    epochs = [] if not h else ["--epochs", str(h["epochs"][rung])]
    for p in again:
        _prepare(p, epochs)
    return _submit_again(args, record, folder, again)


def _check_options(args):
    """--resubmit takes the grid's own settings: a dry run or another setting is refused."""
    if args.dry_run:
        raise UserError("--resubmit has no --dry-run: run --status GRID_FOLDER to see which points it would submit")
    changed = [name for name in ("sweep", "sample", "samples", "halving", "min_epochs") if getattr(args, name)]
    changed += list(experiment_overrides(args))
    if changed:
        raise UserError(f"--resubmit takes resource options only, not {flag(changed[0])}: each point keeps the "
                        f"settings it was submitted with (submit a new grid for others)")


def _check_record(record: dict, folder: Path):
    """A grid made by python -m hpccnn.submit, and no job of it about to start its next rung."""
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


def _ended_rows(record: dict, folder: Path) -> list:
    """The points' rows (point_rows), once none of them is pending or running any more."""
    rows = point_rows(record)
    active = [r["point"] for r in rows if r["status"] not in (COMPLETED, *RESUBMITTABLE)]
    if active:
        raise UserError(f"{len(active)} point(s) of {folder} are still pending or running ({', '.join(active[:3])}); "
                        f"wait for them (python -m hpccnn.submit --status {folder}) before --resubmit")
    return rows


def _take_resources(args, record: dict, given):
    """args get the grid's resources and cluster, except the resources given on the command line."""
    for key, value in record.get("resources", {}).items():
        if key not in given:
            setattr(args, key, value)
    check_resources(args)
    record["resources"] = {k: getattr(args, k) for k in RESOURCES}  # later rungs (Advance) take them too
    args.cluster = record["cluster"]


def _of_latest_rung(again: list, h: dict, rung: int) -> list:
    """Of the points to submit again, those of a halving grid's latest rung; the others are said to stay."""
    latest = set(h["rungs"][rung]["points"]) if h["rungs"] else set()
    left = [p["label"] for p in again if p["label"] not in latest]
    if left:
        print(f"hpccnn: {len(left)} point(s) that failed in an earlier rung stay as they are (the halving went on "
              f"without them): {', '.join(left)}")
    return [p for p in again if p["label"] in latest]


def _start_next_rung(args, record: dict, folder: Path, rung: int) -> int:
    """Every point of the latest rung ended but the next rung never started: starts it now."""
    h = record["halving"]
    why = h.pop("error", None) or f"rung {rung + 1} was never started (its job cancelled, or the grid's process ended)"
    print(f"hpccnn: {why}; starting rung {rung + 1}", flush=True)
    write_json(folder / "grid.json", record)
    return run_rung(args, record, folder, rung + 1)


def _prepare(p: dict, epochs: list):
    """A point's run_args to submit it again (epochs: a halving rung's --epochs, or none); its last attempt
    kept in attempts. A run folder with no settings yet is moved aside, never overwritten."""
    run = Path(p["run_dir"])
    p.setdefault("attempts", []).append({k: p[k] for k in ("job_id", "log", "state", "reason") if p.get(k)})
    for key in ("state", "reason"):
        p.pop(key, None)
    if (run / "config.json").exists() and (run / "metrics.json").exists():
        p["run_args"] = ["--resume", str(run), *epochs, *resume_extras(p["train_args"])]
    else:
        if run.exists():  # started but never got as far as its settings: kept beside, never overwritten
            aside = run.with_name(f"{run.name}.attempt-{len(p['attempts'])}")
            run.rename(aside)
            print(f"hpccnn: {p['label']}: its unfinished run folder is now {aside}")
        p["run_args"] = with_epochs(p["train_args"], int(epochs[1])) if epochs else p["train_args"]


def _submit_again(args, record: dict, folder: Path, again: list) -> int:
    """Submits the points prepared; a halving grid then goes on from its latest rung."""
    h = record.get("halving")
    rung = len(h["rungs"]) - 1 if h else None
    ranks = args.nodes * args.ntasks_per_node
    which = f" (rung {rung}, to epoch {h['epochs'][rung]})" if h else ""
    print(f"hpccnn: resubmitting {len(again)} of {len(record['points'])} point(s) of {folder} on --cluster "
          f"{args.cluster}{which}: {', '.join(p['label'] for p in again)}", flush=True)
    if h:
        h.pop("error", None)
    jobs = run_points(args, record, again, folder, ranks, record["grid"])
    if h:
        return after_rung(args, folder, jobs, rung)
    return after_submit(args, folder, jobs)
