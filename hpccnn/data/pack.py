"""A user's data set checked and packed once: ``python -m hpccnn.stage PATH [--name NAME]``.

A pack is a folder ``DATA_DIR/packs/NAME/`` of a few large TFRecord shards per split (``train``, ``val``,
``test``), each read start to end by one reader, and ``index.json``: the classes, the counts per split and
class, the images' channels and sizes, the source, what was skipped, and each shard's SHA-256. A record holds
one image's decoded pixels (uint8, or float32 for float arrays) with its height, width, channels, label and
index in its split. Decoded pixels, not the JPEG or PNG file, because every image is decoded once, here, where
it is checked: a training step never pays for decoding, at the price of more bytes on disk for photographs.

Packing writes its shards into ``.NAME.partial/`` one at a time, each complete file renamed into place, so an
interrupted pack goes on from its finished shards when run again; the pack is renamed to ``NAME`` only once its
index is written, so a half-written pack never counts as staged.
"""

import datetime
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpccnn.common.errors import UserError
from hpccnn.data import userdata
from hpccnn.data.base import sha256
from hpccnn.data.carve import shard_order

# 2: each split says the indices it skipped and a float split its range (hpccnn.training.stream); 3: each shard's
# images in a seeded order, not the source's (hpccnn.data.carve.shard_order)
FORMAT = 3
SHARD_BYTES = 128 << 20  # about this much per shard
MIN_SHARDS = 8  # of the training split, so that up to 8 readers each read their own


def folder_of(data_dir: Path, name: str) -> Path:
    return Path(data_dir) / "packs" / name


def find(name: str, data_dir) -> Path | None:
    """The pack staged as name in data_dir, or None."""
    folder = folder_of(Path(data_dir), name)
    return folder if (folder / "index.json").is_file() else None


@dataclass(frozen=True)
class Packing:
    """A packing job: what to pack (a folder, .npz or HDF5 file) as which pack in which data cache, and how."""

    path: Path
    name: str
    data_dir: Path
    shards: int | None = None  # per split; None: about SHARD_BYTES each (shard_counts)
    force: bool = False  # replace a staged pack of that name, and start over
    skip_bad_images: bool = False  # pack the readable images and list the others in index.json
    hdf5_images: str = ""  # an HDF5 file's datasets, as --hdf5-images and --hdf5-labels name them
    hdf5_labels: str = ""
    class_names: dict | None = None  # a data set's own names for its folders (Imagenette's WordNet ids)
    again: str = ""  # the command that stages it again (index.json's staged_by); empty: PATH --name NAME


class Source:
    """What a pack is made from: per split, a count and a way to get image i (pixels and label, or None and
    the reason it can't be read), and the class names. names: what has hdf5_images and hdf5_labels (a Packing,
    an Experiment)."""

    def __init__(self, path: Path, names):
        self.path = path
        self.names = (names.hdf5_images, names.hdf5_labels)
        if path.is_dir():
            folder = userdata.layout(path)
            self.classes = folder.classes
            index = {c: i for i, c in enumerate(folder.classes)}
            self.items = {split: [(f, index[c]) for c, files in classes.items() for f in files]
                          for split, classes in folder.splits.items()}
            self.arrays = None
        else:
            raw = userdata.load_npz(path) if path.name.lower().endswith(".npz") else userdata.load_hdf5(path, names)
            self.arrays = {"train": (raw.x_train, raw.y_train)}
            if raw.x_test is not None:
                self.arrays["test"] = (raw.x_test, raw.y_test)
            labels = np.concatenate([y for _, y in self.arrays.values()])
            self.classes = [str(i) for i in range(int(labels.max()) + 1)]
            self.items = {split: list(range(len(y))) for split, (_, y) in self.arrays.items()}

    def count(self, split) -> int:
        return len(self.items[split])

    def get(self, split, i):
        if self.arrays is not None:
            x, y = self.arrays[split]
            image = x[i]
            return (image if image.dtype == np.uint8 else image.astype(np.float32)), int(y[i]), None
        path, label = self.items[split][i]
        pixels, reason = userdata.read_image(path)
        return pixels, label, None if pixels is not None else f"{path} ({reason})"

    def description(self) -> str:
        def stamp(f):
            stat = f.stat()
            return f"{f} {stat.st_size} {stat.st_mtime_ns}"

        files = [stamp(f) for split in sorted(self.items) for f, _ in self.items[split]] if self.arrays is None else []
        digest = hashlib.sha256("\n".join(files).encode()).hexdigest() if files else sha256(self.path)
        return f"{self.path} {digest} {self.names}"


