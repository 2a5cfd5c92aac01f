"""A staged pack read from its shards while training, for data sets larger than a node's memory.

Which records a rank reads. A split of S shards read by N ranks: rank r reads shards r, r+N, ... of the first
S - S % N whole, start to end (file-level sharding before shuffling, as tf.data's guide recommends: no rank
opens another's files); each of the last S % N shards is read by every rank, which keeps every N-th record
from its rank on. So the ranks' shares differ by at most a few images whatever the shard sizes, and each
rank's share is known from the pack's index alone, before anything is read.

The training set each epoch. A rank shuffles its shards' order, reads CYCLE of them at once, shuffles the
records in blocks of at most SHUFFLE_BYTES (16 MB: the whole share where it fits), keeps steps x batch of them,
decodes in parallel and prefetches.
steps is the smallest share's // batch, the same on every rank (allreduce needs it), so an epoch leaves out
fewer than a batch of each rank's share plus the few images by which the shares differ. Every seed of the
shuffles is a function of (--seed, rank, epoch): a resumed run reads what it would have read.

Validation and test sets are read in order, each rank its own share; the predictions rank 0 gathers carry
each image's position in the test set. The split into training, validation and test sets is the one the
in-memory path makes (hpccnn.data.carve.sets, by position in the pack's order), so both train on the same images.
"""

import dataclasses
from pathlib import Path

import numpy as np

from hpccnn.common.errors import UserError
from hpccnn.data import datasets, pack, userdata
from hpccnn.data.carve import in_shard, positions, sets
from hpccnn.training import dist, memory
from hpccnn.training.inputs import Batches, prepare

SHUFFLE_BYTES = 16 << 20  # a rank shuffles blocks of at most this many bytes of records
CYCLE = 4  # shards a rank reads at once
PARSED_AT_ONCE = 256  # records parsed together
MEMORY_SHARE = 0.5  # a pack is held in memory when its images take at most this share of the node's memory


@dataclasses.dataclass
class Streamed:
    """What the training run needs to know of a streamed pack (in place of hpccnn.data.datasets.Splits)."""

    folder: Path
    index: dict
    sets: dict  # "train", "val", "test": (the pack's split, its source indices in the set's order)
    shape: tuple  # (height, width, channels) of the images as read (--image-size's side where they differ)
    classes: list
    scale: float
    channels: int
    float_pixels: bool
    nonfinite: float | None  # the value replacing NaN and infinite pixels, or None

    def count(self, name: str) -> int:
        return len(self.sets[name][1])


def data_bytes(index: dict, exp) -> int:
    """The bytes a pack's images take in memory, as the in-memory path holds them."""
    count = sum(split["count"] for split in index["splits"].values())
    item = 4 if index.get("dtype") == ["float32"] else 1
    h, w, c = pack.common_size(index)
    if exp.image_size and index["distinct_sizes"] > 1:
        h = w = exp.image_size
    return count * h * w * c * item


def choose(exp, world, data_dir, resumed_read: str = "") -> dict | None:
    """How exp's data set is read: None for anything but a pack (held in memory as ever); for a pack, a dict of
    read ("memory" or "stream"), why, and the figures it was decided on: provenance.json's "input". --input
    memory or stream decides; auto streams a pack whose images take more than MEMORY_SHARE of the node's
    memory. A resumed run reads as it started. Every rank calls it; rank 0 decides, and says so in one line."""
    if userdata.is_path(exp.dataset) or exp.dataset in datasets.DATASETS:
        if exp.input == "stream":
            raise UserError(f"--input stream reads a staged pack, and {exp.dataset!r} is not one; stage it first: "
                            f"python -m hpccnn.stage {exp.dataset}")
        return None
    folder = pack.find(exp.dataset, datasets.resolve_data_dir(data_dir))
    if folder is None:
        return None  # a folder by that name, or unknown: hpccnn.data.datasets says which
    choice = None
    if world.is_main:
        size = data_bytes(pack.read_index(folder), exp)
        node, source = memory.available(1)  # all of this node's: the window holds one copy per node
        choice = {"read": "", "data_bytes": int(size), "node_bytes": int(node), "node_bytes_from": source}
        if resumed_read:
            choice.update(read=resumed_read, why="as the run read it when it started")
        elif exp.input != "auto":
            choice.update(read=exp.input, why=f"--input {exp.input}")
        else:
            fits = size <= MEMORY_SHARE * node
            choice.update(read="memory" if fits else "stream",
                          why=f"its images take {'at most' if fits else 'more than'} {MEMORY_SHARE:.0%} of the "
                              f"node's memory")
        mb = 2 ** 20
        print(f"hpccnn: pack {exp.dataset}: {size / mb:,.0f} MB of images, {node / mb:,.0f} MB of memory here "
              f"({source}): {'held in memory' if choice['read'] == 'memory' else 'streamed from its shards'}, "
              f"{choice['why']} (--input memory or stream to choose)", flush=True)
    return dist.broadcast_object(choice) if world.size > 1 else choice


