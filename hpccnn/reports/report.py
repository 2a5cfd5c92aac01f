"""python -m hpccnn.report PATH: the seeds' tables and figures from hpccnn's result folders.

PATH is a run folder, a grid folder (from hpccnn.submit) or a date folder (``results/<date>``).
The report goes into PATH as ``report.html`` (self-contained: images embedded) and
``report.md`` (images beside it in ``report_files/``). For each run: its settings, final
metrics next to the figure the seed reports, accuracy and loss curves, the confusion matrix,
per-class precision/recall/F1 with the best and worst classes, and misclassified test images.
For a grid: every point in one table (best first, best marked), the points' validation curves
in one plot, and the best point's model reloaded from disk and evaluated again.
"""

import argparse
import base64
import html
import sys
from pathlib import Path

import numpy as np

from hpccnn.common.errors import Parser, UserError, cli, command_prog
from hpccnn.common.files import read_json, write_bytes, write_text
from hpccnn.common.runs import COMPLETED
from hpccnn.common.tables import markdown, number
from hpccnn.data import datasets
from hpccnn.models import usermodel, zoo
from hpccnn.models.experiments import Experiment
from hpccnn.training import plots
from hpccnn.training.inputs import pipeline
from hpccnn.training.results import commonest_confusions

SETTINGS = ["model", "dataset", "image_size", "activation", "optimizer", "learning_rate", "batch_size",
            "batch_per_rank", "epochs", "validation", "seed"]


def _read_csv(path: Path, **options):
    import pandas as pd

    try:
        return pd.read_csv(path, **options)
    except (OSError, ValueError):
        return None


def is_run(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / "metrics.json").exists()


def is_grid(folder: Path) -> bool:
    return (folder / "grid.json").exists()


class Figure:
    """A matplotlib figure as PNG bytes, with a file name for report.md."""

    def __init__(self, fig, name: str, alt: str):
        self.png, self.name, self.alt = plots.png(fig, dpi=100), name, alt

    def html(self) -> str:
        data = base64.b64encode(self.png).decode()
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(self.alt)}">'


class Report:
    """Collects blocks as HTML and Markdown side by side."""

    def __init__(self, title: str):
        self.title, self.html, self.md, self.figures = title, [], [f"# {title}\n"], []

    def heading(self, text: str, level=2, anchor=None):
        ident = f' id="{html.escape(anchor)}"' if anchor else ""
        self.html.append(f"<h{level}{ident}>{html.escape(text)}</h{level}>")
        self.md.append(f"{'#' * level} {text}\n")

    def paragraph(self, text: str, css=None):
        cls = f' class="{css}"' if css else ""
        self.html.append(f"<p{cls}>{html.escape(text)}</p>")
        self.md.append(f"{text}\n")

    def table(self, header, rows, ident=None, marked=None, css=None):
        """rows: lists of cells; marked: the index of the row to mark as best."""
        attrs = (f' id="{ident}"' if ident else "") + (f' class="{css}"' if css else "")
        out = [f"<table{attrs}><thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
               + "</tr></thead><tbody>"]
        for i, row in enumerate(rows):
            mark = ' class="best"' if i == marked else ""
            out.append(f"<tr{mark}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
        out.append("</tbody></table>")
        self.html.append("".join(out))
        self.md.append(markdown(header, rows))

    def figure(self, fig: Figure):
        self.figures.append(fig)
        self.html.append(f"<figure>{fig.html()}<figcaption>{html.escape(fig.alt)}</figcaption></figure>")
        self.md.append(f"![{fig.alt}](report_files/{fig.name})\n")

    def write(self, folder: Path):
        files = folder / "report_files"
        files.mkdir(exist_ok=True)
        for fig in self.figures:
            write_bytes(files / fig.name, fig.png)
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
                 "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f0f0f0}"
                 "tr.best{background:#d9f2d9;font-weight:bold}img{max-width:100%}"
                 "p.note{color:#555}p.ok{color:#070}p.bad{color:#a00}section{border-top:2px solid #ddd}")
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>"
                + "\n".join(self.html) + "</body></html>\n")
        write_text(folder / "report.html", page)
        write_text(folder / "report.md", "\n".join(self.md))