def shard_counts(source: Source, shards: int | None) -> dict:
    """How many shards each split gets: about SHARD_BYTES each, the training split at least MIN_SHARDS."""
    counts = {}
    for split in source.items:
        n = source.count(split)
        if n == 0:
            continue
        samples = [source.get(split, i)[0] for i in range(min(n, 20))]
        per_image = next((s.nbytes for s in samples if s is not None), 1)
        wanted = shards or max(MIN_SHARDS if split == "train" else 1, math.ceil(n * per_image / SHARD_BYTES))
        counts[split] = max(1, min(wanted, n))
    return counts


def _example(image, label: int, index: int) -> bytes:
    import tensorflow as tf

    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    h, w, c = image.shape
    return tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "height": ints(h), "width": ints(w), "channels": ints(c), "label": ints(label), "index": ints(index),
        "float": ints(image.dtype == np.float32)})).SerializeToString()


def pixel_range(facts: dict, image, i: int) -> None:
    """A float image's finite range and whether it has NaN or infinite pixels, into its shard's facts (a
    streamed pack is scaled and checked from them, as hpccnn.data.userdata.pixels does an array)."""
    finite = np.isfinite(image)
    if not finite.all():
        facts["nonfinite"] += 1
        facts["first_nonfinite"] = i if facts["first_nonfinite"] is None else min(facts["first_nonfinite"], i)
    if finite.any():
        low, high = float(image[finite].min()), float(image[finite].max())
        facts["min"] = low if facts["min"] is None else min(facts["min"], low)
        facts["max"] = high if facts["max"] is None else max(facts["max"], high)


def write_shard(source: Source, split: str, k: int, n: int, target: Path) -> dict:
    """Shard k of n of split (images k, k+n, ..., in carve.shard_order's order) written whole to target; its
    facts."""
    import tensorflow as tf

    tmp = target.with_name(f".{target.name}.tmp")
    facts = {"file": target.name, "count": 0, "bad": [], "skipped_index": [], "channels": {}, "sizes": {},
             "per_class": {}, "dtype": set(), "nonfinite": 0, "first_nonfinite": None, "min": None, "max": None}
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for i in map(int, shard_order(k, n, source.count(split))):
            image, label, bad = source.get(split, i)
            if image is None:
                facts["bad"].append(bad)
                facts["skipped_index"].append(i)
                continue
            if image.dtype == np.float32:
                pixel_range(facts, image, i)
            writer.write(_example(image, label, i))
            facts["count"] += 1
            facts["channels"][str(image.shape[2])] = facts["channels"].get(str(image.shape[2]), 0) + 1
            size = f"{image.shape[0]}x{image.shape[1]}"
            facts["sizes"][size] = facts["sizes"].get(size, 0) + 1
            facts["per_class"][str(label)] = facts["per_class"].get(str(label), 0) + 1
            facts["dtype"].add(str(image.dtype))
    facts["dtype"] = sorted(facts["dtype"])
    facts["sha256"] = sha256(tmp)
    tmp.rename(target)
    return facts