def reads(shards: list, rank: int, size: int) -> list:
    """(file, every, offset) of each shard rank reads of a split's shards: whole ones, then its share of the rest."""
    whole = len(shards) - len(shards) % size
    return ([(s["file"], 1, 0) for k, s in enumerate(shards[:whole]) if k % size == rank]
            + [(s["file"], size, rank) for s in shards[whole:]])


def share(index: dict, which, rank: int, size: int) -> np.ndarray:
    """The source indices of a set that rank reads, shard by shard in reads() order: of a shard read whole, every
    image of the set in it; of a shard every rank reads, every size-th of them from rank on."""
    split = index["splits"][which[0]]
    found = positions(index, which)
    number = {s["file"]: k for k, s in enumerate(split["shards"])}
    parts = []
    for f, every, offset in reads(split["shards"], rank, size):
        records = in_shard(split, number[f])
        parts.append(records[found[records] >= 0][offset::every])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def open_pack(exp, data_dir) -> Streamed:
    """A staged pack checked for streaming: verified (each shard's SHA-256), staged by this hpccnn's format,
    its channels and sizes settled, its float pixels checked and scaled as hpccnn.data.userdata.pixels does."""
    folder = pack.find(exp.dataset, datasets.resolve_data_dir(data_dir))
    index = pack.read_index(folder)
    again = f"{index.get('staged_by', 'python -m hpccnn.stage ' + index['source'])} --force"
    if index.get("format", 1) < 3:  # 3: each shard's images in a seeded order, not a folder's class by class
        raise UserError(f"pack {exp.dataset} was staged by an older hpccnn that streaming can't read; stage it "
                        f"again with {again}, or give --input memory")
    pack.verify(folder, index)
    channels = pack.settled_channels(index, exp)
    h, w = (exp.image_size,) * 2 if index["distinct_sizes"] > 1 else pack.common_size(index)[:2]
    chosen = sets(index, exp)
    float_pixels = index.get("dtype") == ["float32"]
    scale, nonfinite = scale_of(index, exp, float_pixels, {s for s, _ in chosen.values()})
    return Streamed(folder, index, chosen, (h, w, channels), list(index["classes"]), scale, channels,
                    float_pixels, nonfinite)


def scale_of(index: dict, exp, float_pixels: bool, used: set) -> tuple:
    """(scale to 0..1, the value for non-finite pixels or None), from the pack's recorded ranges, as
    hpccnn.data.userdata.pixels decides them for arrays in memory."""
    where = f"pack {index['name']}"
    splits = [index["splits"][s] for s in sorted(used)]
    nonfinite = None
    if float_pixels and any(s.get("nonfinite") for s in splits):
        if exp.nonfinite == "":
            bad = [s for s in splits if s.get("nonfinite")]
            raise UserError(f"{where}: {sum(s['nonfinite'] for s in bad)} images have NaN or infinite pixels (the "
                            f"first: image {bad[0]['first_nonfinite']}); fix them, or give --nonfinite VALUE to "
                            f"replace those pixels with VALUE")
        nonfinite = float(exp.nonfinite)
    if exp.pixel_max:
        return 1 / exp.pixel_max, nonfinite
    if not float_pixels:
        return 1 / 255, nonfinite
    lows = [s["min"] for s in splits if s.get("min") is not None] + ([nonfinite] if nonfinite is not None else [])
    highs = [s["max"] for s in splits if s.get("max") is not None] + ([nonfinite] if nonfinite is not None else [])
    return userdata.range_scale(where, min(lows, default=0.0), max(highs, default=0.0)), nonfinite


