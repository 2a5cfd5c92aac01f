"""Data sets, offline-first: training reads only from a staged cache and never downloads.

Images stay uint8 in memory (4x smaller than float32); scaling to 0..1 and resizing
happen per batch inside the tf.data graph, so there is no per-step Python work.
"""

import gzip
import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpccnn.common.errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
GALAXY10_CLASSES = [
    "Disk, Face-on, No Spiral", "Smooth, Completely round", "Smooth, in-between round", "Smooth, Cigar shaped",
    "Disk, Edge-on, Rounded Bulge", "Disk, Edge-on, Boxy Bulge", "Disk, Edge-on, No Bulge",
    "Disk, Face-on, Tight Spiral", "Disk, Face-on, Medium Spiral", "Disk, Face-on, Loose Spiral",
]
DIGIT_CLASSES = [str(i) for i in range(10)]
# Zalando's label descriptions, in label order (the data set's README)
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
# SHA-256 of the real Galaxy10.h5, as astroNN checks it.
GALAXY10_SHA256 = "969a6b1cefcc36e09fffa86febd2f699a4aa19b837ba0427f01b0bc6ded458af"


def default_data_dir() -> Path:
    return Path(os.environ.get("HPCCNN_DATA", Path.home() / ".cache" / "hpccnn" / "data"))


@dataclass
class Raw:
    """A data set as loaded: uint8 or float images (N, H, W, C), int labels, scale to 0..1."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None  # None where the data set has no test set of its own
    y_test: np.ndarray | None
    classes: list
    scale: float = 1 / 255
    x_val: np.ndarray | None = None  # a validation set of its own (an image folder's val/ beside test/)
    y_val: np.ndarray | None = None


@dataclass
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list
    scale: float

    @property
    def shape(self):
        return self.x_train.shape[1:]


def _require(path: Path, dataset: str, data_dir: Path) -> Path:
    if not path.exists():
        raise UserError(
            f"data set {dataset!r} is not staged: {path} is missing; stage it first (on a login node) with: "
            f"python -m hpccnn.stage {dataset} --data-dir {data_dir}"
        )
    return path


def cifar10_folder(data_dir: Path) -> Path:
    return data_dir / "cifar10" / "cifar-10-batches-py"


def load_cifar10(data_dir: Path, **_) -> Raw:
    from keras.src.datasets.cifar import load_batch  # Keras' own parser of the pickled batches

    folder = cifar10_folder(data_dir)
    parts = [load_batch(str(_require(folder / f"data_batch_{i}", "cifar10", data_dir))) for i in range(1, 6)]
    x_test, y_test = load_batch(str(_require(folder / "test_batch", "cifar10", data_dir)))
    classes = CIFAR10_CLASSES
    if (folder / "batches.meta").exists():
        with open(folder / "batches.meta", "rb") as f:
            meta = pickle.load(f, encoding="bytes")
        classes = [n.decode() if isinstance(n, bytes) else n for n in meta.get(b"label_names", classes)]
    x_train = np.concatenate([x for x, _ in parts]).transpose(0, 2, 3, 1)
    y_train = np.concatenate([y for _, y in parts])
    return Raw(x_train, y_train.astype(np.int64), x_test.transpose(0, 2, 3, 1), np.asarray(y_test, np.int64), classes)


def mnist_file(data_dir: Path) -> Path:
    return data_dir / "mnist" / "mnist.npz"


def fashion_mnist_file(data_dir: Path) -> Path:
    return data_dir / "fashion_mnist" / "fashion-mnist.npz"


def _load_npz(path: Path, dataset: str, data_dir: Path, classes: list) -> Raw:
    with np.load(_require(path, dataset, data_dir)) as f:  # the file keras.datasets.mnist reads
        return Raw(f["x_train"][..., None], f["y_train"].astype(np.int64),
                   f["x_test"][..., None], f["y_test"].astype(np.int64), classes)


def load_mnist(data_dir: Path, **_) -> Raw:
    return _load_npz(mnist_file(data_dir), "mnist", data_dir, DIGIT_CLASSES)


def load_fashion_mnist(data_dir: Path, **_) -> Raw:
    return _load_npz(fashion_mnist_file(data_dir), "fashion_mnist", data_dir, FASHION_MNIST_CLASSES)


# MNIST's distribution format: four IDX files, as on the MNIST site, in Debian's dataset-fashion-mnist and on
# clusters; each may be gzipped
IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One IDX file of unsigned bytes with ndim dimensions, checked: magic number, dimensions and size."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    magic = raw[:4]
    if magic != bytes([0, 0, 0x08, ndim]):
        raise UserError(f"{path.name} is not an IDX file of {ndim}-dimensional unsigned bytes: it starts with "
                        f"{magic.hex() or 'nothing'}, not 000008{ndim:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path.name} is cut short inside its header ({len(raw)} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise UserError(f"{path.name} holds {len(raw) - header} bytes of data where its header "
                        f"({' x '.join(map(str, dims))}) says {size}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_idx_folder(folder: Path, classes: int = 10) -> dict:
    """x_train, y_train, x_test, y_test from a folder of MNIST's four IDX files, checked as a set."""
    arrays = {}
    for key, stem in IDX_FILES.items():
        found = [folder / name for name in (stem + ".gz", stem) if (folder / name).is_file()]
        if not found:
            raise UserError(f"{folder} has no {stem} (or {stem}.gz); an MNIST-format folder holds "
                            f"{', '.join(IDX_FILES.values())}")
        arrays[key] = read_idx(found[0], 3 if key.startswith("x") else 1)
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if len(x) != len(y):
            raise UserError(f"{folder}: {len(x)} {part} images but {len(y)} {part} labels")
        if len(y) and y.max() >= classes:
            raise UserError(f"{folder}: {part} labels run up to {y.max()}, outside 0..{classes - 1}")
    return arrays


def galaxy10_file(data_dir: Path) -> Path:
    return data_dir / "galaxy10" / "Galaxy10.h5"


def astronn_galaxy10_file() -> Path:
    from astroNN.config import astroNN_CACHE_DIR

    return Path(astroNN_CACHE_DIR) / "datasets" / "Galaxy10.h5"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_galaxy10(data_dir: Path, **_) -> Raw:
    import h5py

    staged = galaxy10_file(data_dir)
    if not staged.exists():
        cached = astronn_galaxy10_file()
        if cached.exists() and sha256(cached) == GALAXY10_SHA256:
            # astroNN's loader re-checks the checksum and never downloads when it matches.
            from astroNN.datasets import galaxy10sdss

            images, labels = galaxy10sdss.load_data()
            return Raw(images, labels.astype(np.int64), None, None, GALAXY10_CLASSES)
    with h5py.File(_require(staged, "galaxy10", data_dir), "r") as f:
        for key in ("images", "ans"):
            if key not in f:
                raise UserError(f"{staged} has no {key!r} data set; a Galaxy10 file holds 'images' and 'ans'")
        return Raw(f["images"][()], f["ans"][()].astype(np.int64), None, None, GALAXY10_CLASSES)


def load_digits(data_dir: Path, **_) -> Raw:
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()  # ships inside scikit-learn: 1,797 8x8 images with values 0..16
    return Raw(digits.images.astype(np.uint8)[..., None], digits.target.astype(np.int64),
               None, None, DIGIT_CLASSES, scale=1 / 16)


def parse_shape(text: str) -> tuple:
    """(height, width, channels) from --synthetic-shape's HEIGHTxWIDTHxCHANNELS, or a UserError."""
    parts = str(text).lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"--synthetic-shape must be HEIGHTxWIDTHxCHANNELS of positive integers (such as 32x32x3), "
                        f"got {text!r}")
    return tuple(int(p) for p in parts)


def load_synthetic(data_dir: Path, shape=(32, 32, 3), size=2048, classes=10, seed=0, **_) -> Raw:
    import psutil

    need, total = size * (int(np.prod(shape)) + 8), psutil.virtual_memory().total
    if need > total:  # before numpy tries, and fails with a traceback
        raise UserError(f"--synthetic-size {size} of {'x'.join(map(str, shape))} images is {need / 2 ** 30:.1f} GB, "
                        f"more than this node's {total / 2 ** 30:.1f} GB of memory; use a smaller --synthetic-size")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(size, *shape), dtype=np.uint8)
    y = rng.integers(0, classes, size=size).astype(np.int64)
    return Raw(x, y, None, None, [f"class{i}" for i in range(classes)])


DATASETS = {
    "cifar10": load_cifar10,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "galaxy10": load_galaxy10,
    "digits": load_digits,
    "synthetic": load_synthetic,
}


