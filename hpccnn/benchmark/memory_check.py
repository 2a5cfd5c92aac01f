"""python -m hpccnn.bench --memory-check: each rank's peak memory streaming mnist_cnn from a pack of 60,000
images and from one of 600,000, the same packs held in memory beside them as the control (memory.csv,
memory.md)."""

import dataclasses
import shutil
import statistics

import numpy as np

from hpccnn.benchmark.inputs import input_data, input_env, photo_crops
from hpccnn.benchmark.measure import measure
from hpccnn.benchmark.plans import Options
from hpccnn.benchmark.results import document, write
from hpccnn.common import tables
from hpccnn.data import builtin
from hpccnn.data.stage import DEBIAN_FASHION_MNIST

# mnist_cnn streamed from a pack of 60,000 images and from the same ten times over
MEMORY_COPIES = (1, 10)
MEMORY_STEPS = 200  # timed steps on both packs (--steps): a comparison of data sizes, not of run lengths
MEMORY_TOLERANCE = 0.10  # each rank's peak on the large pack within this of its peak on the small one


def memory_check_images(log=print) -> tuple:
    """((x_train, y_train), (x_test, y_test), what they are): Fashion-MNIST from Debian's package where it is
    installed, else as many crops of the sample photographs (photo_crops) at 28x28x1."""
    if DEBIAN_FASHION_MNIST.is_dir():
        got = builtin.read_idx_folder(DEBIAN_FASHION_MNIST)
        return ((got["x_train"][..., None], got["y_train"]), (got["x_test"][..., None], got["y_test"]),
                f"Fashion-MNIST ({DEBIAN_FASHION_MNIST})")
    log(f"{DEBIAN_FASHION_MNIST} is missing: crops of the sample photographs instead of Fashion-MNIST")
    x, y = photo_crops(70_000, (28, 28, 1))
    return (x[:60_000], y[:60_000]), (x[60_000:], y[60_000:]), "crops of scikit-learn's sample photographs"


def run_memory_check(options: Options, images=0, keep=False):
    """mnist_cnn streamed on ranks from a pack of 60,000 images (or the first images of them) and from one
    of the same ten times over (each written as an .npz and staged), the same steps on both: each rank's
    peak resident memory, which must not grow with the data set; the same packs held in memory beside them,
    as the control that does. ranks: the most of the options', images: of the smaller pack (0: all), keep: the
    images and packs too."""
    ranks, out_dir, repeats, log = max(options.ranks), options.out, options.repeats, options.log
    out_dir.mkdir(parents=True)
    train, test, source = memory_check_images(log)
    train = (train[0][:images or None], train[1][:images or None])
    how = dataclasses.replace(options.plan("mnist_cnn"), steps=options.given.steps or MEMORY_STEPS)
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
    return rows, write(out_dir, "memory", rows, document(
        f": mnist_cnn on {ranks} rank{'s' if ranks > 1 else ''}, global batch {how.batch}, {how.steps} timed steps "
        f"after {how.warmup} of warm-up on each pack; {source}, {len(train[0]):,} training images and the same "
        f"repeated {MEMORY_COPIES[-1]} times, each staged from an .npz on disk. Peak resident memory (VmHWM) "
        f"of each rank, the highest of {repeats} run{'s' if repeats > 1 else ''}; held in memory: the control.",
        MEMORY_COLUMNS, rows, after=f"\n- {verdict}\n"), fresh=False)


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
