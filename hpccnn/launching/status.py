"""Where a grid's points are: grid.csv's rows (--collect) and the --status table, from grid.json, each
point's run folder and SLURM's states of its jobs."""

import csv
import datetime
import os
import re
import socket
import time
from pathlib import Path

from hpccnn.common import slurm, tables
from hpccnn.common.files import read_json, write_atomic
from hpccnn.common.runs import COMPLETED, FAILED, NOT_RUN, RUNNING
from hpccnn.launching.guard import alive
from hpccnn.launching.record import read_record


def driver() -> dict:
    """This process, as grid.json names the process that runs a local or debug grid's points."""
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


def point_rows(record: dict) -> list:
    """grid.csv's rows: each point's status from its run folder and SLURM's state of its latest job."""
    if record.get("cluster") != "slurm":
        live = driver_alive(record)
        return [point_row(p, _local_state(p, live)) for p in record["points"]]
    states = {}
    for array in sorted({p["job_id"].split("_")[0] for p in record["points"] if p.get("job_id")}):
        states.update(slurm.job_states(array))  # a resubmitted point's job is in another array
    return [point_row(p, states.get(p.get("job_id"))) for p in record["points"]]


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
    try:
        text = Path(log).read_text(errors="replace") if log else ""
    except OSError:
        return None
    found = re.findall(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Interrupt)): (.+)$", text, re.M)
    return f"{found[-1][0]}: {found[-1][1]}"[:300] if found else None


def collect(folder: Path) -> list:
    """Writes folder/grid.csv from grid.json, the run folders and SLURM's job states; returns the rows."""
    import pandas as pd

    rows = point_rows(read_record(folder))
    frame = pd.DataFrame(rows)
    for key in ("world_size", "last_epoch"):
        frame[key] = frame[key].astype("Int64")
    write_atomic(folder / "grid.csv", lambda tmp: frame.to_csv(tmp, index=False))
    return rows


HALVING_COLUMNS = ("rung", "rung_epochs", "epochs_trained", "rank_epochs", "stopped_early")


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


def progress(row: dict, now=None) -> dict:
    """Where a point is: epoch k of N, last validation accuracy, seconds so far and an estimate of those left."""
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


PROGRESS_HEADER = ["point", "status", "epoch", "val_acc", "elapsed", "left", "reason"]


def progress_cells(p: dict) -> list:
    return [p["point"], p["status"], f"{p['epoch']}/{p['epochs'] or '?'}", tables.number(p["val_accuracy"]),
            tables.clock(p["elapsed"]) if p["elapsed"] is not None else "-",
            tables.clock(p["left"]) if p["left"] is not None else "-", (p["reason"] or "")[:80]]


def show(folder) -> str:
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


def _count(values):
    counts = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts
