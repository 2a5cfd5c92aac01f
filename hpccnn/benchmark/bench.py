"""python -m hpccnn.bench: training throughput of hpccnn against plain Keras, in one run.

For each model it measures, after warm-up, training images/second of
  keras   the seeds' way: NumPy float arrays into model.fit, one process, all cores;
  1 rank  hpccnn: uint8 images through hpccnn's tf.data pipeline, Horovod's optimizer;
  N ranks hpccnn under horovodrun -np N on the same cores (each rank gets cores/N threads);
and what users would pick instead (--peers), on 1 and N workers on the same cores:
  horovod recipe  Horovod's own Keras example (tensorflow2_keras_mnist.py), as it is written;
  tf mwms         TensorFlow's MultiWorkerMirroredStrategy (TF_CONFIG, collectives over gRPC);
then the ratios 1-rank/keras and N-ranks/1-rank, model FLOPs utilisation against a matmul
peak measured in the same run, the time from launch to the first finished step, and peak
memory (RSS) per rank. Each measurement runs in its own process. Writes bench.csv and bench.md.

--interleave N instead trains plain Keras and hpccnn's 1-rank path in one process, N alternating
chunks each: the cost per step of each path, without the drift of a shared machine between
processes (interleaved.csv, interleaved.md). --variants measures speed options (variants.csv).
--inputs trains each model on the same real images held in memory, streamed from a staged pack
(hpccnn.training.stream) and decoded from JPEG files (inputs.csv); --memory-check measures each rank's peak
memory streaming a pack of 60,000 images and one of 600,000 (memory.csv).
Each measurement's process, its runners and their timing are hpccnn.benchmark.runners'.
"""

import csv
import datetime
import itertools
import os
import shutil
import statistics
import sys
from pathlib import Path

from hpccnn.benchmark import scaling
from hpccnn.common import tables
from hpccnn.models import usermodel
from hpccnn.common.errors import Parser, UserError, cli
from hpccnn.models.zoo import get_model
from hpccnn.benchmark.runners import KERAS, ONE_RANK, RUNNERS, SECONDS, Plan, matmul_peak, measure


# The benchmark's models, each with its default Plan: the seed's batch and the warm-up steps.
# Their input images are the seeds' own (hpccnn.models.zoo: ModelSpec.input_shape).
PLANS = {
    "cnn_v3": Plan(32, 8),
    "mnist_cnn": Plan(128, 8),
    "alexnet64": Plan(32, 8),
    "alexnet_galaxy10": Plan(32, 8),
    "alexnet227": Plan(16, 3),  # the seed's batch is 64; 16 keeps the benchmark to minutes
}


USER_PLAN = Plan(32, 8)  # a model of the user's own (--models path/file.py:function): 32x32x3 images


def plan(model, batch=0, steps=0, warmup=0, seconds=SECONDS) -> Plan:
    """model's Plan: the options given, else the model's defaults."""
    default = PLANS.get(model, USER_PLAN)
    return Plan(batch or default.batch, warmup or default.warmup, steps, seconds)


# What --variants tries, each against hpccnn's defaults on the same rank count, measured back to back:
# name: (ranks, hpccnn.train settings, environment variables)
VARIANTS = {
    "none (A/A)": (1, {}, {}),  # the defaults against themselves: how far noise alone moves a ratio
    "xla": (1, {"xla": "on"}, {}),
    "xla off": (1, {"xla": "off"}, {}),  # not even GPU auto-clustering's flag
    "mixed precision": (1, {"mixed_precision": "on"}, {}),  # float16
    "bfloat16": (1, {"mixed_precision": "bfloat16"}, {}),
    # hpccnn's default is 8 (hpccnn.models.experiments): this measures what it gains over Keras' 1
    "steps_per_execution 1": (1, {"steps_per_execution": 1}, {}),
    "oneDNN off": (1, {}, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
    # Horovod's own cycle for one rank, where hpccnn sets 20 ms (hpccnn.training.dist: SINGLE_RANK_CYCLE_MS)
    "Horovod cycle 1 ms 1 rank": (1, {}, {"HOROVOD_CYCLE_TIME": "1"}),
    # hpccnn keeps freed memory for the next step (hpccnn.training.dist.keep_freed_memory): glibc's own behaviour
    "glibc malloc": (1, {}, {"HPCCNN_MALLOC": "glibc"}),
    "none (A/A) 2 ranks": (2, {}, {}),
    "glibc malloc 2 ranks": (2, {}, {"HPCCNN_MALLOC": "glibc"}),
    "fp16 allreduce": (2, {"fp16_allreduce": "true"}, {}),
    "Horovod cycle 10 ms": (2, {}, {"HOROVOD_CYCLE_TIME": "10"}),
    "Horovod fusion 256 MB": (2, {}, {"HOROVOD_FUSION_THRESHOLD": str(256 * 2 ** 20)}),
    "no MPI yield": (2, {}, {"OMPI_MCA_mpi_yield_when_idle": "0"}),
}


def _variant(model, name, how, log):
    """Variant name's images/s, or None (said in the log) if it does not run."""
    ranks, settings, env = VARIANTS[name]
    try:
        return measure("hpccnn", model, ranks, how, settings, env)["images_per_second"]
    except RuntimeError as err:
        log(f"{model:17} {name:22} failed: {str(err).strip().splitlines()[-1][:200]}")
        return None


def run_variants(models, variants, options: dict, out_dir: Path, repeats=2, log=print):
    """Each variant against the defaults on the same ranks, in pairs whose order alternates (default
    first, then variant first), so neither a slow drift of a shared machine nor a bias for the first
    or second process of a pair favours either side; the ratio is the median of the pairs' ratios."""
    rows = []
    for model, name in itertools.product(models, variants):
        how, ranks = plan(model, **options), VARIANTS[name][0]
        sides = {"default": lambda: measure("hpccnn", model, ranks, how)["images_per_second"],
                 "variant": lambda: _variant(model, name, how, log)}
        pairs = []  # {"default": images/s, "variant": images/s or None if it failed}
        for repeat in range(repeats):
            pairs.append({side: sides[side]() for side in (sides if repeat % 2 == 0 else reversed(sides))})
            if pairs[-1]["variant"] is None:
                break
        failed = pairs[-1]["variant"] is None
        r = {"model": model, "batch": how.batch, "ranks": ranks, "variant": name,
             "default_images_per_second": round(statistics.median(p["default"] for p in pairs), 1),
             "variant_images_per_second": None if failed else round(statistics.median(p["variant"] for p in pairs), 1),
             "ratio": None if failed else round(statistics.median(p["variant"] / p["default"] for p in pairs), 3),
             "pairs": len(pairs)}
        rows.append(r)
        log(f"{model:17} {name:22} {ranks} rank(s)  default {r['default_images_per_second']:8.1f} img/s  "
            + ("failed" if failed else f"variant {r['variant_images_per_second']:8.1f} img/s  x{r['ratio']:.2f}"))
    return rows, write(out_dir, "variants", rows, VARIANT_COLUMNS, (
        f": each variant against hpccnn's defaults on the same ranks, {repeats} pairs in alternating order, "
        f"median ratio."))


VARIANT_COLUMNS = {
    "model": tables.key("model"), "batch": tables.key("batch"), "ranks": tables.key("ranks"),
    "variant": tables.key("variant"), "default images/s": tables.key("default_images_per_second", ",.1f"),
    "variant images/s": lambda r: "failed" if r["ratio"] is None else f"{r['variant_images_per_second']:,.1f}",
    "variant / default": lambda r: "" if r["ratio"] is None else f"{r['ratio']:.2f}×",
}


def run_interleaved(models, options: dict, out_dir: Path, chunks: int, log=print):
    """Per model, plain Keras against hpccnn's 1-rank path in one process, in alternating chunks
    (runners.interleaved_worker); images/s are the chunks' medians, the ratio the median of the
    chunk pairs'."""
    rows = []
    for model in models:
        how = plan(model, **options)
        got = measure("interleaved", model, 1, how, extra=["--chunks", str(chunks)])
        keras, ours = got["images_per_second"]["keras"], got["images_per_second"]["hpccnn"]
        ratios = sorted(b / a for a, b in zip(keras, ours))
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        r = {"model": model, "batch": how.batch, "chunks": chunks, "steps_per_chunk": got["steps_per_chunk"],
             "keras_images_per_second": round(statistics.median(keras), 1),
             "hpccnn_images_per_second": round(statistics.median(ours), 1),
             "ratio": round(statistics.median(ratios), 3), "ratio_q1": round(quartiles[0], 3),
             "ratio_q3": round(quartiles[2], 3), "keras_optimizer": got["optimizers"]["keras"],
             "hpccnn_optimizer": got["optimizers"]["hpccnn"]}
        rows.append(r)
        log(f"{model:17} keras {r['keras_images_per_second']:8.1f} img/s  hpccnn 1 rank "
            f"{r['hpccnn_images_per_second']:8.1f} img/s  x{r['ratio']:.3f} "
            f"(quartiles {r['ratio_q1']:.2f}-{r['ratio_q3']:.2f})")
    return rows, write(out_dir, "interleaved", rows, INTERLEAVED_COLUMNS, (
        f": plain Keras and hpccnn's 1-rank path in one process, {chunks} chunks each, alternating which goes "
        f"first; images/s are the chunks' medians, the ratio is the median of the chunk pairs' ratios (in "
        f"brackets, their quartiles)."))


INTERLEAVED_COLUMNS = {
    "model": tables.key("model"), "batch": tables.key("batch"), "steps per chunk": tables.key("steps_per_chunk"),
    "plain Keras images/s": tables.key("keras_images_per_second", ",.1f"),
    "hpccnn 1 rank images/s": tables.key("hpccnn_images_per_second", ",.1f"),
    "hpccnn / Keras": lambda r: f"{r['ratio']:.3f}× ({r['ratio_q1']:.2f}–{r['ratio_q3']:.2f})",
}


# --inputs: the same model and images read three ways (hpccnn.benchmark.runners.INPUTS), on each rank count
INPUT_MODELS = ("mnist_cnn", "cnn_v3")  # mnist_cnn's step is the seeds' shortest: the input's hardest case
INPUT_KINDS = ("memory", "stream", "jpeg")
INPUT_IMAGES = 20_000  # training images per model (--input-images)
INPUT_TEST = 1_000  # and test images, the pack's test set (read by neither)
INPUT_CHUNKS = 8  # then all three in one process, this many chunks of each (--interleave)
STREAM_TARGET = 0.9  # streamed images/s, at least this share of the same images' held in memory
# --memory-check: mnist_cnn streamed from a pack of 60,000 images and from the same ten times over
MEMORY_COPIES = (1, 10)
MEMORY_STEPS = 200  # timed steps on both packs (--steps): a comparison of data sizes, not of run lengths
MEMORY_TOLERANCE = 0.10  # each rank's peak on the large pack within this of its peak on the small one


def photo_crops(n: int, shape, seed=0) -> tuple:
    """(images, labels): n random square crops of scikit-learn's two sample photographs (china, flower)
    resized to shape's height and width (grayscale for one channel), labelled crop index % 10."""
    import numpy as np
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
    import subprocess

    out = subprocess.run([sys.executable, "-m", "hpccnn.stage", str(npz), "--name", "bench", "--data-dir",
                          str(data_dir)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"staging {npz} failed:\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}")
    log(out.stdout.strip().splitlines()[-1])


def input_data(folder: Path, train: tuple, test: tuple, jpeg=True, log=print) -> Path:
    """folder (new) holding cache/, the training and test images staged as the pack "bench" (the .npz
    they were staged from deleted), and if jpeg, jpeg/CLASS/N.jpg: the training images as JPEG files."""
    import numpy as np
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


def run_inputs(models, ranks, options: dict, out_dir: Path, repeats=3, images=INPUT_IMAGES, chunks=INPUT_CHUNKS,
               keep=False, log=print):
    """Per model, the same photographs' crops (photo_crops) held in memory, streamed from a pack and
    decoded from JPEG files, on each rank count: repeats rounds of a process per input whose order
    alternates (images/s are the rounds' medians, each ratio to memory the median of the rounds'
    ratios); then, if chunks, all three in one process per rank count, chunks of each in turn."""
    out_dir.mkdir(parents=True)
    rows, verdicts = [], []
    lineup = [(kind, n) for n in ranks for kind in INPUT_KINDS]
    for model in models:
        how, shape = plan(model, **options), get_model(model).input_shape
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
    return rows, write(out_dir, "inputs", rows, input_columns(chunks), (
        f": the same model and images held in memory, streamed from a staged pack, and decoded from JPEG "
        f"files; {images:,} training images per model, random crops of scikit-learn's two sample photographs. "
        f"Each figure is {spread} of a process per input (ratios to memory: median of the rounds' ratios; in "
        f"brackets, the lowest and highest round)."
        + (f" In one process: the three in turn in one model's training, {chunks} chunks of each of about "
           f"{how.seconds / 2:g} s in alternating order; the median of the chunks' ratios (in brackets, their "
           f"quartiles)." if chunks else "")), after="\n" + "\n".join(f"- {v}" for v in verdicts) + "\n",
        fresh=False)


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


def memory_check_images(log=print) -> tuple:
    """((x_train, y_train), (x_test, y_test), what they are): Fashion-MNIST from Debian's package where it is
    installed, else as many crops of the sample photographs (photo_crops) at 28x28x1."""
    from hpccnn.data import datasets as data
    from hpccnn.data.stage import DEBIAN_FASHION_MNIST

    if DEBIAN_FASHION_MNIST.is_dir():
        got = data.read_idx_folder(DEBIAN_FASHION_MNIST)
        return ((got["x_train"][..., None], got["y_train"]), (got["x_test"][..., None], got["y_test"]),
                f"Fashion-MNIST ({DEBIAN_FASHION_MNIST})")
    log(f"{DEBIAN_FASHION_MNIST} is missing: crops of the sample photographs instead of Fashion-MNIST")
    x, y = photo_crops(70_000, (28, 28, 1))
    return (x[:60_000], y[:60_000]), (x[60_000:], y[60_000:]), "crops of scikit-learn's sample photographs"


def run_memory_check(ranks: int, options: dict, out_dir: Path, repeats=1, images=0, keep=False, log=print):
    """mnist_cnn streamed on ranks from a pack of 60,000 images (or the first images of them) and from one
    of the same ten times over (each written as an .npz and staged), the same steps on both: each rank's
    peak resident memory, which must not grow with the data set; the same packs held in memory beside them,
    as the control that does."""
    import numpy as np

    out_dir.mkdir(parents=True)
    train, test, source = memory_check_images(log)
    train = (train[0][:images or None], train[1][:images or None])
    how = plan("mnist_cnn", **{**options, "steps": options["steps"] or MEMORY_STEPS})
    folders = {}
    for copies in MEMORY_COPIES:
        count = copies * len(train[0])
        folders[count] = input_data(out_dir / "input-data" / str(count), (np.tile(train[0], (copies, 1, 1, 1)),
                                    np.tile(train[1], copies)), test, jpeg=False, log=log)
    lineup = [(kind, count) for kind in ("stream", "memory") for count in folders]
    rounds = [{(kind, count): measure("input", "mnist_cnn", ranks, how, env=input_env(kind, folders[count]))
               for kind, count in (lineup if repeat % 2 == 0 else lineup[::-1])} for repeat in range(repeats)]
    rows = [memory_row(kind, count, folders, rounds) for kind, count in lineup]
    for r in rows:
        log(f"mnist_cnn {r['input']:6} {r['train_images']:>9,} images: peak RSS per rank {r['peak_rss_mb_ranks']} MB "
            f"(x{r['vs_smallest']:.3f} the {min(folders):,} images')")
    worst = max(abs(r["vs_smallest"] - 1) for r in rows if r["input"] == "stream")
    verdict = (f"streamed: each rank's peak on {max(folders):,} images is within {worst:.1%} of its peak on "
               f"{min(folders):,}: {'meets' if worst <= MEMORY_TOLERANCE else 'MISSES'} the "
               f"{MEMORY_TOLERANCE:.0%} target")
    log(verdict)
    if not keep:
        shutil.rmtree(out_dir / "input-data")
    return rows, write(out_dir, "memory", rows, MEMORY_COLUMNS, (
        f": mnist_cnn on {ranks} rank{'s' if ranks > 1 else ''}, global batch {how.batch}, {how.steps} timed steps "
        f"after {how.warmup} of warm-up on each pack; {source}, {len(train[0]):,} training images and the same "
        f"repeated {MEMORY_COPIES[-1]} times, each staged from an .npz on disk. Peak resident memory (VmHWM) "
        f"of each rank, the highest of {repeats} run{'s' if repeats > 1 else ''}; held in memory: the control."),
        after=f"\n- {verdict}\n", fresh=False)


def memory_row(kind: str, count: int, folders: dict, rounds) -> dict:
    """memory.csv's row: each rank's peak RSS (the highest of the rounds), and against the smallest pack's."""
    def peaks(n):
        return [max(r[(kind, n)]["ranks"][k]["rss_mb"] for r in rounds)
                for k in range(len(rounds[0][(kind, n)]["ranks"]))]

    mine, smallest = peaks(count), peaks(min(folders))
    ratios = [a / b for a, b in zip(mine, smallest)]
    pack_bytes = sum(f.stat().st_size for f in (folders[count] / "cache").rglob("*.tfrecord"))
    return {"input": kind, "train_images": rounds[0][(kind, count)]["setup"]["train_images"],
            "pack_mb": round(pack_bytes / 2 ** 20), "peak_rss_mb_ranks": " ".join(f"{p:.0f}" for p in mine),
            "peak_rss_mb_per_rank": round(max(mine)), "vs_smallest": round(max(ratios, key=lambda v: abs(v - 1)), 3),
            "timed_steps": round(statistics.median(r[(kind, count)]["timed_steps"] for r in rounds)),
            "images_per_second": round(statistics.median(r[(kind, count)]["images_per_second"] for r in rounds), 1)}


MEMORY_COLUMNS = {
    "read from": tables.key("input"), "training images": tables.key("train_images", ","),
    "pack on disk (MB)": tables.key("pack_mb", ","), "timed steps": tables.key("timed_steps"),
    "images/s": tables.key("images_per_second", ",.1f"), "peak RSS of each rank (MB)": tables.key("peak_rss_mb_ranks"),
    "vs the smallest pack (furthest rank)": lambda r: f"{r['vs_smallest']:.3f}×",
}


PEERS = ("horovod", "mwms")  # what users would pick instead of hpccnn, measured beside it by default


def run(models, ranks, options: dict, out_dir: Path, repeats=1, log=print, peers=PEERS):
    """Plain Keras, hpccnn and each peer runner per model (those on ranks on 1 and on each of ranks),
    repeats rounds whose order alternates; images/s are the rounds' medians and each ratio the median
    of the rounds' ratios."""
    peak = matmul_peak()
    log(f"matmul peak (4096x4096 float32, all {os.cpu_count()} cores): {peak:.1f} GFLOP/s")
    counts = sorted(set(ranks) | {1})
    lineup = [(key, n) for key, runner in RUNNERS.items() if key in ("keras", "hpccnn", *peers)
              for n in (counts if runner.on_ranks else [1])]
    rows, against = [], []
    for model in models:
        how = plan(model, **options)
        rounds = [{(key, n): measure(key, model, n, how) for key, n in (lineup if repeat % 2 == 0 else lineup[::-1])}
                  for repeat in range(repeats)]
        for entry in lineup:
            rows.append(bench_row(model, how, entry, rounds, peak))
            log(format_row(rows[-1]))
        against += [peer_row(model, how, n, peer, rounds) for n in counts for peer in peers]
    spread = "" if repeats == 1 else (f" Each figure is the median of {repeats} rounds whose order alternates "
                                      f"(ratios: median of the rounds' ratios; in brackets, the lowest and "
                                      f"highest round).")
    after = ""
    if peers:
        after = ("\n\nhpccnn against what users would pick instead, on the same cores, global batch and model "
                 "(hpccnn / peer, per round):\n\n" + tables.markdown(*tables.cells(PEER_COLUMNS, against))
                 + "\n\nHow each runner was set up (threads intra-op/inter-op per worker; 0 is TensorFlow's "
                   "default, every core):\n\n" + tables.markdown(*tables.cells(SETUP_COLUMNS, _setups(rows))))
    md = write(out_dir, "bench", rows, bench_columns(repeats), (
        f"; matmul peak {peak:.1f} GFLOP/s (4096² float32). MFU = images/s × 6 × forward MACs ÷ peak.{spread}"),
        after=after + "\n" + scaling.paper(rows))
    if against:
        with open(out_dir / "peers.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(against[0]))
            writer.writeheader()
            writer.writerows(against)
    return rows, md


def peer_row(model, how: Plan, ranks: int, peer: str, rounds) -> dict:
    """hpccnn on ranks against peer on as many workers, from the same rounds."""
    ours, theirs = [r[("hpccnn", ranks)]["images_per_second"] for r in rounds], \
        [r[(peer, ranks)]["images_per_second"] for r in rounds]
    ratios = [a / b for a, b in zip(ours, theirs)]
    return {"model": model, "batch": how.batch, "workers": ranks, "peer": RUNNERS[peer].label(ranks),
            "hpccnn": round(statistics.median(ours), 1), "peer_images_per_second": round(statistics.median(theirs), 1),
            "ratio": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3), "rounds": len(rounds)}


PEER_COLUMNS = {
    "model": tables.key("model"), "batch": tables.key("batch"), "workers": tables.key("workers"),
    "hpccnn images/s": tables.key("hpccnn", ",.1f"), "peer": tables.key("peer"),
    "peer images/s": tables.key("peer_images_per_second", ",.1f"),
    "hpccnn / peer": lambda r: f"{r['ratio']:.2f}×" + (f" ({r['ratio_min']:.2f}–{r['ratio_max']:.2f})"
                                                      if r["rounds"] > 1 else ""),
}

SETUP_COLUMNS = {"runner": tables.key("runner"), "threads": tables.key("threads"),
                 "batch per worker": tables.key("batch_per_worker"), "input": tables.key("input"),
                 "sharding": tables.key("sharding"), "collective": tables.key("collective")}


def _setups(rows) -> list:
    """One row per runner and worker count: its set-up as its first model's measurement reported it."""
    seen = {}
    for r in rows:
        seen.setdefault(r["runner"], r)
    return list(seen.values())


def bench_row(model, how: Plan, entry, rounds, peak) -> dict:
    """bench.csv's row of entry (runner, ranks) from its rounds' measurements."""
    key, ranks = entry

    def each(over=None, field="images_per_second"):  # one value per round
        return [r[entry][field] / (r[over][field] if over else 1) for r in rounds]

    ips = statistics.median(each())
    flops = 3 * 2 * rounds[0][KERAS]["forward_macs"]
    return {
        "model": model, "side": get_model(model).input_side, "batch": how.batch, "runner": RUNNERS[key].label(ranks),
        "ranks": ranks, "images_per_second": round(ips, 1), "vs_keras": round(statistics.median(each(KERAS)), 3),
        # the rounds' lowest and highest ratio: how far one round alone could mislead
        "vs_keras_min": round(min(each(KERAS)), 3), "vs_keras_max": round(max(each(KERAS)), 3),
        "vs_1_rank": round(statistics.median(each(ONE_RANK)), 3) if key == "hpccnn" else None,  # hpccnn's own
        "train_gflop_per_image": round(flops / 1e9, 4), "gradient_mb": round(rounds[0][KERAS]["params"] * 4 / 1e6, 2),
        "step_seconds": round(how.batch / ips, 4), "mfu": round(ips * flops / 1e9 / peak, 3),
        "first_step_seconds": round(statistics.median(each(field="first_step_seconds")), 1),
        "timed_seconds": round(statistics.median(each(field="timed_seconds")), 1),
        "timed_steps": round(statistics.median(each(field="timed_steps"))),
        "peak_rss_mb_per_rank": round(max(x["rss_mb"] for r in rounds for x in r[entry]["ranks"])),
        "rounds": len(rounds),
        **{k: rounds[0][entry].get("setup", {}).get(k, "") for k in ("threads", "batch_per_worker", "input",
                                                                     "sharding", "collective")},
    }


def format_row(r) -> str:
    return (f"{r['model']:17} {r['runner']:16} {r['images_per_second']:9.1f} img/s  x{r['vs_keras']:.2f} keras"
            + (f"  x{r['vs_1_rank']:.2f} 1-rank" if r["vs_1_rank"] is not None else "")
            + f"  MFU {r['mfu']:.0%}  first step {r['first_step_seconds']:.1f} s  {r['peak_rss_mb_per_rank']} MB/rank")


def bench_columns(repeats) -> dict:
    """bench.md's first table: heading -> a row's cell."""
    def vs_keras(r):  # with the rounds' spread, where there are rounds and something to compare
        spread = repeats > 1 and r["runner"] != RUNNERS["keras"].title
        return f"{r['vs_keras']:.2f}×" + (f" ({r['vs_keras_min']:.2f}–{r['vs_keras_max']:.2f})" if spread else "")

    return {"model": tables.key("model"), "input": lambda r: f"{r['side']}×{r['side']}", "batch": tables.key("batch"),
            "runner": tables.key("runner"), "images/s": tables.key("images_per_second", ",.1f"),
            "vs plain Keras": vs_keras,
            "vs 1 rank": lambda r: "" if r["vs_1_rank"] is None else f"{r['vs_1_rank']:.2f}×",
            "MFU": tables.key("mfu", ".0%"),
            "timed s (steps)": lambda r: f"{r['timed_seconds']:.1f} ({r['timed_steps']})",
            "launch to first step (s)": tables.key("first_step_seconds", ".1f"),
            "peak RSS per rank (MB)": tables.key("peak_rss_mb_per_rank", ",")}


def write(out_dir: Path, name: str, rows, columns, intro, after="", fresh=True) -> str:
    """name.csv and name.md in out_dir, a new folder (never an existing one) unless not fresh (the run's
    own, made at its start); returns name.md, a sentence (intro) after the date and the machine, the
    table of columns, then after."""
    md = (f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {machine()}{intro}\n\n"
          + tables.markdown(*tables.cells(columns, rows)) + after)
    out_dir.mkdir(parents=True, exist_ok=not fresh)
    write_tables(out_dir, name, rows, md)
    return md


def write_tables(out_dir: Path, name: str, rows, md):
    """name.csv and name.md in the folder out_dir."""
    with open(out_dir / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / f"{name}.md").write_text(md)


def machine() -> str:
    """This machine in a few words: cores, CPU model and its widest vector unit, memory."""
    from hpccnn.training.dist import cpu_model_and_flags

    name, flags = cpu_model_and_flags()
    vector = next((v for v, flag in (("AVX-512 with BF16", "avx512_bf16"), ("AVX-512", "avx512f"), ("AVX2", "avx2"))
                   if flag in flags), "no AVX2")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{os.cpu_count()} cores of {name} ({vector}), {memory:.0f} GB"


def parser() -> Parser:
    p = Parser(prog="python -m hpccnn.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=None,
                   help=f"comma-separated, from: {', '.join(PLANS)}; or your own, path/to/file.py:function or "
                        f"package.module:function (32x32x3 images, batch 32 unless --batch) (default: all; with "
                        f"--inputs, {','.join(INPUT_MODELS)})")
    p.add_argument("--ranks", default="1,2", help="rank counts for hpccnn (horovodrun on this machine)")
    p.add_argument("--peers", default=",".join(PEERS), metavar="NAMES",
                   help="what to measure beside plain Keras and hpccnn, on the same rank counts (with --nodes, on "
                        "the same nodes and links): horovod (Horovod's own Keras recipe), mwms (TensorFlow's "
                        "MultiWorkerMirroredStrategy); comma-separated, or none [horovod,mwms]")
    p.add_argument("--seconds", type=float, default=SECONDS,
                   help="timed training per measurement: as many steps as last this long at the warm-up's rate")
    p.add_argument("--steps", type=int, default=0, help="timed training steps per measurement, instead of --seconds")
    p.add_argument("--warmup", type=int, default=0,
                   help="steps run before timing: graph tracing, allocation, the step rate (default: per model, 3-8)")
    p.add_argument("--batch", type=int, default=0, help="global batch for every model (default: each seed's)")
    p.add_argument("--variants", default=None, metavar="NAMES",
                   help="instead of the comparison with Keras, measure these speed options against hpccnn's "
                        f"defaults (comma-separated, or 'all'): {', '.join(VARIANTS)}")
    p.add_argument("--interleave", type=int, default=0, metavar="CHUNKS",
                   help="instead, train plain Keras and hpccnn's 1-rank path in one process, CHUNKS chunks of "
                        "about --seconds each in alternating order: their per-step cost without the drift "
                        f"between processes; with --inputs, chunks of each input in one process (default "
                        f"{INPUT_CHUNKS}), each about half --seconds")
    p.add_argument("--repeats", type=int, default=None,
                   help="rounds per model, in alternating order (default 1; with --variants, 2 pairs; with --inputs, "
                        "3)")
    p.add_argument("--inputs", action="store_true",
                   help="instead, the same model and images held in memory, streamed from a staged pack and decoded "
                        "from JPEG files, on each of --ranks (inputs.csv): streaming's cost")
    p.add_argument("--input-images", type=int, default=0,
                   help=f"with --inputs: training images per model (default {INPUT_IMAGES:,}); with --memory-check, "
                        f"of the smaller pack (default 60,000, Fashion-MNIST's)")
    p.add_argument("--memory-check", action="store_true",
                   help=f"instead, each rank's peak memory with mnist_cnn streamed on the most of --ranks from a pack "
                        f"of 60,000 images and from one of 600,000 (memory.csv), {MEMORY_STEPS} timed steps on "
                        f"each unless --steps")
    p.add_argument("--keep-data", action="store_true",
                   help="with --inputs or --memory-check: keep the images and packs they make (OUT/input-data)")
    p.add_argument("--out", type=Path, default=None, help="folder for bench.csv and bench.md "
                                                          "(default results/bench-<date>-<time>)")
    p.add_argument("--nodes", type=int, default=0,
                   help="instead, measure scaling over a network: this many namespace nodes on this machine "
                        "(root; one rank per node, each on its own cores), at each --link-gbit, against the "
                        "README's scaling model; --batch is then the batch per rank (default: each seed's)")
    p.add_argument("--link-gbit", default="0.2,0.5,1,2", metavar="SPEEDS",
                   help="with --nodes: the link speeds in Gbit/s, comma-separated (default 0.2,0.5,1,2)")
    p.add_argument("--fp16-allreduce", action="store_true",
                   help="with --nodes: send the gradients as float16 (Horovod's Compression.fp16)")
    return p


def checked(args) -> tuple:
    """(models, rank counts) of the command line, or a UserError for what is wrong in it."""
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in PLANS and not usermodel.is_reference(m)]
    if unknown:
        raise UserError(f"unknown model {unknown[0]!r} for the benchmark; choose from: {', '.join(PLANS)}, or give "
                        f"your own as path/to/file.py:function or package.module:function")
    models = [usermodel.absolute(m) if usermodel.is_reference(m) else m for m in models]
    for m in models:  # the user's code found and importable here, before any measurement starts
        if usermodel.is_reference(m):
            get_model(m)
    try:
        ranks = sorted({int(r) for r in args.ranks.split(",")})
    except ValueError:
        raise UserError(f"--ranks wants comma-separated integers, got {args.ranks!r}") from None
    if (min(args.steps, args.warmup, args.batch, args.interleave) < 0 or min(ranks) < 1 or (args.repeats or 1) < 1
            or args.seconds <= 0):
        raise UserError("--repeats, --ranks and --seconds must be positive, --steps, --warmup, --batch and "
                        "--interleave not negative")
    if args.interleave and args.variants:
        raise UserError("--interleave and --variants are two different measurements; give one of them")
    if 0 < args.warmup < 2:
        raise UserError("--warmup must be at least 2: the step rate is timed over the warm-up's second half")
    if args.nodes and (args.interleave or args.variants):
        raise UserError("--nodes is a measurement of its own; give it without --interleave or --variants")
    modes = [m for m, given in (("--nodes", args.nodes), ("--variants", args.variants), ("--interleave",
             args.interleave and not args.inputs), ("--inputs", args.inputs), ("--memory-check", args.memory_check))
             if given]
    if len(modes) > 1 and {"--inputs", "--memory-check"} & set(modes):
        raise UserError(f"{' and '.join(modes)} are different measurements; give one of them")
    if args.input_images < 0 or args.inputs and any(0 < args.input_images < plan(m, batch=args.batch).batch
                                                    for m in models):
        raise UserError(f"--input-images {args.input_images}: fewer than a model's global batch")
    return models, ranks


def checked_peers(text: str) -> tuple:
    names = () if text.strip() == "none" else tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise UserError(f"unknown peer {unknown[0]!r}; choose from: {', '.join(PEERS)} (comma-separated), or none")
    return names


@cli
def main(argv=None):
    args = parser().parse_args(argv)
    args.models = args.models or ",".join(INPUT_MODELS if args.inputs else PLANS)
    models, ranks = checked(args)
    peers = checked_peers(args.peers)
    options = dict(batch=args.batch, steps=args.steps, warmup=args.warmup, seconds=args.seconds)
    out = args.out or Path("results") / f"bench-{datetime.datetime.now():%Y-%m-%d-%H%M%S}"
    if out.exists():
        raise UserError(f"--out {out} already exists; hpccnn never overwrites results")
    if args.nodes:
        name = "nodes"
        _, md = scaling.run_nodes(models, args.nodes, scaling.parse_links(args.link_gbit), options, out,
                                  fp16=args.fp16_allreduce, peers=peers)
    elif args.variants:
        name = "variants"
        names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown:
            raise UserError(f"unknown variant {unknown[0]!r}; choose from: {', '.join(VARIANTS)} (or all)")
        _, md = run_variants(models, names, options, out, args.repeats or 2)
    elif args.inputs:
        name = "inputs"
        _, md = run_inputs(models, ranks, options, out, args.repeats or 3, args.input_images or INPUT_IMAGES,
                           args.interleave or INPUT_CHUNKS, args.keep_data)
    elif args.memory_check:
        name = "memory"
        _, md = run_memory_check(max(ranks), options, out, args.repeats or 1, args.input_images, args.keep_data)
    elif args.interleave:
        name = "interleaved"
        _, md = run_interleaved(models, options, out, args.interleave)
    else:
        name = "bench"
        _, md = run(models, ranks, options, out, args.repeats or 1, peers=peers)
    print("\n" + md)
    print(f"hpccnn: {out / (name + '.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
