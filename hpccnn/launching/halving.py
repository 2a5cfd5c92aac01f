"""Successive halving of a grid: train every point a little, continue only the best.

Rung 0 trains every point for --min-epochs; the best 1/ETA of a rung by validation accuracy go on to
the next rung, ETA times as many epochs, by resuming their own run folders from their checkpoints,
until the last rung reaches the experiment's epochs. The rest stop where they are and keep their
results (test scores at the epochs they trained). A failed point is never promoted.
"""

import math

from hpccnn.common.errors import UserError
from hpccnn.common.runs import COMPLETED


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
