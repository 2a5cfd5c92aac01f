"""A data set of the user's own, named by its path (``--dataset PATH``): a folder of images in one subfolder
per class (optionally under ``train/``, ``val/`` or ``validation/`` and ``test/``), an ``.npz`` with
``x_train``, ``y_train`` (and ``x_test``, ``y_test``), or an HDF5 file with an images and a labels dataset.

It is read whole into memory, checked as it is read: every image decoded once (a file that isn't a
readable image is listed with its path), classes named, arrays' lengths, labels, non-finite pixels and the
pixel scale. Every problem is one line (a UserError) before anything is written.
"""

import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpccnn.common.errors import UserError
from hpccnn.data.base import Raw
from hpccnn.data.builtin import DATASETS

FILE_SUFFIXES = (".npz", ".h5", ".hdf5")
SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
HDF5_NAMES = (("images", "ans"), ("images", "labels"), ("x", "y"))  # Galaxy10's first
SHOWN = 3  # bad files named in the one line


def is_path(name: str) -> bool:
    """Whether a --dataset value is written as a path (a/b, file.npz, ./photos, ~/data) rather than a name: a
    built-in data set, a staged pack, or (where neither) a folder of the current one
    (hpccnn.data.datasets.resolve)."""
    name = str(name)
    return name not in DATASETS and (os.sep in name or name.lower().endswith(FILE_SUFFIXES)
                                     or name.startswith((".", "~")))


def absolute(name: str, base=None) -> str:
    """A path made absolute (relative to base or the current folder), so that jobs find it from anywhere."""
    return str((Path(base or ".") / Path(name).expanduser()).resolve())


def check(name: str) -> None:
    """A UserError unless name is a folder or a file of a kind hpccnn reads."""
    path = Path(name)
    if not path.exists():
        raise UserError(f"--dataset {name}: no such file or folder; give a folder of images in class subfolders, "
                        f"an .npz or HDF5 file, or a built-in data set: {', '.join(DATASETS)}")
    if path.is_file() and not path.name.lower().endswith(FILE_SUFFIXES):
        raise UserError(f"--dataset {name}: hpccnn reads an .npz, an HDF5 file (.h5, .hdf5) or a folder of images "
                        f"in class subfolders, not a {path.suffix or 'suffix-less'} file")


@dataclass
class Folder:
    """An image folder's layout: per split (train, val, test), per class (sorted), its image files."""

    splits: dict  # split -> {class: [paths]}
    classes: list


def _visible(path: Path):
    return sorted(p for p in path.iterdir() if not p.name.startswith("."))


def layout(root: Path) -> Folder:
    """The splits and classes of a folder, checked: no empty class, at least two, none only in test/ or val/."""
    entries = _visible(root)
    split_dirs = {SPLITS[p.name.lower()]: p for p in entries if p.is_dir() and p.name.lower() in SPLITS}
    if "train" not in split_dirs:
        if split_dirs:
            named = sorted(p.name for p in split_dirs.values())
            raise UserError(f"--dataset {root} has {', '.join(f'{n}/' for n in named)} but no train/; put the training "
                            f"images' class folders under train/ (or rename {named[0]}/ if it is a class)")
        split_dirs = {"train": root}
    splits = {}
    for split in sorted(split_dirs, key=["train", "val", "test"].index):
        folder = split_dirs[split]
        classes = [p for p in _visible(folder) if p.is_dir()]
        splits[split] = {c.name: [f for f in sorted(c.rglob("*")) if f.is_file()
                                  and not any(part.startswith(".") for part in f.relative_to(c).parts)]
                         for c in classes}
    train = splits["train"]
    where = f"{split_dirs['train']}"
    if len(train) < 2:
        raise UserError(f"--dataset {root}: {where} has {len(train)} class folder(s) ({', '.join(train) or 'none'}); "
                        f"a classifier needs at least two, one subfolder of images per class")
    empty = [c for c, files in train.items() if not files]
    if empty:
        raise UserError(f"--dataset {root}: class folder {Path(where) / empty[0]} is empty"
                        f"{f' (and {len(empty) - 1} more)' if len(empty) > 1 else ''}; put its images there or "
                        f"remove it")
    for split in ("val", "test"):
        extra = sorted(set(splits.get(split, {})) - set(train))
        if extra:
            raise UserError(f"--dataset {root}: class {extra[0]!r} is only in {split_dirs[split].name}/, not in "
                            f"train/; every class needs training images")
        empty = [c for c, files in splits.get(split, {}).items() if not files]
        if empty:
            raise UserError(f"--dataset {root}: class folder {split_dirs[split] / empty[0]} is empty; put its images "
                            f"there or remove it")
    for split in ("val", "test"):
        missing = sorted(set(train) - set(splits.get(split, train)))
        if missing:
            print(f"hpccnn: --dataset {root}: class(es) {', '.join(missing)} have no images in "
                  f"{split_dirs[split].name}/", flush=True)
    return Folder(splits, sorted(train))