def split(raw: Raw, validation="split", val_fraction=0.2, test_fraction=0.2, seed=0) -> Splits:
    """The seeds' splits, seeded so that every rank computes the same ones.

    Data sets without a test set lose test_fraction to it first (seed 000's
    train_test_split); validation is then val_fraction of what is left, or the test set.
    """
    from sklearn.model_selection import train_test_split

    x, y, x_test, y_test = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if x_test is None:
        x, x_test, y, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed)
    if validation == "test":
        x_val, y_val = x_test, y_test
    elif raw.x_val is not None:
        x_val, y_val = raw.x_val, raw.y_val
    else:
        x, x_val, y, y_val = train_test_split(x, y, test_size=val_fraction, random_state=seed)
    return Splits(x, y, x_val, y_val, x_test, y_test, list(raw.classes), raw.scale)


def load_split(exp, data_dir=None) -> Splits:
    """exp's data set (an Experiment), loaded and split as exp says: the same on every rank."""
    from hpccnn.data import userdata

    if userdata.is_path(exp.dataset):
        return split(userdata.load(exp), exp.validation, exp.val_fraction, exp.test_fraction, exp.seed)
    if exp.dataset not in DATASETS:  # a pack of the user's data, staged by python -m hpccnn.stage PATH --name NAME
        from hpccnn.data import pack

        folder = pack.find(exp.dataset, resolve_data_dir(data_dir))
        if folder is None and Path(exp.dataset).is_dir():  # a folder here, not staged
            return split(userdata.load(exp), exp.validation, exp.val_fraction, exp.test_fraction, exp.seed)
        if folder is None:
            raise UserError(f"unknown dataset {exp.dataset!r}: neither built in ({', '.join(DATASETS)}), nor a file or "
                            f"folder, nor a pack staged in {resolve_data_dir(data_dir)} (python -m hpccnn.stage PATH "
                            f"--name {exp.dataset})")
        from hpccnn.training import stream

        raw = pack.load(folder, exp)
        userdata.pixels(raw, exp.dataset, exp)
        return stream.in_memory(raw, pack.read_index(folder), exp)  # the sets a streamed pack reads
    options = {}
    if exp.dataset == "synthetic":
        options = {"size": exp.synthetic_size, "shape": parse_shape(exp.synthetic_shape)}
    return split(load(exp.dataset, data_dir, **options), exp.validation, exp.val_fraction, exp.test_fraction,
                 exp.seed)


def check_dataset(name: str) -> None:
    from hpccnn.data import userdata

    if userdata.is_path(name):
        return userdata.check(name)
    if name not in DATASETS and not Path(name).is_dir() and not all(c.isalnum() or c in "_-." for c in name):
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def resolve_data_dir(data_dir=None) -> Path:
    return Path(data_dir).resolve() if data_dir else default_data_dir()


