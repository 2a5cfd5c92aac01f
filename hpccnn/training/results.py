"""Rank 0's side effects, all of them: the dated run folder and everything written into it.

Every file goes through hpccnn.common.files.write_atomic, so a folder never holds a truncated CSV,
JSON, plot or model, and a run never writes into another's folder (hpccnn.common.runs names them).
The checkpoint is hpccnn.training.checkpoint's.
"""

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from hpccnn.common.errors import UserError
from hpccnn.common.files import write_atomic, write_bytes, write_json
from hpccnn.common.runs import FAILED, RUNNING, create_run_folder
from hpccnn.common.slurm import job_fields
from hpccnn.data import pack, userdata
from hpccnn.data.base import resolve_data_dir, sha256
from hpccnn.data.builtin import DATASETS
from hpccnn.training import dist, plots

SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NAME",
                   "SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE",
                   "SLURM_CPUS_PER_TASK", "SLURM_JOB_PARTITION", "SLURM_SUBMIT_DIR")


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


def hpccnn_version() -> str | None:
    """hpccnn's version as installed (pip install .), or None where it runs uninstalled."""
    try:
        return importlib.metadata.version("hpccnn")
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    import tensorflow as tf

    found = {"hpccnn": hpccnn_version(), "python": platform.python_version(), "tensorflow": tf.__version__,
             "numpy": np.__version__}
    for name in ("horovod", "mpi4py", "sklearn", "pandas", "submitit"):
        try:
            found[name] = __import__(name).__version__
        except Exception:  # a missing optional package is recorded as absent, not fatal
            found[name] = None
    return found


