"""The built-in data sets: each one's staged files, read and checked, and the seeds' splits.

Training reads only from the staged cache (python -m hpccnn.stage puts the files there) and never downloads.
"""

import gzip
import pickle
from pathlib import Path

import numpy as np
import psutil

from hpccnn.common.errors import UserError
from hpccnn.data.base import Raw, Splits, sha256

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


# The image shape each staged data set must have (height, width, channels).
SHAPES = {"cifar10": (32, 32, 3), "mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "galaxy10": (69, 69, 3)}


CLASS_COUNT = 10  # every built-in data set has ten classes


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