def run_section(report: Report, folder: Path, prefix: str):
    """One run: settings, metrics against the seed, curves, confusion matrix, per-class table, mistakes."""
    config = read_json(folder / "config.json") or {}
    metrics = read_json(folder / "metrics.json") or {}
    history = _read_csv(folder / "history.csv")
    report.html.append("<section>")
    report.heading(f"Run {folder.name}", 2, anchor=f"run-{folder.name}")
    report.table(["setting", "value"], [[k, config.get(k)] for k in SETTINGS if k in config], css="settings")
    last = history.iloc[-1].to_dict() if history is not None and len(history) else {}
    report.table(["", "this run", "reported in the seed"], [
        ["status", metrics.get("status", "-"), ""],
        ["test accuracy", number(metrics.get("test_accuracy")), config.get("reported") or "-"],
        ["test loss", number(metrics.get("test_loss")), ""],
        ["final val accuracy", number(last.get("val_accuracy")), ""],
        ["epochs finished", number(metrics.get("last_epoch")), number(config.get("epochs"))],
        ["ranks (world size)", number(metrics.get("world_size")), ""],
        ["training seconds", number(metrics.get("wall_seconds"), 1), ""],
    ], css="metrics")
    if metrics.get("reason"):
        report.paragraph(f"failed: {metrics['reason']}", css="bad")
    if history is not None and len(history):
        report.figure(Figure(plots.curves(history.to_dict("records"), config.get("name", folder.name)), f"{prefix}curves.png",
                             f"{folder.name}: accuracy and loss per epoch"))
    cm = _read_csv(folder / "confusion_matrix.csv", dtype={"true": str})
    if cm is not None:
        cm = cm.set_index(cm.columns[0])
        report.heading("Confusion matrix (rows: true class, columns: predicted)", 3)
        report.figure(Figure(plots.confusion(cm.to_numpy(), [str(c) for c in cm.columns]), f"{prefix}confusion.png", f"{folder.name}: confusion matrix"))
    per_class = _read_csv(folder / "classification_report.csv", dtype={"class": str})
    if per_class is not None and len(per_class):
        report.heading("Per class", 3)
        report.table(["class", "precision", "recall", "f1-score", "support"],
                     [[r["class"], number(r["precision"], 3), number(r["recall"], 3), number(r["f1-score"], 3),
                       int(r["support"])] for _, r in per_class.iterrows()], css="per-class")
        ordered = per_class.sort_values("f1-score", kind="stable")
        worst, best = ordered.iloc[0], ordered.iloc[-1]
        report.paragraph(f"Best class: {best['class']} (F1 {best['f1-score']:.3f}); worst class: "
                         f"{worst['class']} (F1 {worst['f1-score']:.3f}).", css="note")
    if cm is not None:
        common = frequent_confusions(cm.to_numpy(), [str(c) for c in cm.columns])
        if common:
            report.heading("Most frequent confusions", 3)
            report.table(["true class", "predicted as", "test images", "share of the true class"], common,
                         css="confusions")
    mistakes = folder / "misclassified.npz"
    if mistakes.exists():
        with np.load(mistakes) as m:
            classes = [str(c) for c in m["classes"]]
            images, groups = mistake_groups(m)
        report.heading("Misclassified test images, a row per confusion (the commonest first)", 3)
        report.figure(Figure(plots.confusions(images, classes, groups), f"{prefix}misclassified.png",
                             f"{folder.name}: misclassified test images"))
    report.html.append("</section>")


def frequent_confusions(cm, classes, top=10) -> list:
    """Rows (true, predicted, count, share of the true class) of the top most frequent confusions."""
    return [[classes[t], classes[p], f"{count:,}", f"{count / max(1, cm[t].sum()):.1%}"]
            for t, p, count in commonest_confusions(cm, top)]


def mistake_groups(npz):
    """misclassified.npz's images in row order and their groups (plots.confusions): the pairs and
    counts it records, or, in a folder written before it recorded them, its pairs, the most frequent first."""
    true, predicted = npz["true"], npz["predicted"]
    if "pair_count" in npz.files:
        pairs = list(zip(npz["pair_true"], npz["pair_predicted"], npz["pair_count"], npz["pair_support"]))
    else:
        seen = {}
        for pair in zip(true, predicted):
            seen[pair] = seen.get(pair, 0) + 1
        pairs = [(t, p, None, None) for (t, p), _ in sorted(seen.items(), key=lambda kv: -kv[1])]  # stable
    order, groups = [], []
    for t, p, count, support in pairs:
        index = np.flatnonzero((true == t) & (predicted == p))
        order.extend(index)
        groups.append({"true": int(t), "predicted": int(p), "count": count and int(count),
                       "support": support and int(support), "index": index})
    return npz["images"][np.asarray(order, np.int64)], groups


