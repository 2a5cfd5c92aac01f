"""Rank 0's side effects, all of them: the dated run folder and everything written into it.

Every file is written to a temporary name and renamed into place, so a folder never
holds a truncated CSV, JSON, plot or model, and a run never writes into another's folder.
"""

import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hpccnn import dist

SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NAME",
                   "SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE",
                   "SLURM_CPUS_PER_TASK", "SLURM_JOB_PARTITION", "SLURM_SUBMIT_DIR")


def read_json(path):
    """A JSON file's content, or None when it is missing or unreadable (a run still being written)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def job_tag() -> str:
    """What makes a run name unique beyond its time: SLURM job (and array task) id, else the pid."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"job{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    if "SLURM_JOB_ID" in env:
        return f"job{env['SLURM_JOB_ID']}"
    return f"pid{os.getpid()}"


def create_run_folder(results_dir, experiment: str, now=None) -> Path:
    """results/<YYYY-MM-DD>/<experiment>-<HHMMSS>-<job or pid>, never an existing folder."""
    now = now or datetime.datetime.now()
    day = Path(results_dir) / now.strftime("%Y-%m-%d")
    day.mkdir(parents=True, exist_ok=True)
    base = f"{experiment}-{now.strftime('%H%M%S')}-{job_tag()}"
    for attempt in range(1, 1000):
        folder = day / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            folder.mkdir()  # atomic: fails if another run took the name first
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a unique run folder under {day}")


def _atomic(path: Path, write):
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import tensorflow as tf

    from hpccnn import __version__

    found = {"hpccnn": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
             "numpy": np.__version__}
    for name in ("horovod", "mpi4py", "sklearn", "pandas", "submitit"):
        try:
            found[name] = __import__(name).__version__
        except Exception:  # a missing optional package is recorded as absent, not fatal
            found[name] = None
    return found


class RunWriter:
    """Writes one run's folder. Only rank 0 ever makes one."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.metrics = {}  # metrics.json's fields, kept here so each update is one write
        self.wall_before = 0.0  # training seconds of the attempts before this one (a resumed run)

    @classmethod
    def create(cls, results_dir, experiment: str, world, run_dir=None) -> "RunWriter":
        """A new dated folder under results_dir, or exactly run_dir (which must not exist yet)."""
        if not world.is_main:
            raise RuntimeError("only rank 0 writes results")
        if run_dir is None:
            return cls(create_run_folder(Path(results_dir).resolve(), experiment))
        folder = Path(run_dir).resolve()
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()  # atomic: fails if another run has it
        except FileExistsError:
            from hpccnn.errors import UserError

            raise UserError(f"run folder {folder} already exists; hpccnn never writes into an existing run folder") from None
        return cls(folder)

    @classmethod
    def reopen(cls, folder) -> "RunWriter":
        """A run folder being resumed: its metrics so far are kept and updated."""
        writer = cls(folder)
        writer.metrics = json.loads(writer.path("metrics.json").read_text())
        if writer.metrics.get("status") != "completed":  # a completed run trained further starts its count anew
            writer.wall_before = writer.metrics.get("wall_seconds", 0)
        return writer

    def wall_seconds(self, started: float) -> float:
        """Training seconds of this run so far, over every attempt."""
        return round(self.wall_before + time.time() - started, 3)

    def guard(self):
        """Starts hpccnn.guard, which marks this run failed if this process dies without saying so
        (SIGKILL, out of memory, or the launcher killing it after another rank died)."""
        subprocess.run([sys.executable, "-m", "hpccnn.guard", "--detach", str(os.getpid()), str(self.folder)],
                       start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)  # returns once the guard has detached

    def path(self, name: str) -> Path:
        return self.folder / name

    def text(self, name: str, text: str):
        _atomic(self.path(name), lambda tmp: tmp.write_text(text))

    def json(self, name: str, obj):
        self.text(name, json.dumps(obj, indent=2, default=str) + "\n")

    def csv(self, name: str, frame, index=False):
        _atomic(self.path(name), lambda tmp: frame.to_csv(tmp, index=index))

    def figure(self, name: str, fig):
        import matplotlib.pyplot as plt

        _atomic(self.path(name), lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)

    def model(self, name: str, model):
        # HDF5 without the optimizer: Horovod's optimizer wrapper is not needed to reload for inference.
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy")
            _atomic(self.path(name), lambda tmp: model.save(tmp, save_format="h5", include_optimizer=False))

    def checkpoint(self, model, epoch: int, **state):
        """Everything needed to resume after this epoch: weights, optimizer state, learning rate,
        history and callback state, in checkpoint/epoch-NNNN/, then pointed at by checkpoint/latest.json.

        The folder is written under a temporary name and renamed, and latest.json is replaced
        atomically after it, so a job killed at any moment leaves the previous checkpoint usable.
        """
        import shutil

        import tensorflow as tf

        root = self.path("checkpoint")
        root.mkdir(exist_ok=True)
        tmp = root / f".epoch-{epoch:04d}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model.save_weights(tmp / "weights.h5", save_format="h5")
        with open(tmp / "optimizer.npz", "wb") as f:
            np.savez(f, *model.optimizer.get_weights())
        lr = float(tf.keras.backend.get_value(model.optimizer.learning_rate))
        (tmp / "state.json").write_text(json.dumps({"epoch": epoch, "learning_rate": lr, **state}, default=float))
        final = root / f"epoch-{epoch:04d}"
        shutil.rmtree(final, ignore_errors=True)  # a stale copy from an attempt that died before latest.json
        os.replace(tmp, final)
        self.json("checkpoint/latest.json", {"epoch": epoch, "folder": final.name})
        for old in root.glob("epoch-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    def start(self, exp, world, hosts: list, argv: list, data_dir=None, speed=None):
        self.json("config.json", dataclasses.asdict(exp))
        env = os.environ
        self.json("provenance.json", {
            "command": shlex.join([sys.executable, *argv]),
            "cwd": os.getcwd(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "versions": versions(),
            "world_size": world.size,
            "hosts": sorted({h["host"] for h in hosts}),
            "ranks": hosts,
            "slurm": {k: env[k] for k in SLURM_VARIABLES if k in env},
            "launcher": dist.launcher(),
            "data_dir": str(data_dir) if data_dir else None,
            "speed": speed,  # the speed settings as applied on this node (config.json has them as asked)
        })
        self.status("running", world_size=world.size)
        self.link_slurm_logs()

    def resumed(self, epoch: int, argv: list, hosts: list):
        """Notes a resume in metrics.json and provenance.json (which keeps every attempt's command)."""
        provenance = json.loads(self.path("provenance.json").read_text())
        provenance.setdefault("resumes", []).append({
            "after_epoch": epoch, "command": shlex.join([sys.executable, *argv]),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "hosts": sorted({h["host"] for h in hosts}),
            "slurm": {k: os.environ[k] for k in (*SLURM_VARIABLES, "SLURM_RESTART_COUNT") if k in os.environ}})
        self.json("provenance.json", provenance)
        self.metrics.pop("reason", None)
        self.status("running", resumed_after_epoch=epoch, resumes=len(provenance["resumes"]))
        self.link_slurm_logs()

    def link_slurm_logs(self):
        """slurm.out (and slurm.err) in the run folder, pointing at the job's own log files."""
        job = os.environ.get("SLURM_JOB_ID")
        if not job:
            return
        from hpccnn.slurm import job_fields

        fields = job_fields(job)
        for key, name in (("StdOut", "slurm.out"), ("StdErr", "slurm.err")):
            target = fields.get(key)
            if target and Path(target).exists() and not self.path(name).exists():
                if key == "StdErr" and target == fields.get("StdOut"):
                    continue
                self.path(name).symlink_to(target)

    def status(self, status: str, **fields):
        self.metrics.update(fields, status=status)
        self.json("metrics.json", self.metrics)

    def history(self, rows: list, curves=False):
        import pandas as pd

        self.csv("history.csv", pd.DataFrame(rows))
        if curves and rows:
            self.figure("curves.png", plot_curves(rows))

    def evaluation(self, y_true, y_pred, classes, images=None, examples=32):
        """predictions.csv, confusion matrix (CSV and PNG), the per-class report, misclassified examples."""
        import pandas as pd
        from sklearn.metrics import classification_report, confusion_matrix

        self.csv("predictions.csv", pd.DataFrame({"predict": y_pred, "test": y_true}))
        labels = list(range(len(classes)))
        cm = confusion_matrix(y_true, y_pred, labels=labels)
        frame = pd.DataFrame(cm, index=pd.Index(classes, name="true"), columns=classes)
        self.csv("confusion_matrix.csv", frame, index=True)
        self.figure("confusion_matrix.png", plot_confusion(cm, classes))
        report = classification_report(y_true, y_pred, labels=labels, target_names=classes,
                                       output_dict=True, zero_division=0)
        rows = [{"class": name, **report[name]} for name in classes]
        self.csv("classification_report.csv", pd.DataFrame(rows))
        if images is not None:
            self.misclassified(images, y_true, y_pred, classes, examples)
        return cm

    def misclassified(self, images, y_true, y_pred, classes, examples=32):
        """The first misclassified test images (uint8, test-set order) with true and predicted labels."""
        wrong = np.flatnonzero(np.asarray(y_true) != np.asarray(y_pred))[:examples]

        def save(tmp):
            with open(tmp, "wb") as f:
                np.savez_compressed(f, images=np.asarray(images)[wrong], index=wrong,
                                    true=np.asarray(y_true)[wrong], predicted=np.asarray(y_pred)[wrong],
                                    classes=np.asarray(classes))

        _atomic(self.path("misclassified.npz"), save)
        self.figure("misclassified.png", plot_misclassified(np.asarray(images)[wrong], np.asarray(y_true)[wrong],
                                                            np.asarray(y_pred)[wrong], classes))


def epoch_ticks(ax, epochs, most=12) -> None:
    """Whole epochs on the x axis (at most `most` ticks), even for a 1-epoch run."""
    epochs = sorted({int(e) for e in epochs})
    ax.set_xticks(epochs[:: max(1, -(-len(epochs) // most))])
    ax.set_xlabel("epoch")


def plot_curves(rows, title=""):
    """Training and validation accuracy and loss per epoch, from history rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for key, style in ((metric, "b-o"), (f"val_{metric}", "r-o")):
            if key in rows[0]:
                ax.plot(epochs, [r[key] for r in rows], style, label=key)
        epoch_ticks(ax, epochs)
        ax.set_ylabel(metric)
        if title:
            ax.set_title(f"{title}: {metric}")
        ax.legend()
        ax.grid(alpha=0.3)
    return fig


def plot_confusion(cm, classes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(classes), 1 + 0.55 * len(classes)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
    return fig


def plot_misclassified(images, true, predicted, classes, columns=8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, t, p in zip(axes.flat, images, true, predicted):
        ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 or image.ndim == 2 else None,
                  interpolation="nearest")
        ax.set_title(f"true: {classes[t]}\npred: {classes[p]}", fontsize=7, color="darkred")
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
    fig.tight_layout()
    return fig
