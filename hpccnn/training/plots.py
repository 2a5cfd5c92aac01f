"""Every figure hpccnn draws: a run's curves, confusion matrix and misclassified images (written
by hpccnn.training.results, drawn again by hpccnn.report) and a grid's validation curves (hpccnn.report)."""

import io


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on a compute node
    import matplotlib.pyplot as plt

    return plt


def png(fig, dpi: int) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def epoch_ticks(ax, epochs) -> None:
    """Whole epochs on the x axis (at most 12 ticks), even for a 1-epoch run."""
    epochs = sorted({int(e) for e in epochs})
    ax.set_xticks(epochs[:: max(1, -(-len(epochs) // 12))])
    ax.set_xlabel("epoch")


def curves(rows, title=""):
    """Training and validation accuracy and loss per epoch, from history rows."""
    epochs = [r["epoch"] for r in rows]
    fig, axes = _pyplot().subplots(1, 2, figsize=(10, 4))
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


def grid_curves(runs, rungs=(), best=None):
    """Validation accuracy and loss per epoch of every (label, history frame or None) in runs.
    rungs: the epochs at which a halving grid's rungs end (a dotted line each, where points stopped);
    best: the label drawn thick (the best point's whole curve)."""
    fig, axes = _pyplot().subplots(1, 2, figsize=(11, 4))
    for label, history in runs:
        for ax, key in zip(axes, ("val_accuracy", "val_loss")):
            if history is not None and key in history:
                ax.plot(history["epoch"], history[key], "-o", label=label + (" (best)" if label == best else ""),
                        markersize=3, linewidth=3 if label == best else 1.2, zorder=3 if label == best else 2)
    epochs = [e for _, history in runs if history is not None for e in history["epoch"]]
    for ax, key in zip(axes, ("val_accuracy", "val_loss")):
        for end in rungs[:-1]:
            ax.axvline(end, color="grey", linestyle=":", linewidth=1)
        epoch_ticks(ax, epochs)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_title("validation accuracy per point")
    axes[1].set_title("validation loss per point")
    return fig


def confusion(cm, classes):
    """The confusion matrix cm (rows: true class, columns: predicted) with its counts."""
    fig, ax = _pyplot().subplots(figsize=(1.2 + 0.6 * len(classes), 1 + 0.55 * len(classes)))
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


def confusions(images, classes, groups):
    """The misclassified test images a row per confusion, most frequent first: each row titled with
    its true and predicted class names and how often it happened (groups: results.top_confusions'
    dicts, images in their order; an older run folder's misclassified.npz has no counts)."""
    columns = max([8, *(len(g["index"]) for g in groups)])
    fig, axes = _pyplot().subplots(max(1, len(groups)), columns, figsize=(1.25 * columns, 1.75 * max(1, len(groups))),
                                   squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    at = 0
    for row, group in zip(axes, groups):
        t, p = group["true"], group["predicted"]
        count = f": {group['count']:,} of {group['support']:,} {classes[t]} images" if group.get("count") else ""
        row[0].set_title(f"true {classes[t]}, predicted {classes[p]}{count}", loc="left", fontsize=9,
                         color="darkred")
        for ax, image in zip(row, images[at:at + len(group["index"])]):
            ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 or image.ndim == 2 else None,
                      interpolation="nearest")
        at += len(group["index"])
    if not groups:
        axes.flat[0].text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
    fig.subplots_adjust(wspace=0.08, hspace=0.45)  # the row titles run across the row's images
    return fig
