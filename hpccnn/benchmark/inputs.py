"""python -m hpccnn.bench --inputs: each model trained on the same real images held in memory, streamed from a
staged pack (hpccnn.training.stream) and decoded from JPEG files, on each rank count (inputs.csv, inputs.md);
and the images, packs and files they are read from."""

import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from hpccnn.benchmark.measure import measure
from hpccnn.benchmark.plans import Options, Plan
from hpccnn.benchmark.results import document, write
from hpccnn.common import tables
from hpccnn.models.zoo import get_model


# --inputs: the same model and images read three ways (hpccnn.benchmark.input_runner.INPUTS), on each rank count
INPUT_MODELS = ("mnist_cnn", "cnn_v3")  # mnist_cnn's step is the seeds' shortest: the input's hardest case
INPUT_KINDS = ("memory", "stream", "jpeg")
INPUT_IMAGES = 20_000  # training images per model (--input-images)
INPUT_TEST = 1_000  # and test images, the pack's test set (read by neither)
INPUT_CHUNKS = 8  # then all three in one process, this many chunks of each (--interleave)
STREAM_TARGET = 0.9  # streamed images/s, at least this share of the same images' held in memory


def photo_crops(n: int, shape, seed=0) -> tuple:
    """(images, labels): n random square crops of scikit-learn's two sample photographs (china, flower)
    resized to shape's height and width (grayscale for one channel), labelled crop index % 10."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    h, w, c = shape
    rng = np.random.default_rng(seed)
    x = np.empty((n, h, w, c), np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(max(h, w), min(160, *photo.size) + 1))
        left, top = (int(rng.integers(0, extent - side + 1)) for extent in photo.size)
        crop = photo.crop((left, top, left + side, top + side)).resize((w, h), Image.BILINEAR)
        x[i] = np.asarray(crop.convert("L"))[..., None] if c == 1 else np.asarray(crop)
    return x, (np.arange(n) % 10).astype(np.int64)


def stage_pack(npz: Path, data_dir: Path, log=print) -> None:
    """npz staged as the pack "bench" in data_dir, by python -m hpccnn.stage in a process of its own."""
    out = subprocess.run([sys.executable, "-m", "hpccnn.stage", str(npz), "--name", "bench", "--data-dir",
                          str(data_dir)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"staging {npz} failed:\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}")
    log(out.stdout.strip().splitlines()[-1])


def input_data(folder: Path, train: tuple, test: tuple, jpeg=True, log=print) -> Path:
    """folder (new) holding cache/, the training and test images staged as the pack "bench" (the .npz
    they were staged from deleted), and if jpeg, jpeg/CLASS/N.jpg: the training images as JPEG files."""
    from PIL import Image

    folder.mkdir(parents=True)
    npz = folder / "images.npz"
    np.savez(npz, x_train=train[0], y_train=train[1], x_test=test[0], y_test=test[1])
    stage_pack(npz, folder / "cache", log)
    npz.unlink()  # the pack holds them
    if jpeg:
        for label in np.unique(train[1]):
            (folder / "jpeg" / str(label)).mkdir(parents=True)
        for i, (image, label) in enumerate(zip(*train)):
            Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(
                folder / "jpeg" / str(label) / f"{i}.jpg", quality=90)
    return folder


def input_env(kind: str, folder: Path) -> dict:
    return {"HPCCNN_BENCH_INPUT": kind, "HPCCNN_BENCH_DATA": str(folder)}


def run_inputs(options: Options, images=INPUT_IMAGES, chunks=INPUT_CHUNKS, keep=False):
    """Per model, the same photographs' crops (photo_crops) held in memory, streamed from a pack and
    decoded from JPEG files, on each rank count: repeats rounds of a process per input whose order
    alternates (images/s are the rounds' medians, each ratio to memory the median of the rounds'
    ratios); then, if chunks, all three in one process per rank count, chunks of each in turn. keep: the images
    and packs too."""
    ranks, out_dir, repeats, log = options.ranks, options.out, options.repeats, options.log
    out_dir.mkdir(parents=True)
    rows, verdicts = [], []
    lineup = [(kind, n) for n in ranks for kind in INPUT_KINDS]
    for model in options.models:
        how, shape = options.plan(model), get_model(model).input_shape
        x, y = photo_crops(images + INPUT_TEST, shape)
        folder = input_data(out_dir / "input-data" / model, (x[:images], y[:images]), (x[images:], y[images:]),
                            log=log)
        del x, y
        rounds = [{(kind, n): measure("input", model, n, how, env=input_env(kind, folder))
                   for kind, n in (lineup if repeat % 2 == 0 else lineup[::-1])} for repeat in range(repeats)]
        chunked = {n: measure("input", model, n, Plan(how.batch, how.warmup, how.steps, how.seconds / 2),
                              env=input_env(",".join(INPUT_KINDS), folder), extra=["--chunks", str(chunks)])
                   for n in (ranks if chunks else [])}
        for kind, n in lineup:
            rows.append(input_row(model, how, kind, n, rounds, chunked.get(n)))
            log(format_input_row(rows[-1]))
        verdicts += [stream_verdict(r) for r in rows[-len(lineup):] if r["input"] == "stream"]
        for line in verdicts[-len(ranks):]:
            log(line)
    if not keep:
        shutil.rmtree(out_dir / "input-data")
    spread = f"the median of {repeats} rounds whose order alternates" if repeats > 1 else "from one round"
    return rows, write(out_dir, "inputs", rows, document(
        f": the same model and images held in memory, streamed from a staged pack, and decoded from JPEG "
        f"files; {images:,} training images per model, random crops of scikit-learn's two sample photographs. "
        f"Each figure is {spread} of a process per input (ratios to memory: median of the rounds' ratios; in "
        f"brackets, the lowest and highest round)."
        + (f" In one process: the three in turn in one model's training, {chunks} chunks of each of about "
           f"{how.seconds / 2:g} s in alternating order; the median of the chunks' ratios (in brackets, their "
           f"quartiles)." if chunks else ""), input_columns(chunks), rows,
        after="\n" + "\n".join(f"- {v}" for v in verdicts) + "\n"), fresh=False)


def input_row(model, how: Plan, kind: str, ranks: int, rounds, chunked=None) -> dict:
    """inputs.csv's row of input kind on ranks, from its rounds' measurements and its chunks in one process."""
    got = [r[(kind, ranks)] for r in rounds]
    ratios = [r[(kind, ranks)]["images_per_second"] / r[("memory", ranks)]["images_per_second"] for r in rounds]
    setup = got[0]["setup"]
    row = {"model": model, "side": get_model(model).input_side, "batch": how.batch, "ranks": ranks, "input": kind,
           "images_per_second": round(statistics.median(g["images_per_second"] for g in got), 1),
           "vs_memory": round(statistics.median(ratios), 3), "vs_memory_min": round(min(ratios), 3),
           "vs_memory_max": round(max(ratios), 3),
           "rounds_images_per_second": " ".join(f"{g['images_per_second']:.0f}" for g in got),  # in round order
           "train_images": setup["train_images"], "steps_per_epoch": setup["steps_per_epoch"],
           "timed_steps": round(statistics.median(g["timed_steps"] for g in got)),
           "timed_seconds": round(statistics.median(g["timed_seconds"] for g in got), 1),
           "peak_rss_mb_per_rank": round(max(x["rss_mb"] for g in got for x in g["ranks"])),
           "rounds": len(rounds), "how": setup["input"]}
    if chunked:
        mine, memory = chunked["images_per_second"][kind], chunked["images_per_second"]["memory"]
        ratios = sorted(a / b for a, b in zip(mine, memory))
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        row.update(chunk_steps=chunked["chunk_steps"], chunks=len(mine),
                   chunked_images_per_second=round(statistics.median(mine), 1),
                   chunked_vs_memory=round(statistics.median(ratios), 3), chunked_vs_memory_q1=round(quartiles[0], 3),
                   chunked_vs_memory_q3=round(quartiles[2], 3))
    return row


def format_input_row(r) -> str:
    return (f"{r['model']:17} {r['ranks']} rank(s) {r['input']:7} {r['images_per_second']:9.1f} img/s  "
            f"x{r['vs_memory']:.2f} memory ({r['vs_memory_min']:.2f}-{r['vs_memory_max']:.2f})"
            + (f"  in one process x{r['chunked_vs_memory']:.2f} ({r['chunked_vs_memory_q1']:.2f}-"
               f"{r['chunked_vs_memory_q3']:.2f})" if "chunks" in r else "")
            + f"  {r['peak_rss_mb_per_rank']} MB/rank")


def stream_verdict(r) -> str:
    """Whether streaming reached STREAM_TARGET of in-memory's images/s, in a line: in the rounds of a process
    per input (the target's measure), and in one process."""
    def said(ratio):
        return "meets" if ratio >= STREAM_TARGET else "MISSES"

    return (f"{r['model']} on {r['ranks']} rank{'s' if r['ranks'] > 1 else ''}: streamed at {r['vs_memory']:.2f}× "
            f"the in-memory images/s (rounds {r['vs_memory_min']:.2f}–{r['vs_memory_max']:.2f}): "
            f"{said(r['vs_memory'])} the {STREAM_TARGET}× target"
            + (f"; in one process {r['chunked_vs_memory']:.2f}× (quartiles {r['chunked_vs_memory_q1']:.2f}–"
               f"{r['chunked_vs_memory_q3']:.2f}): {said(r['chunked_vs_memory'])} it" if "chunks" in r else ""))


def input_columns(chunks) -> dict:
    """inputs.md's table: heading -> a row's cell."""
    columns = {
        "model": tables.key("model"), "input": lambda r: f"{r['side']}×{r['side']}", "batch": tables.key("batch"),
        "ranks": tables.key("ranks"), "read from": tables.key("input"),
        "images/s": tables.key("images_per_second", ",.1f"),
        "vs memory": lambda r: f"{r['vs_memory']:.2f}×" + (f" ({r['vs_memory_min']:.2f}–{r['vs_memory_max']:.2f})"
                                                           if r["rounds"] > 1 and r["input"] != "memory" else ""),
        "in one process, vs memory": lambda r: "" if r["input"] == "memory" else (
            f"{r['chunked_vs_memory']:.2f}× ({r['chunked_vs_memory_q1']:.2f}–{r['chunked_vs_memory_q3']:.2f})"),
        "training images (steps per epoch)": lambda r: f"{r['train_images']:,} ({r['steps_per_epoch']})",
        "timed s (steps)": lambda r: f"{r['timed_seconds']:.1f} ({r['timed_steps']})",
        "peak RSS per rank (MB)": tables.key("peak_rss_mb_per_rank", ","),
    }
    if not chunks:
        del columns["in one process, vs memory"]
    return columns