def saved_model(folder: Path) -> Path | None:
    """A run's saved model: model.h5, or model_weights.h5 where Keras could not save it whole; None."""
    return next((p for p in (folder / "model.h5", folder / "model_weights.h5") if p.exists()), None)


def reevaluate(folder: Path, data_dir) -> float:
    """The run's model.h5, reloaded from disk, evaluated again on the run's own test split."""
    import tensorflow as tf

    config = read_json(folder / "config.json")
    prov = read_json(folder / "provenance.json") or {}
    exp = Experiment(**config)
    splits = datasets.load_split(exp, data_dir or prov.get("data_dir"))
    if usermodel.is_reference(exp.model):  # rebuilt from the run's copy of the user's code, its weights loaded
        shape = (exp.image_size, exp.image_size) if exp.image_size else splits.shape[:2]
        model = zoo.for_run_folder(exp, folder)((*shape, splits.shape[2]), len(splits.classes),
                                                   activation=exp.activation)
        model.load_weights(saved_model(folder))
    else:
        model = tf.keras.models.load_model(folder / "model.h5", compile=False)
    outputs = model.predict(pipeline(splits.x_test, splits.y_test, 256, splits.scale, config["image_size"]),
                            verbose=0)
    return float((outputs.argmax(axis=1) == splits.y_test).mean())


def _run_folder(grid: Path, row) -> Path:
    """A point's run folder: beside grid.csv (so a copied grid folder still works), else as recorded."""
    here = grid / str(row["point"])
    return here if here.is_dir() else Path(str(row["run_folder"]))


def grid_section(report: Report, folder: Path, data_dir, check_best: bool):
    import pandas as pd

    record = read_json(folder / "grid.json")
    frame = _read_csv(folder / "grid.csv")
    if frame is None:
        raise UserError(f"{folder} has no grid.csv yet; run python -m hpccnn.submit --collect {folder} first")
    axes = list(record.get("axes", {}))
    halved = (record or {}).get("halving") and "epochs_trained" in frame
    order = (["epochs_trained", "test_accuracy"] if halved else ["test_accuracy"])
    frame = frame.sort_values(order, ascending=False, na_position="last", kind="stable")
    report.heading(f"Grid {record.get('grid', folder.name)}: {len(frame)} points", 2, anchor="grid")
    report.paragraph(f"Experiment {record.get('experiment')}; swept: {', '.join(axes) or '(none)'}; sorted by "
                     + ("epochs trained, then " if halved else "") + "test accuracy, best row marked.", css="note")
    header = ["", "point", *axes, "status", "test accuracy", "test loss", "seconds", "ranks",
              *(["rung", "epochs trained", "stopped"] if halved else []), "note"]
    rows = []
    for i, (_, r) in enumerate(frame.iterrows()):
        ranks = int(r["world_size"]) if pd.notna(r.get("world_size")) else None
        note = str(r["reason"])[:90] if pd.notna(r.get("reason")) else ""
        rows.append(["★" if i == 0 and r["status"] == COMPLETED else "", r["point"], *(r[a] for a in axes),
                     r["status"], number(r["test_accuracy"]), number(r["test_loss"]), number(r["wall_seconds"], 1),
                     number(ranks), *([int(r["rung"]), int(r["epochs_trained"]),
                                       "early" if str(r["stopped_early"]) == "True" else ""] if halved else []), note])
    best_ok = len(frame) and frame.iloc[0]["status"] == COMPLETED
    report.table(header, rows, ident="grid-table", marked=0 if best_ok else None)
    if halved:
        rungs_section(report, record["halving"], frame)
    frame["run_folder"] = [str(_run_folder(folder, r)) for _, r in frame.iterrows()]
    curves = [(r["point"], _read_csv(Path(r["run_folder"]) / "history.csv")) for _, r in frame.iterrows()]
    best = frame.iloc[0]["point"] if best_ok else None
    report.figure(Figure(plots.grid_curves(curves, record["halving"]["epochs"] if halved else (), best),
                         "grid_validation_curves.png", "validation accuracy and loss of every point"
                         + (" (dotted: where a rung ended and the points not promoted stopped; thick: the best "
                            "point's whole curve)" if halved else "")))
    if best_ok and check_best:
        best = frame.iloc[0]
        model = saved_model(Path(best["run_folder"]))
        if model is not None:
            again = reevaluate(Path(best["run_folder"]), data_dir)
            recorded = float(best["test_accuracy"])
            same = abs(again - recorded) < 1e-9
            report.paragraph(f"Best model ({best['point']}) reloaded from {model} and evaluated again: test accuracy "
                             f"{again:.4f}, recorded at training time {recorded:.4f}: "
                             + ("the same." if same else "DIFFERENT."), css="ok" if same else "bad")
        else:
            report.paragraph(f"Best point {best['point']} saved no model.h5 (--no-save-model): not re-evaluated.",
                             css="note")
    return frame