def pack_record(dataset: str, data_dir) -> dict | None:
    """The user's data a run trains on, as a resume checks it: a staged pack by its index.json's SHA-256, a folder
    by its files' names, sizes and times, an .npz or HDF5 file by its size and time; None for a built-in set."""
    if userdata.is_path(dataset):
        path = Path(dataset)
        if not path.exists():
            return None
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        stats = [(f, f.stat()) for f in files]
        listing = "\n".join(f"{f} {stat.st_size} {stat.st_mtime_ns}" for f, stat in stats)
        return {"path": str(path), "files": len(files), "listing_sha256": hashlib.sha256(listing.encode()).hexdigest()}
    folder = pack.find(dataset, resolve_data_dir(data_dir)) if dataset not in DATASETS else None
    return None if folder is None else {"name": dataset, "index_sha256": sha256(folder / "index.json")}


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
            raise UserError(f"run folder {folder} already exists; hpccnn never writes into an existing run folder") from None
        return cls(folder)

    @classmethod
    def reopen(cls, folder) -> "RunWriter":
        """A run folder being resumed: its metrics so far are kept and updated."""
        writer = cls(folder)
        writer.metrics = json.loads(writer.path("metrics.json").read_text())
        # every attempt counts, a completed run trained further too (a point promoted by successive halving)
        writer.wall_before = writer.metrics.get("wall_seconds") or 0
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

    def json(self, name: str, obj):
        write_json(self.path(name), obj)

    def csv(self, name: str, frame, index=False):
        write_atomic(self.path(name), lambda tmp: frame.to_csv(tmp, index=index))

    def figure(self, name: str, fig):
        write_bytes(self.path(name), plots.png(fig, dpi=110))

    def model(self, name: str, model):
        """The model as HDF5 without the optimizer (Horovod's wrapper is not needed to reload it for
        inference). A model Keras can't save whole (a subclassed model, a layer of the user's own without
        get_config) is saved as its weights, model_weights.h5, and metrics.json says why."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy")
            try:
                write_atomic(self.path(name), lambda tmp: model.save(tmp, save_format="h5", include_optimizer=False))
                return
            except (NotImplementedError, ValueError, TypeError) as err:
                reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        weights = self.path(name).with_name(f"{Path(name).stem}_weights.h5")  # (.weights.h5 is Keras 3's format)
        write_atomic(weights, lambda tmp: model.save_weights(tmp, save_format="h5"))
        self.metrics["model_saved"] = f"weights only, {weights.name}: Keras can't save this model whole ({reason})"
        print(f"hpccnn: {self.metrics['model_saved']}", flush=True)

    def model_source(self, spec) -> None:
        """A copy of the user's model file (none for a built-in or an installed library's) in model_source/,
        and its SHA-256 in provenance.json: a resumed or requeued run builds its model from that copy."""
        source = getattr(spec, "source", None)
        if source is None:
            return
        folder = self.path("model_source")
        folder.mkdir(exist_ok=True)
        write_atomic(folder / source.name, lambda tmp: shutil.copyfile(source, tmp))
        provenance = json.loads(self.path("provenance.json").read_text())
        provenance["model_source"] = {"reference": spec.ref, "file": str(source),
                                      "copy": f"model_source/{source.name}", "sha256": sha256(source)}
        self.json("provenance.json", provenance)

    def start(self, run, hosts: list):
        """A new run's config.json and provenance.json, from its context (hpccnn.training.context.Run) and the
        ranks' hosts; metrics.json says it is running."""
        exp, world, data_dir = run.exp, run.world, resolve_data_dir(run.options.data_dir)
        self.json("config.json", dataclasses.asdict(exp))
        env = os.environ
        self.json("provenance.json", {
            "command": shlex.join([sys.executable, *run.options.argv]),
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
            "pack": pack_record(exp.dataset, data_dir),  # a staged pack's index, which a resume checks
            "speed": run.fast,  # the speed settings as applied on this node (config.json has them as asked)
            # a pack's: held in memory or streamed from its shards, and why (hpccnn.training.stream.choose)
            "input": run.inputs.read,
        })
        self.status(RUNNING, world_size=world.size)
        self.link_slurm_logs()

    def memory(self, per_rank: list):
        """Each rank's memory at the end of training and evaluation (hpccnn.training.memory.usage, and how it held
        the data: hpccnn.training.shared.Held.facts) into provenance.json's ranks[].memory, and a line saying it."""
        provenance = json.loads(self.path("provenance.json").read_text())
        for entry, used in zip(provenance["ranks"], per_rank):
            entry["memory"] = used
        self.json("provenance.json", provenance)
        print(f"hpccnn: {memory_line(per_rank)}", flush=True)

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
        self.status(RUNNING, resumed_after_epoch=epoch, resumes=len(provenance["resumes"]))
        self.link_slurm_logs()

    def link_slurm_logs(self):
        """slurm.out (and slurm.err) in the run folder, pointing at the job's own log files."""
        job = os.environ.get("SLURM_JOB_ID")
        if not job:
            return
        fields = job_fields(job)
        for key, name in (("StdOut", "slurm.out"), ("StdErr", "slurm.err")):
            target = fields.get(key)
            if target and Path(target).exists() and not self.path(name).exists():
                if key == "StdErr" and target == fields.get("StdOut"):
                    continue
                self.path(name).symlink_to(target)

    def status(self, status: str, **fields):
        """metrics.json with this status (one of hpccnn.common.runs') and fields added to what it held."""
        self.metrics.update(fields, status=status)
        self.json("metrics.json", self.metrics)

    def failed(self, reason: str, started=None):
        """metrics.json says failed and why (with the training seconds so far, once training has started)."""
        self.status(FAILED, reason=reason, **({} if started is None else {"wall_seconds": self.wall_seconds(started)}))

    def history(self, rows: list, curves=False):
        import pandas as pd

        self.csv("history.csv", pd.DataFrame(rows))
        if curves and rows:
            self.figure("curves.png", plots.curves(rows))

    def evaluation(self, y_true, y_pred, classes, images):
        """predictions.csv, confusion matrix (CSV and PNG), the per-class report, misclassified examples."""
        import pandas as pd
        from sklearn.metrics import classification_report, confusion_matrix

        self.csv("predictions.csv", pd.DataFrame({"predict": y_pred, "test": y_true}))
        labels = list(range(len(classes)))
        cm = confusion_matrix(y_true, y_pred, labels=labels)
        frame = pd.DataFrame(cm, index=pd.Index(classes, name="true"), columns=classes)
        self.csv("confusion_matrix.csv", frame, index=True)
        self.figure("confusion_matrix.png", plots.confusion(cm, classes))
        report = classification_report(y_true, y_pred, labels=labels, target_names=classes,
                                       output_dict=True, zero_division=0)
        rows = [{"class": name, **report[name]} for name in classes]
        self.csv("classification_report.csv", pd.DataFrame(rows))
        self.misclassified(images, y_true, y_pred, classes)

    def misclassified(self, images, y_true, y_pred, classes):
        """The test images of the commonest confusions (misclassified.npz and .png): for each of the
        most frequent (true, predicted) pairs, how often it happened and its first images in test-set order."""
        y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
        groups = top_confusions(y_true, y_pred, len(classes))
        index = np.concatenate([g["index"] for g in groups]).astype(np.int64) if groups else np.zeros(0, np.int64)
        kept = np.asarray(images[index])  # an array, or a streamed pack's hpccnn.training.stream.TestImages

        def save(tmp):
            with open(tmp, "wb") as f:
                np.savez_compressed(f, images=kept, index=index, true=y_true[index], predicted=y_pred[index],
                                    classes=np.asarray(classes),
                                    **{f"pair_{k}": np.asarray([g[k] for g in groups], np.int64)
                                       for k in ("true", "predicted", "count", "support")})

        write_atomic(self.path("misclassified.npz"), save)
        self.figure("misclassified.png", plots.confusions(kept, classes, groups))