def pack(job: Packing, log=print) -> Path:
    """job.path (a folder, .npz or HDF5 file) checked and packed as DATA_DIR/packs/NAME; returns the pack's folder."""
    userdata.check(str(job.path))
    final = folder_of(job.data_dir, job.name)
    if final.exists() and not job.force:
        raise UserError(f"a pack named {job.name} is staged already in {final}; pass --force to replace it, or --name "
                        f"another name")
    source = Source(Path(job.path).resolve(), job)
    if job.class_names:  # a data set's own names for its folders (Imagenette's WordNet ids)
        source.classes = [job.class_names.get(c, c) for c in source.classes]
    partial = final.with_name(f".{job.name}.partial")
    plan = {"source": source.description(), "shards": shard_counts(source, job.shards)}
    if (partial / "plan.json").is_file() and (job.force or json.loads((partial / "plan.json").read_text()) != plan):
        shutil.rmtree(partial)  # asked to, or made from something else (a file changed since), or sharded otherwise
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "plan.json").write_text(json.dumps(plan))
    done = sum(1 for f in partial.glob("*.json") if f.name != "plan.json")
    total = sum(plan["shards"].values())
    if done:
        log(f"hpccnn: packing {job.name}: {done} of {total} shards were packed already; going on from there")
    for split, n in plan["shards"].items():
        for k in range(n):
            target = partial / f"{split}-{k:05d}-of-{n:05d}.tfrecord"
            facts_file = partial / f"{target.name}.json"
            if facts_file.is_file() and target.is_file():
                continue
            facts = write_shard(source, split, k, n, target)
            facts_file.write_text(json.dumps(facts))
            done += 1
            log(f"hpccnn: packing {job.name}: shard {done}/{total} ({split}, {facts['count']:,} images)")
    return finish(job, source, partial, plan)