def rungs_section(report: Report, h: dict, frame):
    """A halving grid's rungs: the points each trained, to which epoch, and those it stopped."""
    report.heading(f"Successive halving: {len(h['rungs'])} of {len(h['epochs'])} rungs ran (ETA {h['eta']})", 3,
                   anchor="rungs")
    rank_epochs = frame["rank_epochs"].sum() if "rank_epochs" in frame else None
    full = len(frame) * h["epochs"][-1] * int(frame["world_size"].max()) if frame["world_size"].notna().any() else None
    rows = []
    for k, rung in enumerate(h["rungs"]):
        promoted = rung.get("promoted")
        stopped = [p for p in rung["points"] if promoted is not None and p not in promoted]
        last = k == len(h["epochs"]) - 1
        rows.append([k, rung["epochs"], len(rung["points"]),
                     "(the last rung)" if last else ", ".join(promoted) if promoted is not None else "(not yet)",
                     ", ".join(stopped) or "-"])
    report.table(["rung", "to epoch", "points", "promoted", "stopped here"], rows, ident="rungs-table")
    if rank_epochs is not None and full:
        report.paragraph(f"{int(rank_epochs)} rank-epochs trained, against {full} for every point to epoch "
                         f"{h['epochs'][-1]}." + (f" The halving stopped: {h['error']}." if h.get("error") else ""),
                         css="note")


def grid_and_runs(report: Report, folder: Path, prefix: str, data_dir, check_best):
    """A grid's section, then each of its points' runs."""
    frame = grid_section(report, folder, data_dir, check_best)
    for _, r in frame.iterrows():
        if is_run(Path(r["run_folder"])):
            run_section(report, Path(r["run_folder"]), f"{prefix}{r['point']}_")


def build(path: Path, data_dir, check_best: bool) -> Report:
    if is_run(path):
        report = Report(f"hpccnn report: {path.name}")
        run_section(report, path, "")
        return report
    if is_grid(path):
        report = Report(f"hpccnn report: grid {path.name}")
        grid_and_runs(report, path, "", data_dir, check_best)
        return report
    children = sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    grid_folders = [p for p in children if is_grid(p)]
    runs = [p for p in children if is_run(p)]
    if not grid_folders and not runs:
        raise UserError(f"{path} is not a run folder, a grid folder or a folder holding them; "
                        f"give a folder under results/")
    report = Report(f"hpccnn report: {path.name}")
    report.paragraph(f"{len(runs)} run(s) and {len(grid_folders)} grid(s) in {path}.", css="note")
    for g in grid_folders:
        if (g / "grid.csv").exists():
            grid_and_runs(report, g, f"{g.name}_", data_dir, check_best)
        else:
            report.paragraph(f"Grid {g.name} has no grid.csv yet (python -m hpccnn.submit --collect {g}).", css="bad")
    for run in runs:
        run_section(report, run, f"{run.name}_")
    return report


def build_parser() -> Parser:
    p = Parser(prog=command_prog("report"), description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog='example: python -m hpccnn.report "$(ls -d results/*/digits_cnn-* | tail -1)"\n'
                      'docs: docs/results.md')
    p.add_argument("path", type=Path, help="a run folder, a grid folder or a date folder under results/")
    p.add_argument("--data-dir", default=None, help="data cache for re-evaluating a grid's best model "
                                                    "(default: the one the run used)")
    p.add_argument("--no-reevaluate", action="store_true", help="don't reload and re-evaluate the best model")
    return p


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    path = args.path.resolve()
    if not path.is_dir():
        raise UserError(f"{args.path} is not a folder; give a run, grid or date folder under results/")
    report = build(path, args.data_dir, not args.no_reevaluate)
    existed = (path / "report.html").exists()
    try:
        report.write(path)
    except PermissionError:
        raise UserError(f"{path} is not writable; copy the folder somewhere writable and report on the copy") from None
    print(f"hpccnn: {'replaced' if existed else 'wrote'} {path / 'report.html'} and {path / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