def _decode(path: Path):
    """(the decoded PIL image, None) of an image file, or (None, the reason it can't be read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # decodes all of it: a truncated file fails here
            if image.mode.startswith("I;16"):  # 16-bit gray: its top 8 bits (PIL's convert would clip it)
                return Image.fromarray((np.asarray(image, np.uint16) >> 8).astype(np.uint8)), None
            if image.mode in ("I", "F"):
                return None, f"{image.mode} mode ({'32-bit integer' if image.mode == 'I' else 'float'} pixels): " \
                             f"convert it to 8 bits, or give the images as an .npz with --pixel-max"
            return image.copy(), None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return None, str(err).split("\n")[0][:80] or type(err).__name__


GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F", "P;L"}


def _channels_of(image) -> int:
    """1 for a grayscale image, 3 for a colour one (a palette image by its colours)."""
    if image.mode in ("P", "PA"):
        rgb = np.asarray(image.convert("RGB"))
        return 1 if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all() else 3
    return 1 if image.mode in GRAY_MODES else 3


def read_image(path: Path, side: int = 0):
    """(HxWxC uint8 pixels with the image's own channels, 1 or 3, None) of an image file, resized to side x side
    when side is given (here, in the reading thread: a folder is never held at full resolution); or (None,
    the reason it can't be read). What both an image folder and a pack of one hold of each image."""
    image, reason = _decode(path)
    if image is None:
        return None, reason
    pixels = np.asarray(image.convert("L" if _channels_of(image) == 1 else "RGB"), np.uint8)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    return (resize(pixels, side) if side and pixels.shape[:2] != (side, side) else pixels), None


def resize(pixels, side: int):
    """HxWxC pixels resized to side x side (bilinear): PIL's for uint8, TensorFlow's for floats."""
    from PIL import Image

    if pixels.dtype != np.uint8:
        import tensorflow as tf

        return tf.image.resize(pixels, (side, side), method="bilinear").numpy()
    squeezed = pixels[..., 0] if pixels.shape[2] == 1 else pixels
    resized = np.asarray(Image.fromarray(squeezed).resize((side, side), Image.BILINEAR), np.uint8)
    return resized[..., None] if resized.ndim == 2 else resized


def to_channels(pixels, channels: int):
    """HxWxC pixels with channels channels: grayscale repeated, or colour weighted to luma (ITU-R 601-2, PIL's)."""
    if pixels.shape[2] == channels:
        return pixels
    if channels == 3:
        return np.repeat(pixels, 3, axis=2)
    gray = (pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return gray.round().astype(pixels.dtype) if pixels.dtype == np.uint8 else gray


def choose_channels(where: str, counts: dict, asked: int) -> int:
    """The channel count the images get: --channels, or the majority's ({"1": gray images, "3": colour}),
    said in one line where both kinds are there."""
    gray, colour = counts.get("1", 0), counts.get("3", 0)
    chosen = asked or (1 if gray > colour else 3)
    if gray and colour:
        print(f"hpccnn: {where}: {colour} colour and {gray} grayscale images; all converted to {chosen} channel(s) "
              f"({'--channels' if asked else 'the majority; --channels 1 or 3 chooses'})", flush=True)
    return chosen


def uniform(images, channels: int, side: int = 0):
    """A list of HxWxC pixels as one N x side x side x channels array (each resized first, then converted)."""
    return np.stack([to_channels(resize(x, side) if side and x.shape[:2] != (side, side) else x, channels)
                     for x in images])


def assemble(images: dict, labels: dict, classes: list):
    """A Raw from the splits' images and labels: test/ (else val/) the test set, val/ beside test/ the
    validation set."""
    stacked = {s: (images[s], np.asarray(labels[s], np.int64)) for s in images}
    test = stacked.get("test") or stacked.get("val")
    val = stacked.get("val") if "test" in stacked else None
    return Raw(*stacked["train"], *(test or (None, None)), list(classes), 1 / 255, *(val or (None, None)))


def load_folder(root: Path, exp):
    """The folder's images read (in threads: decoded, resized to --image-size), converted to one channel count;
    images of different sizes need --image-size."""
    folder = layout(root)
    index = {c: i for i, c in enumerate(folder.classes)}
    files = [(split, f, index[c]) for split, classes in folder.splits.items() for c, fs in classes.items() for f in fs]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        read = list(pool.map(lambda item: read_image(item[1], exp.image_size), files))
    bad = [(f, reason) for (_, f, _), (pixels, reason) in zip(files, read) if pixels is None]
    if bad and not exp.skip_bad_images:
        shown = "; ".join(f"{f} ({reason})" for f, reason in bad[:SHOWN])
        raise UserError(f"--dataset {root}: {len(bad)} of {len(files)} files are not readable images: {shown}"
                        f"{' ...' if len(bad) > SHOWN else ''}; fix or remove them, or give --skip-bad-images true")
    if bad:
        print(f"hpccnn: --dataset {root}: {len(bad)} of {len(files)} files skipped, not readable images (the first: "
              f"{bad[0][0]})", flush=True)
    kept = [(item, pixels) for item, (pixels, _) in zip(files, read) if pixels is not None]
    counts = {}
    for _, pixels in kept:
        counts[str(pixels.shape[2])] = counts.get(str(pixels.shape[2]), 0) + 1
    channels = choose_channels(f"--dataset {root}", counts, exp.channels)
    sizes = {pixels.shape[:2] for _, pixels in kept}
    if len(sizes) > 1:  # (with --image-size every image has that size already)
        (h1, w1), (h2, w2) = sorted(sizes)[:2]
        raise UserError(f"--dataset {root}: its images have {len(sizes)} different sizes ({w1}x{h1}, {w2}x{h2}, ...); "
                        f"give --image-size N to resize them all to NxN")
    if not any(split == "train" for (split, _, _), _ in kept):
        raise UserError(f"--dataset {root}: none of its training images can be read; nothing to train on")
    images, labels = {}, {}
    for (split, _, label), pixels in kept:
        images.setdefault(split, []).append(pixels)
        labels.setdefault(split, []).append(label)
    return assemble({s: uniform(xs, channels) for s, xs in images.items()}, labels, folder.classes)


def _labels(y, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                                   and np.all(np.mod(y, 1) == 0))):
        raise UserError(f"{where}: labels must be one whole number per image (0, 1, ...), got {y.dtype} of shape "
                        f"{y.shape}")
    if len(y) and y.min() < 0:
        raise UserError(f"{where}: labels must not be negative (found {y.min()})")
    return y.astype(np.int64)


def _images(x, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3):
        raise UserError(f"{where}: images must be N x H x W (x 1 or 3 channels), got shape {x.shape}")
    return x


def _pair(path, x, y, what: str):
    x, y = _images(x, f"{path} {what} images"), _labels(y, f"{path} {what} labels")
    if len(x) != len(y):
        raise UserError(f"--dataset {path}: {len(x)} {what} images but {len(y)} {what} labels; each image needs "
                        f"its label")
    return x, y


def load_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"--dataset {path}: not a readable .npz ({err})") from None
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing or (("x_test" in arrays) != ("y_test" in arrays)):
        raise UserError(f"--dataset {path} holds {', '.join(sorted(arrays)) or 'nothing'}; an .npz needs x_train and "
                        f"y_train, and optionally x_test with y_test (Keras' mnist.npz layout)")
    train = _pair(path, arrays["x_train"], arrays["y_train"], "training")
    test = _pair(path, arrays["x_test"], arrays["y_test"], "test") if "x_test" in arrays else (None, None)
    return Raw(*train, *test, [])


def load_hdf5(path: Path, exp):
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise UserError(f"--dataset {path}: not a readable HDF5 file ({err})") from None
    with f:
        names = ([(exp.hdf5_images or i, exp.hdf5_labels or l) for i, l in HDF5_NAMES]
                 if exp.hdf5_images or exp.hdf5_labels else list(HDF5_NAMES))
        found = next(((i, l) for i, l in names if i in f and l in f), None)
        if found is None:
            held = [k for k in f.keys()]
            wanted = (f"{names[0][0]!r} and {names[0][1]!r}" if exp.hdf5_images and exp.hdf5_labels else
                      "'images' and 'ans' (or 'labels'), or 'x' and 'y'")
            raise UserError(f"--dataset {path} has no datasets {wanted}; it holds {', '.join(held) or 'nothing'}: "
                            f"name them with --hdf5-images and --hdf5-labels")
        return Raw(*_pair(path, f[found[0]][()], f[found[1]][()], "training"), None, None, [])


def range_scale(where: str, low: float, high: float) -> float:
    """The scale to 0..1 of float pixels between low and high: 1 for 0..1, 1/255 for 0..255, else a UserError."""
    if low < 0 or high > 255:
        raise UserError(f"{where}: its pixels lie between {low:g} and {high:g}, neither in 0..1 nor in 0..255; give "
                        f"--pixel-max, the value of a white pixel (images are divided by it)")
    return 1.0 if high <= 1 else 1 / 255


def pixels(raw, path, exp) -> None:
    """Raw's images checked and scaled in place: non-finite pixels refused (or replaced by --nonfinite), and the
    scale to 0..1 from --pixel-max, the dtype, or the values (0..1 or 0..255)."""
    for part in ("x_train", "x_test", "x_val"):
        x = getattr(raw, part, None)
        if x is None or not np.issubdtype(x.dtype, np.floating):
            continue
        finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if not finite.all():
            if exp.nonfinite == "":
                what = {"x_train": "training", "x_test": "test", "x_val": "validation"}[part]
                raise UserError(f"--dataset {path}: {int((~finite).sum())} of {len(x)} {what} images have NaN or "
                                f"infinite pixels (the first: image {int(np.argmin(finite))}); fix them, or give "
                                f"--nonfinite VALUE to replace those pixels with VALUE")
            value = float(exp.nonfinite)
            setattr(raw, part, np.nan_to_num(x.astype(np.float32), nan=value, posinf=value, neginf=value))
    xs = [x for x in (raw.x_train, raw.x_test, getattr(raw, "x_val", None)) if x is not None]
    if exp.pixel_max:
        raw.scale = 1 / exp.pixel_max
    elif all(x.dtype == np.uint8 for x in xs):
        raw.scale = 1 / 255
    else:
        raw.scale = range_scale(f"--dataset {path}", min(float(x.min()) for x in xs), max(float(x.max()) for x in xs))
    for part in ("x_train", "x_test", "x_val"):
        x = getattr(raw, part, None)
        if x is not None and x.dtype != np.uint8 and x.dtype != np.float32:
            setattr(raw, part, x.astype(np.float32))


def load(exp):
    """exp's data set of the user's own, as a hpccnn.data.base.Raw: checked, with its classes."""
    path = Path(exp.dataset)
    check(exp.dataset)
    if path.is_dir():
        raw = load_folder(path, exp)
    elif path.name.lower().endswith(".npz"):
        raw = load_npz(path)
    else:
        raw = load_hdf5(path, exp)
    if not raw.classes:
        labels = np.concatenate([y for y in (raw.y_train, raw.y_test) if y is not None])
        raw.classes = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
        if len(raw.classes) < 2:
            raise UserError(f"--dataset {path}: its labels name {len(raw.classes)} class; a classifier needs two or more")
    pixels(raw, path, exp)
    return raw


def peek(exp) -> tuple:
    """((height, width, channels) as the model gets them, class count) of exp's data set, read cheaply (an
    image folder's first image, an array file's shapes and labels): what hpccnn.submit builds the model for."""
    path = Path(exp.dataset)
    check(exp.dataset)
    if path.is_dir():
        folder = layout(path)
        first = next(f for files in folder.splits["train"].values() for f in files)
        pixels, _ = read_image(first)
        shape = pixels.shape if pixels is not None else (exp.image_size, exp.image_size, 3)
        shape, classes = (*shape[:2], exp.channels or shape[2]), len(folder.classes)
    else:
        raw = load(exp)
        shape, classes = raw.x_train.shape[1:], len(raw.classes)
    return ((exp.image_size, exp.image_size, shape[2]) if exp.image_size else tuple(shape)), classes