# The image shape each staged data set must have (height, width, channels).
SHAPES = {"cifar10": (32, 32, 3), "mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "galaxy10": (69, 69, 3)}


CLASS_COUNT = 10  # every built-in data set has ten classes


def class_count(exp, data_dir=None) -> int:
    from hpccnn.data import userdata

    if userdata.is_path(exp.dataset):
        return userdata.peek(exp)[1]
    if exp.dataset not in DATASETS:
        return _pack_or_folder(exp, data_dir)[1]
    return CLASS_COUNT


def _pack_or_folder(exp, data_dir=None) -> tuple:
    """(shape, classes) of a bare --dataset name: a staged pack's, else a folder's here (as load_split reads it)."""
    from hpccnn.data import pack, userdata

    if pack.find(exp.dataset, resolve_data_dir(data_dir)) is None and Path(exp.dataset).is_dir():
        return userdata.peek(exp)
    return pack_facts(exp, data_dir)


def pack_facts(exp, data_dir=None) -> tuple:
    """((height, width, channels) as the model gets them, class count) of a staged pack, from its index."""
    from hpccnn.data import pack

    folder = pack.find(exp.dataset, resolve_data_dir(data_dir))
    if folder is None:
        raise UserError(f"unknown dataset {exp.dataset!r}: no pack of that name is staged in {resolve_data_dir(data_dir)} "
                        f"(python -m hpccnn.stage PATH --name {exp.dataset})")
    index = pack.read_index(folder)
    counts = index["channels"]
    channels = exp.channels or (1 if counts.get("1", 0) > counts.get("3", 0) else 3)
    height, width = (exp.image_size, exp.image_size) if exp.image_size else map(int, next(iter(index["sizes"])).split("x"))
    return (height, width, channels), len(index["classes"])


def image_shape(exp, data_dir=None) -> tuple:
    """(height, width, channels) of exp's images as its model gets them, known without loading the data."""
    from hpccnn.data import userdata

    if userdata.is_path(exp.dataset):
        return userdata.peek(exp)[0]
    if exp.dataset not in DATASETS:
        return _pack_or_folder(exp, data_dir)[0]
    shape = {**SHAPES, "digits": (8, 8, 1), "synthetic": parse_shape(exp.synthetic_shape)}[exp.dataset]
    return (exp.image_size, exp.image_size, shape[2]) if exp.image_size else shape


def load(name: str, data_dir=None, **options) -> Raw:
    """The data set from the staged cache, checked: a missing, truncated or malformed file is a UserError."""
    import pickle
    import zipfile

    check_dataset(name)
    data_dir = resolve_data_dir(data_dir)
    try:
        raw = DATASETS[name](data_dir, **options)
    except UserError:
        raise
    except (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, pickle.UnpicklingError,
            zipfile.BadZipFile) as err:
        raise UserError(f"data set {name!r} in {data_dir} is unreadable ({type(err).__name__}: {err}); "
                        f"stage it again with: python -m hpccnn.stage {name} --data-dir {data_dir} --force") from None
    check(raw, name, data_dir)
    return raw


def check(raw: Raw, name: str, data_dir) -> None:
    """Shapes and labels as the data set defines them, or a UserError saying what is wrong."""
    fix = f"stage it again with: python -m hpccnn.stage {name} --data-dir {data_dir} --force"
    for part, x, y in (("training", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
        if x is None:
            continue
        if x.ndim != 4 or len(x) != len(y) or (name in SHAPES and tuple(x.shape[1:]) != SHAPES[name]):
            want = "x".join(map(str, SHAPES.get(name, ("H", "W", "C"))))
            raise UserError(f"data set {name!r} has {part} images of shape {tuple(x.shape)} with {len(y)} labels; "
                            f"expected N images of {want} and N labels; {fix}")
        if len(y) and (y.min() < 0 or y.max() >= len(raw.classes)):
            raise UserError(f"data set {name!r} has {part} labels outside 0..{len(raw.classes) - 1} "
                            f"(found {y.min()}..{y.max()}); {fix}")


def shard(x, rank, size):
    """Rank's share of an array: every size-th element from rank on (disjoint, covers all)."""
    return x[rank::size]


def _prepare(scale, image_size):
    import tensorflow as tf

    def prepare(images, labels):
        images = tf.cast(images, tf.float32) * scale
        if image_size and image_size != images.shape[1]:
            images = tf.image.resize(images, (image_size, image_size), method="bilinear")
        return images, labels

    return prepare


def pipeline(x, y, batch, scale, image_size=0):
    """Evaluation batches, in order, scaled to 0..1 and resized inside tf.data, prefetched."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    return ds.map(_prepare(scale, image_size), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def epoch_order(n: int, seed, epoch: int, count: int) -> np.ndarray:
    """The first count of n images, shuffled for this epoch: a function of (seed, epoch) alone."""
    return np.random.default_rng([*np.atleast_1d(seed), epoch]).permutation(n)[:count].astype(np.int64)


def train_pipeline(x, y, batch, steps, scale, image_size=0, seed=0, first_epoch=0, epochs=1):
    """Training batches for epochs first_epoch..epochs-1, steps per epoch.

    Each epoch's order depends only on (seed, epoch), never on how many epochs this process
    has run, so a run resumed at epoch k sees exactly the batches it would have seen. Images
    stay uint8 in memory; each batch is gathered, scaled and resized inside the tf.data graph.
    """
    import tensorflow as tf

    orders = [epoch_order(len(x), seed, e, steps * batch) for e in range(first_epoch, epochs)]
    order = np.concatenate(orders) if orders else np.zeros(0, np.int64)
    images, labels = tf.constant(x), tf.constant(y)
    ds = tf.data.Dataset.from_tensor_slices(order).batch(batch, drop_remainder=True)
    ds = ds.map(lambda i: (tf.gather(images, i), tf.gather(labels, i)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(_prepare(scale, image_size), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