def commonest_confusions(cm, pairs: int) -> list:
    """(true, predicted, count) of the pairs most often confused in the confusion matrix cm (rows: true
    class), most frequent first, ties in class order; pairs never confused are left out."""
    off = np.array(cm, np.int64)
    np.fill_diagonal(off, 0)
    n = len(off)
    return [(int(i) // n, int(i) % n, int(off.flat[i])) for i in np.argsort(-off, axis=None, kind="stable")[:pairs]
            if off.flat[i]]


def top_confusions(y_true, y_pred, classes: int, pairs=6, per_pair=8) -> list:
    """The pairs most often confused, most frequent first (ties in class order): for each, the true
    and predicted class, how many test images it took, how many of the true class there are, and the
    test-set indices of its first per_pair images."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    cm = np.bincount(y_true * classes + y_pred, minlength=classes * classes).reshape(classes, classes)
    return [{"true": t, "predicted": p, "count": count, "support": int(cm[t].sum()),
             "index": np.flatnonzero((y_true == t) & (y_pred == p))[:per_pair]}
            for t, p, count in commonest_confusions(cm, pairs)]


def memory_line(per_rank: list) -> str:
    """The ranks' peak memory and how they hold the data set, in one line."""
    mb = 2 ** 20
    peaks = ", ".join(f"{r['peak_rss_bytes'] / mb:,.0f}" for r in per_rank)
    d = per_rank[0]["data"]
    if d["held_as"] == "streamed":
        held = (f"streamed from its shards, a shuffle buffer of up to {d['own_bytes'] / mb:,.0f} MB per rank; rank 0 "
                f"reads {len(d.get('reads', []))} shard(s)")
        return f"peak memory {'per rank' if len(per_rank) > 1 else 'of the process'}: {peaks} MB; the data set: {held}"
    if d["held_as"] == "node window":
        held = f"{d['window_bytes'] / mb:,.0f} MB shared by the {d['window_ranks']} ranks of a node"
    else:
        held = f"{d['own_bytes'] / mb:,.0f} MB in each rank's own copy"
    ranks = f"per rank (0 to {len(per_rank) - 1})" if len(per_rank) > 1 else "of the process"
    return (f"peak memory {ranks}: {peaks} MB; the data set: {held}, and {d['shard_bytes'] / mb:,.0f} MB of "
            f"rank 0's shards in TensorFlow (provenance.json, ranks[].memory)")