def finish(job: Packing, source: Source, partial: Path, plan: dict) -> Path:
    """The pack's index from its shards' facts, then the pack in place; or the bad files refused."""
    splits, bad, channels, sizes, dtypes = {}, [], {}, {}, set()
    for split, n in plan["shards"].items():
        facts = [json.loads((partial / f"{split}-{k:05d}-of-{n:05d}.tfrecord.json").read_text()) for k in range(n)]
        per_class = [0] * len(source.classes)
        for f in facts:
            bad += f["bad"]
            dtypes.update(f["dtype"])
            for key, count in f["channels"].items():
                channels[key] = channels.get(key, 0) + count
            for key, count in f["sizes"].items():
                sizes[key] = sizes.get(key, 0) + count
            for label, count in f["per_class"].items():
                per_class[int(label)] += count
        ranges = [f for f in facts if f.get("min") is not None]
        firsts = [f["first_nonfinite"] for f in facts if f.get("first_nonfinite") is not None]
        splits[split] = {"count": sum(f["count"] for f in facts), "per_class": per_class,
                         "shards": [{k: f[k] for k in ("file", "count", "sha256")} for f in facts],
                         # what a streamed read needs: the source's indices left out, a float split's range
                         "skipped_index": sorted(i for f in facts for i in f.get("skipped_index", [])),
                         "nonfinite": sum(f.get("nonfinite", 0) for f in facts),
                         "first_nonfinite": min(firsts) if firsts else None,
                         "min": min(f["min"] for f in ranges) if ranges else None,
                         "max": max(f["max"] for f in ranges) if ranges else None}
    if bad and not job.skip_bad_images:  # the finished shards kept: run again with --skip-bad-images goes on
        total = sum(source.count(s) for s in plan["shards"])
        raise UserError(f"{source.path}: {len(bad)} of {total} files are not readable images: "
                        f"{'; '.join(bad[:userdata.SHOWN])}{' ...' if len(bad) > userdata.SHOWN else ''}; fix or "
                        f"remove them (then stage with --force), or stage again with --skip-bad-images to pack the "
                        f"rest; nothing was staged")
    splits = {split: facts for split, facts in splits.items() if facts["count"]}  # all of a split skipped: none
    if "train" not in splits:
        raise UserError(f"{source.path}: none of its training images can be read; nothing was staged")
    empty = [source.classes[i] for i, count in enumerate(splits["train"]["per_class"]) if count == 0]
    if empty:
        shutil.rmtree(partial)
        raise UserError(f"{source.path}: class {empty[0]!r} has no readable training image; nothing was staged")
    again = job.again or f"{source.path} --name {job.name}"
    index = {"format": FORMAT, "name": job.name, "source": str(source.path),
             "created": datetime.datetime.now().isoformat(timespec="seconds"), "classes": source.classes,
             "splits": splits, "channels": channels, "sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:50]),
             "distinct_sizes": len(sizes), "dtype": sorted(dtypes), "skipped": bad,
             "staged_by": f"python -m hpccnn.stage {again}"}
    (partial / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    for f in partial.glob("*.json"):
        if f.name != "index.json":
            f.unlink()
    final = folder_of(job.data_dir, job.name)
    if final.exists() and job.force:
        shutil.rmtree(final)
    partial.rename(final)
    return final


def read_index(folder: Path) -> dict:
    return json.loads((folder / "index.json").read_text())


def verify(folder: Path, index: dict) -> None:
    """Every shard as it was packed (its SHA-256), or a UserError naming the first one that isn't."""
    for split in index["splits"].values():
        for shard in split["shards"]:
            path = folder / shard["file"]
            if not path.is_file() or sha256(path) != shard["sha256"]:
                what = "is missing" if not path.is_file() else "has changed since it was packed (its SHA-256 differs)"
                raise UserError(f"pack {index['name']}: shard {path} {what}; stage it again with "
                                f"{index.get('staged_by', 'python -m hpccnn.stage ' + index['source'])} --force")


def read_split(folder: Path, index: dict, split: str):
    """(images as a list of arrays in split order, labels) of a split, read from its shards."""
    import tensorflow as tf

    spec = {k: tf.io.FixedLenFeature([], tf.int64) for k in ("height", "width", "channels", "label", "index", "float")}
    spec["image"] = tf.io.FixedLenFeature([], tf.string)
    files = [str(folder / s["file"]) for s in index["splits"][split]["shards"]]
    count = index["splits"][split]["count"]
    images, labels, order = [None] * count, np.zeros(count, np.int64), []
    for record in tf.data.TFRecordDataset(files).map(lambda r: tf.io.parse_single_example(r, spec)).as_numpy_iterator():
        dtype = np.float32 if record["float"] else np.uint8
        image = np.frombuffer(record["image"], dtype).reshape(record["height"], record["width"], record["channels"])
        order.append((int(record["index"]), image, int(record["label"])))
    order.sort(key=lambda item: item[0])  # the source's order, whichever shard an image went to
    for i, (_, image, label) in enumerate(order):
        images[i], labels[i] = image, label
    return images, labels


def settled_channels(index: dict, exp) -> int:
    """The channel count a pack's images are read with (--channels, or the majority's, said in a line); a
    UserError where its images' sizes differ and no --image-size says what to resize them to."""
    channels = userdata.choose_channels(f"pack {index['name']}", index["channels"], exp.channels)
    if index["distinct_sizes"] > 1 and not exp.image_size:
        shown = ", ".join(list(index["sizes"])[:2])
        raise UserError(f"pack {index['name']}: its images have {index['distinct_sizes']} different sizes ({shown}, "
                        f"...); give --image-size N to resize them all to NxN")
    return channels


def common_size(index: dict) -> tuple:
    """(height, width) of most of a pack's images, and the most channels any has."""
    h, w = (int(v) for v in next(iter(index["sizes"])).split("x"))
    return h, w, max(int(c) for c in index["channels"])


def load(folder: Path, exp):
    """A staged pack as a hpccnn.data.base.Raw: verified, its images resized to --image-size where their sizes differ
    (each needs it) and converted to one channel count (--channels, or the majority's, said in a line), as an
    image folder's are read (hpccnn.data.userdata)."""
    index = read_index(folder)
    verify(folder, index)
    channels = settled_channels(index, exp)
    images, labels = {}, {}
    for split in index["splits"]:
        pixels, labels[split] = read_split(folder, index, split)
        images[split] = userdata.uniform(pixels, channels, exp.image_size)
    return userdata.assemble(images, labels, index["classes"])
