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
from pathlib import Path

import numpy as np

SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NAME",
                   "SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE",
                   "SLURM_CPUS_PER_TASK", "SLURM_JOB_PARTITION", "SLURM_SUBMIT_DIR")


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


def _ancestors(pid: int, limit=12):
    names = []
    for _ in range(limit):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            break
        names.append(cmdline or stat[stat.index("(") + 1:stat.rindex(")")])
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
        if pid <= 1:
            break
    return names


def launcher() -> str:
    """What started this rank, read from its ancestors.

    horovodrun execs mpirun (so no process is called horovodrun) with its own
    ``-x NCCL_SOCKET_IFNAME=...`` option, which plain mpirun lines lack.
    """
    names = " ".join(_ancestors(os.getppid()))
    if "horovodrun" in names or "NCCL_SOCKET_IFNAME=" in names:
        return "horovodrun"
    if any(tool in names for tool in ("mpirun", "orterun", "orted", "prterun")):
        return "mpirun"
    if "slurmstepd" in names or "SLURM_PROCID" in os.environ:
        return "srun"
    return "python"


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

    @classmethod
    def create(cls, results_dir, experiment: str, world) -> "RunWriter":
        if not world.is_main:
            raise RuntimeError("only rank 0 writes results")
        return cls(create_run_folder(Path(results_dir).resolve(), experiment))

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

    def checkpoint(self, model, epoch: int):
        """The weights after this epoch, replacing the previous epoch's only once complete."""
        self.path("checkpoint").mkdir(exist_ok=True)
        _atomic(self.path("checkpoint/weights.h5"), lambda tmp: model.save_weights(tmp, save_format="h5"))

    def start(self, exp, world, hosts: list, argv: list):
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
            "launcher": launcher(),
        })
        self.status("running", world_size=world.size)
        self.link_slurm_logs()

    def link_slurm_logs(self):
        """slurm.out (and slurm.err) in the run folder, pointing at the job's own log files."""
        job = os.environ.get("SLURM_JOB_ID")
        if not job:
            return
        try:
            info = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                                  timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return
        fields = dict(f.split("=", 1) for f in info.split() if "=" in f)
        for key, name in (("StdOut", "slurm.out"), ("StdErr", "slurm.err")):
            target = fields.get(key)
            if target and Path(target).exists() and not self.path(name).exists():
                if key == "StdErr" and target == fields.get("StdOut"):
                    continue
                self.path(name).symlink_to(target)

    def status(self, status: str, **fields):
        current = {}
        if self.path("metrics.json").exists():
            current = json.loads(self.path("metrics.json").read_text())
        current.update(fields, status=status)
        self.json("metrics.json", current)

    def history(self, rows: list, curves=False):
        import pandas as pd

        self.csv("history.csv", pd.DataFrame(rows))
        if curves and rows:
            self.figure("curves.png", plot_curves(rows))

    def evaluation(self, y_true, y_pred, classes):
        """predictions.csv, confusion matrix (CSV and PNG) and the per-class report."""
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
        return cm


def plot_curves(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for key, style in ((metric, "b-o"), (f"val_{metric}", "r-o")):
            if key in rows[0]:
                ax.plot(epochs, [r[key] for r in rows], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
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