def record_bytes(streamed: Streamed) -> int:
    """About a record's bytes in the shuffle buffer: the largest common size's pixels and its other fields."""
    h, w, c = pack.common_size(streamed.index)
    return h * w * c * (4 if streamed.float_pixels else 1) + 64


def shuffle_buffer(streamed: Streamed, count: int, batch: int) -> int:
    """Records in a rank's shuffle block: at most SHUFFLE_BYTES of them, at least a few batches."""
    return int(max(1, min(count, max(4 * batch, SHUFFLE_BYTES // record_bytes(streamed)))))


def steps_per_epoch(streamed: Streamed, size: int, batch: int) -> tuple:
    """(steps, the smallest share, the largest): steps per epoch, the same on every rank."""
    counts = [len(share(streamed.index, streamed.sets["train"], r, size)) for r in range(size)]
    return min(counts) // batch, min(counts), max(counts)


def _parse(records):
    """A batch of serialized records parsed at once (tf.io.parse_example: far cheaper than record by record)."""
    import tensorflow as tf

    spec = {k: tf.io.FixedLenFeature([], tf.int64) for k in ("height", "width", "channels", "label", "index")}
    spec["image"] = tf.io.FixedLenFeature([], tf.string)
    return tf.io.parse_example(records, spec)


def _records(streamed: Streamed, which, rank: int, size: int, seed=None):
    """The records of a set that rank reads, parsed, in batches of up to PARSED_AT_ONCE (never one by one: tf.data
    pays for each element): its shards in an order shuffled by seed (a stateless random seed: two int64s), CYCLE at
    a time; or without seed, one after another in order. A uniform pack's records keep only their image, label
    and index."""
    import tensorflow as tf

    split, _ = which
    files = reads(streamed.index["splits"][split]["shards"], rank, size)
    columns = (tf.constant([str(streamed.folder / f) for f, _, _ in files]),
               tf.constant([e for _, e, _ in files], tf.int64), tf.constant([o for _, _, o in files], tf.int64))
    if seed is not None:  # stateless: the seed may be a tensor (the epoch's, in the graph)
        order = tf.random.experimental.stateless_shuffle(tf.range(len(files), dtype=tf.int64), seed=seed)
        columns = tuple(tf.gather(c, order) for c in columns)
    ds = tf.data.Dataset.from_tensor_slices(columns)
    # which source indices are in the set, a bit each: a constant of the graph that stays small however large
    # the pack (a position each, 8 bytes, took 5 MB of 600,000 images, copied by every graph rewrite)
    bits = tf.constant(np.packbits(positions(streamed.index, which) >= 0, bitorder="little"))
    fields = ("image", "label", "index") if uniform(streamed) else ("image", "label", "index", "height", "width",
                                                                     "channels")

    def in_set(records):
        index = records["index"]
        keep = tf.bitwise.bitwise_and(tf.bitwise.right_shift(tf.gather(bits, index // 8), tf.cast(index % 8, tf.uint8)),
                                      tf.constant(1, tf.uint8)) > 0
        return {k: tf.boolean_mask(records[k], keep) for k in fields}

    def every(n, k):
        def mine(seen, records):  # of the set's records of a shard, every n-th from k on (share)
            count = tf.cast(tf.shape(records["index"])[0], tf.int64)
            keep = tf.range(seen, seen + count) % n == k
            return seen + count, {key: tf.boolean_mask(t, keep) for key, t in records.items()}
        return mine

    def one(path, n, k):
        records = tf.data.TFRecordDataset(path, buffer_size=1 << 20).batch(PARSED_AT_ONCE).map(_parse).map(in_set)
        return records.scan(tf.constant(0, tf.int64), every(n, k))

    if seed is None:
        return ds.flat_map(one)
    return ds.interleave(one, cycle_length=min(CYCLE, len(files)), block_length=1,
                         num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _decoder(streamed: Streamed):
    """A record to (image, label): pixels as packed, converted to the chosen channels, resized where the pack's
    sizes differ, non-finite pixels replaced; the batch's scale and --image-size come after
    (hpccnn.training.inputs.prepare)."""
    import tensorflow as tf

    dtype = tf.float32 if streamed.float_pixels else tf.uint8
    channels = streamed.channels
    mixed_channels = len(streamed.index["channels"]) > 1 or int(next(iter(streamed.index["channels"]))) != channels
    resize = streamed.index["distinct_sizes"] > 1
    h, w, _ = streamed.shape

    def decode(record):
        shape = tf.stack([record["height"], record["width"], record["channels"]]) if "height" in record else (h, w,
                                                                                                         channels)
        image = tf.reshape(tf.io.decode_raw(record["image"], dtype), shape)  # (a uniform pack's: the one shape)
        if mixed_channels:
            image = tf.cond(tf.shape(image)[2] == channels, lambda: image,
                            lambda: _to_channels(image, channels))
        if resize:
            image = tf.image.resize(image, (h, w), method="bilinear")
            image = tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), dtype) if dtype == tf.uint8 else image
        if streamed.nonfinite is not None:
            image = tf.where(tf.math.is_finite(image), image, tf.cast(streamed.nonfinite, image.dtype))
        return tf.reshape(image, (h, w, channels)), record["label"]

    return decode


def uniform(streamed: Streamed) -> bool:
    """Whether every record holds an image of the same size and channels as the model's: decoded a batch at once."""
    return streamed.index["distinct_sizes"] == 1 and list(streamed.index["channels"]) == [str(streamed.channels)]


def _batch_decoder(streamed: Streamed):
    """A batch of records of a uniform pack to (images, labels), decoded at once."""
    import tensorflow as tf

    dtype = tf.float32 if streamed.float_pixels else tf.uint8

    def decode(records):
        images = tf.reshape(tf.io.decode_raw(records["image"], dtype), (-1, *streamed.shape))
        if streamed.nonfinite is not None:
            images = tf.where(tf.math.is_finite(images), images, tf.cast(streamed.nonfinite, dtype))
        return images, records["label"]

    return decode


def _batched(streamed: Streamed, records, batch: int, drop_remainder: bool, rebatch=True):
    """Batches of records (of any size, from _records; or of batch already: rebatch False) decoded in parallel into
    batches of batch (images, labels): a batch at once where the pack is uniform, else image by image."""
    import tensorflow as tf

    if uniform(streamed):
        ds = records.rebatch(batch, drop_remainder=drop_remainder) if rebatch else records
        return ds.map(_batch_decoder(streamed), num_parallel_calls=tf.data.AUTOTUNE)
    ds = records.unbatch().map(_decoder(streamed), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch, drop_remainder=drop_remainder)


def _to_channels(image, channels: int):
    """hpccnn.data.userdata.to_channels in TensorFlow: grayscale repeated, colour weighted to luma."""
    import tensorflow as tf

    if channels == 3:
        return tf.repeat(image[..., :1], 3, axis=2)
    gray = tf.tensordot(tf.cast(image, tf.float32), tf.constant([0.299, 0.587, 0.114]), axes=[[2], [0]])[..., None]
    return tf.cast(tf.round(gray), image.dtype) if image.dtype == tf.uint8 else gray


def epoch_seed(seed, rank: int) -> int:
    """The first half of each stateless shuffle's seed: from (--seed, rank); the second is the epoch's."""
    return int(np.random.default_rng([*np.atleast_1d(seed), rank]).integers(1, 2 ** 40))


def train_records(streamed: Streamed, rank: int, size: int, batches: Batches):
    """The training records rank reads in epochs batches.first_epoch..batches.epochs-1, parsed, in batches.steps
    batches of batches.batch per epoch, each epoch's order a function of (batches.seed, rank, epoch) alone."""
    import tensorflow as tf

    batch = batches.batch
    count = len(share(streamed.index, streamed.sets["train"], rank, size))
    block = shuffle_buffer(streamed, count, batch)
    base = epoch_seed(batches.seed, rank)

    def shuffled(k, records, e):
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(records["index"])[0]),
                                                         seed=tf.stack([base, 2 * e + 1 + 2 * k]))
        return {key: tf.gather(t, order) for key, t in records.items()}

    def epoch(e):  # tf.data's own shuffle takes no seed computed in the graph: blocks shuffled statelessly
        records = _records(streamed, streamed.sets["train"], rank, size, seed=tf.stack([base, 2 * e]))
        blocks = records.rebatch(block).enumerate().map(lambda k, records: shuffled(k, records, e))
        return blocks.rebatch(batch).take(batches.steps)  # whole batches: the rank's share holds steps of them

    return tf.data.Dataset.range(batches.first_epoch, max(batches.first_epoch, batches.epochs)).flat_map(epoch)


def train_pipeline(streamed: Streamed, rank: int, size: int, batches: Batches, image_size: int):
    """Training batches of train_records: decoded in parallel, scaled and resized to image_size, prefetched."""
    import tensorflow as tf

    ds = _batched(streamed, train_records(streamed, rank, size, batches), batches.batch,
                  drop_remainder=False, rebatch=False)  # whole batches already
    return ds.map(prepare(streamed.scale, image_size), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


def eval_pipeline(streamed: Streamed, name: str, rank: int, size: int, batch: int, image_size: int):
    """A rank's share of the validation or test set, in order, batched (the last batch may be short)."""
    import tensorflow as tf

    count = len(share(streamed.index, streamed.sets[name], rank, size))
    ds = _batched(streamed, _records(streamed, streamed.sets[name], rank, size), batch, drop_remainder=False)
    # its length known, as Keras needs it for steps_per_execution > 1 (and checked: a wrong count is an error)
    ds = ds.apply(tf.data.experimental.assert_cardinality(-(-count // batch)))
    return ds.map(prepare(streamed.scale, image_size), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


def test_labels(streamed: Streamed, rank: int, size: int, name="test") -> tuple:
    """(positions in the test set, labels) of rank's share of the test set (or set name), in the order
    eval_pipeline reads it."""
    found = positions(streamed.index, streamed.sets[name])
    parts = list(_records(streamed, streamed.sets[name], rank, size).map(lambda r: (r["index"], r["label"]))
                 .as_numpy_iterator())
    index = np.concatenate([i for i, _ in parts]) if parts else np.zeros(0, np.int64)
    return found[index], (np.concatenate([y for _, y in parts]) if parts else np.zeros(0, np.int64))


class TestImages:
    """The test set's images, read from the pack on demand: images[positions] (for misclassified examples)."""

    def __init__(self, streamed: Streamed):
        self.streamed = streamed

    def __len__(self):
        return self.streamed.count("test")

    def __getitem__(self, wanted):
        wanted = np.asarray(wanted, np.int64)
        h, w, c = self.streamed.shape
        dtype = np.float32 if self.streamed.float_pixels else np.uint8
        if not len(wanted):
            return np.zeros((0, h, w, c), dtype)
        split, order = self.streamed.sets["test"]
        which = (split, order[wanted])
        decode = _decoder(self.streamed)
        found = {}
        ds = _records(self.streamed, which, 0, 1).unbatch().map(lambda r: (r["index"], decode(r)[0]))
        for source, image in ds.as_numpy_iterator():
            found[int(source)] = image
        out = np.stack([found[int(s)] for s in order[wanted]]).astype(dtype)
        return out
