"""Successive halving of a grid: train every point a little, continue only the best.

Rung 0 trains every point for --min-epochs; the best 1/ETA of a rung by validation accuracy go on to
the next rung, ETA times as many epochs, by resuming their own run folders from their checkpoints,
until the last rung reaches the experiment's epochs. The rest stop where they are and keep their
results (test scores at the epochs they trained). A failed point is never promoted.

The rungs' arithmetic and the promotion come first; then the rungs as jobs: each rung one submission
of its points, the next started by this process (locally, or with --wait) or by an Advance job on SLURM.
"""

import argparse
import math
import os
from pathlib import Path

from hpccnn.common.errors import UserError
from hpccnn.common.files import read_json, write_json
from hpccnn.common.runs import COMPLETED
from hpccnn.launching.jobs import after_submit, run_points, submit_follow_up, wait_for_slurm
from hpccnn.launching.record import read_record
from hpccnn.launching.status import collect, point_rows, progress


def rung_epochs(min_epochs: int, eta: int, epochs: int) -> list:
    """The epochs each rung ends at: min_epochs, times ETA while the next still fits, then epochs.

    min 1, ETA 3, 9 epochs: [1, 3, 9]; 10 epochs: [1, 3, 10]."""
    rungs, e = [], min_epochs
    while e * eta <= epochs:
        rungs.append(e)
        e *= eta
    return [*rungs, epochs]


def survivors(points: int, eta: int, rungs: int) -> list:
    """How many points each rung trains: n, ceil(n/ETA), ..."""
    counts = [points]
    for _ in range(rungs - 1):
        counts.append(math.ceil(counts[-1] / eta))
    return counts


def check(eta, min_epochs, epochs_of_points) -> list:
    """The rungs' epochs for these options and the points' epochs, or a UserError saying what to change."""
    if eta is None:
        if min_epochs is not None:
            raise UserError("--min-epochs goes with --halving ETA (the best 1/ETA of each rung go on)")
        return []
    if eta < 2:
        raise UserError(f"--halving must be 2 or more (the best 1/ETA of each rung go on), got {eta}")
    min_epochs = 1 if min_epochs is None else min_epochs
    if min_epochs <= 0:
        raise UserError(f"--min-epochs must be a positive integer, got {min_epochs}")
    if len(set(epochs_of_points)) != 1:
        raise UserError("--halving needs every point to train for the same --epochs; don't sweep --epochs")
    (epochs,) = set(epochs_of_points)
    rungs = rung_epochs(min_epochs, eta, epochs)
    if len(rungs) < 2:
        raise UserError(f"--halving {eta} --min-epochs {min_epochs} leaves one rung of {epochs} epoch(s): nothing "
                        f"to stop early; lower --min-epochs or raise --epochs (at least {min_epochs * eta})")
    return rungs


def rank_epochs(counts: list, rungs: list, ranks: int) -> int:
    """Rank-epochs a halving trains at most: each rung's points continue from the rung before."""
    return sum(n * (e - before) * ranks for n, e, before in zip(counts, rungs, [0, *rungs[:-1]]))


def promote(rows: list, count: int) -> list:
    """The labels of the best count points of a rung: completed ones only, by validation accuracy, then
    lower validation loss, then grid order (so ties are decided the same way every time)."""
    done = [(i, r) for i, r in enumerate(rows) if r["status"] == COMPLETED and r["val_accuracy"] is not None]

    def loss(row):
        return math.inf if row.get("val_loss") is None else row["val_loss"]

    done.sort(key=lambda ir: (-ir[1]["val_accuracy"], loss(ir[1]), ir[0]))
    return [r["point"] for _, r in done[:count]]


def describe_rungs(args, points, rungs) -> str:
    """The rungs of a halving grid: points and epochs of each, and the training they cost at most."""
    ranks = args.nodes * args.ntasks_per_node
    counts = survivors(len(points), args.halving, len(rungs))
    lines = [f"successive halving, ETA {args.halving}: {len(rungs)} rungs"]
    for k, (n, e) in enumerate(zip(counts, rungs)):
        lines.append(f"  rung {k}: {'every point' if k == 0 else f'the best {n}'} ({n}) to epoch {e}")
    full = len(points) * rungs[-1] * ranks
    lines.append(f"{rank_epochs(counts, rungs, ranks)} rank-epochs at most, against {full} for the whole grid "
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
        count = survivors(len(record["points"]), h["eta"], len(h["epochs"]))[k]
        labels = promote(done, count)
        h["rungs"][k - 1]["promoted"] = labels
    for p in record["points"]:
        if k and p["label"] in h["rungs"][k - 1]["points"]:  # a failed point did not stop early: it failed
            p["stopped_early"] = p["label"] not in labels and rows[p["label"]]["status"] == COMPLETED
    if not labels:  # every point of the rung before failed
        write_json(folder / "grid.json", record)
        return after_submit(args, folder, [], final=True)
    h["rungs"].append({"epochs": epochs, "points": labels})
    chosen = [p for p in record["points"] if p["label"] in labels]
    for p in chosen:
        p["rung"], p["stopped_early"] = k, False
        if k == 0:
            p["run_args"] = with_epochs(p["train_args"], epochs)
        else:
            p["run_args"] = ["--resume", p["run_dir"], "--epochs", str(epochs), *resume_extras(p["train_args"])]
            for key in ("state", "reason"):
                p.pop(key, None)
    print(f"hpccnn: rung {k}: {len(chosen)} point(s) to epoch {epochs}: {', '.join(labels)}", flush=True)
    jobs = run_points(args, record, chosen, folder, args.nodes * args.ntasks_per_node, record["grid"])
    return after_rung(args, folder, jobs, k)


def after_rung(args, folder: Path, jobs, k: int) -> int:
    """Once rung k's points (or those of it resubmitted) are submitted: the next rung, or grid.csv after the last."""
    last = k == len(read_json(folder / "grid.json")["halving"]["epochs"]) - 1
    if args.cluster == "slurm":
        print(f"hpccnn: submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} task(s)) for rung {k}")
        if not args.wait:
            if last:
                return after_submit(args, folder, jobs)
            job = submit_follow_up(args, folder, jobs, Advance(folder, k + 1), "hpccnn-halving")
            record = read_json(folder / "grid.json")
            record["halving"]["advance"] = job.job_id  # --resubmit waits for it
            write_json(folder / "grid.json", record)
            print(f"hpccnn: job {job.job_id} starts rung {k + 1} when rung {k} has ended "
                  f"(progress: python -m hpccnn.submit --status {folder})", flush=True)
            return 0
        wait_for_slurm(jobs, folder)
    if last:
        return after_submit(args, folder, [], final=True)
    return run_rung(args, read_record(folder), folder, k + 1)


class Advance:
    """The small job that runs after a rung of a halving grid on SLURM: promotes and starts the next rung."""

    def __init__(self, folder, rung: int):
        self.folder, self.rung = str(folder), rung

    def __call__(self):
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


def with_epochs(train_args: list, epochs: int) -> list:
    """A point's hpccnn.train options with --epochs set to epochs (a rung's)."""
    args = list(train_args)
    if "--epochs" in args:
        args[args.index("--epochs") + 1] = str(epochs)
        return args
    return [*args, "--epochs", str(epochs)]


def resume_extras(given: list) -> list:
    """Of a point's hpccnn.train options, those that go with --resume: --no-save-model and --data-dir."""
    extra = ["--no-save-model"] * ("--no-save-model" in given)
    if "--data-dir" in given:
        extra += given[given.index("--data-dir"):given.index("--data-dir") + 2]
    return extra
