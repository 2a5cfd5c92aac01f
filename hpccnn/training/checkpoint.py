"""A run's checkpoint and resuming from it: the one place that writes and reads them.

After every finished epoch rank 0 saves RUN_FOLDER/checkpoint/epoch-NNNN/ (weights.h5,
optimizer.npz, state.json: epoch, learning rate, history rows and callback state), then points
checkpoint/latest.json at it, so a job killed at any moment leaves the previous one usable.
A resumed run (--resume, or a requeued SLURM job) starts from a Resume record read from there.
"""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

from hpccnn.common.files import read_json, write_atomic, write_json
from hpccnn.common.runs import this_jobs_folders

CALLBACK_STATE = ("wait", "best", "cooldown_counter")  # what ReduceLROnPlateau needs to go on as it was


@dataclasses.dataclass(frozen=True)
class Resume:
    """Where a resumed run starts: its folder and its latest checkpoint (none before the first epoch)."""

    folder: str
    epoch: int = 0  # the last finished epoch
    checkpoint: str | None = None  # its checkpoint folder
    learning_rate: float | None = None
    history: list = dataclasses.field(default_factory=list)  # history.csv's rows so far
    callbacks: list = dataclasses.field(default_factory=list)  # each stateful callback's state


def save(folder, model, epoch: int, history: list, stateful=()) -> None:
    """Everything needed to resume after this epoch, then latest.json pointing at it; older ones removed."""
    import tensorflow as tf

    root = Path(folder) / "checkpoint"
    root.mkdir(exist_ok=True)
    state = {"epoch": epoch, "learning_rate": float(tf.keras.backend.get_value(model.optimizer.learning_rate)),
             "history": history, "callbacks": [callback_state(c) for c in stateful]}

    def write(tmp: Path):
        tmp.mkdir()
        model.save_weights(tmp / "weights.h5", save_format="h5")
        with open(tmp / "optimizer.npz", "wb") as f:
            np.savez(f, *model.optimizer.get_weights())
        (tmp / "state.json").write_text(json.dumps(state, default=float))

    final = root / f"epoch-{epoch:04d}"
    write_atomic(final, write)  # replaces a stale copy from an attempt that died before latest.json
    write_json(root / "latest.json", {"epoch": epoch, "folder": final.name})
    for old in root.glob("epoch-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def load(folder) -> Resume:
    """The Resume record of a run folder: its latest checkpoint's, or epoch 0 before the first."""
    folder = Path(folder)
    info = read_json(folder / "checkpoint" / "latest.json")
    if info is None:
        return Resume(str(folder))
    path = folder / "checkpoint" / info["folder"]
    state = json.loads((path / "state.json").read_text())
    return Resume(str(folder), int(info["epoch"]), str(path), state["learning_rate"], state.get("history", []),
                  state.get("callbacks", []))


def restore(model, resume: Resume) -> None:
    """Weights, optimizer slots and iteration count, and learning rate as they were after that epoch."""
    import tensorflow as tf

    if resume.checkpoint is None:
        return
    model.load_weights(str(Path(resume.checkpoint) / "weights.h5"))
    with np.load(Path(resume.checkpoint) / "optimizer.npz") as saved:
        weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    optimizer = model.optimizer  # under mixed precision, a LossScaleOptimizer around Horovod's
    getattr(optimizer, "inner_optimizer", optimizer)._create_all_weights(model.trainable_variables)  # slots exist only after the first step otherwise
    optimizer.set_weights(weights)
    tf.keras.backend.set_value(optimizer.learning_rate, resume.learning_rate)


def callback_state(callback) -> dict:
    return {k: float(getattr(callback, k)) for k in CALLBACK_STATE if hasattr(callback, k)}


def restore_callbacks(stateful, resume: Resume) -> list:
    """Keras callbacks that give each stateful callback its saved state, after its on_train_begin
    (which resets it); place them after those callbacks."""
    import tensorflow as tf

    def restore_one(callback, state):
        for key, value in state.items():
            setattr(callback, key, int(value) if key != "best" else value)

    return [tf.keras.callbacks.LambdaCallback(on_train_begin=lambda logs, c=c, s=s: restore_one(c, s))
            for c, s in zip(stateful, resume.callbacks)]


def restart_count() -> int:
    value = os.environ.get("SLURM_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def to_resume(resume, results_dir, experiment: str, run_dir=None) -> Resume | None:
    """What this run resumes: the --resume folder, or, in a SLURM job that was requeued
    (SLURM_RESTART_COUNT > 0), its --run-dir or the folder with its job id; None for a new run."""
    if resume:
        return load(Path(resume).resolve())
    if restart_count() == 0:
        return None
    if run_dir is not None:
        found = [Path(run_dir).resolve()] if Path(run_dir).is_dir() else []
    else:
        found = this_jobs_folders(results_dir, experiment)
    return load(found[-1]) if found else None
