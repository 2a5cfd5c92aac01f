"""Data sets by name, offline-first: a built-in one (hpccnn.data.builtin), the user's own named by its path
(hpccnn.data.userdata), or a pack of the user's staged by name (hpccnn.data.pack). Training reads only from a
staged cache and never downloads."""

import pickle
import zipfile
from pathlib import Path

from hpccnn.common.errors import UserError
from hpccnn.data import carve, pack, userdata
from hpccnn.data.base import Raw, Splits, resolve_data_dir
from hpccnn.data.builtin import CLASS_COUNT, DATASETS, SHAPES, check, parse_shape, split


def resolve(name: str, data_dir=None, base=None) -> str:
    """A --dataset value as a run keeps it: a built-in's or a staged pack's name as it is; a path, or a bare name
    that is a folder (relative to base or the current folder) and no pack, made absolute."""
    name = str(name)
    if name in DATASETS:
        return name
    if userdata.is_path(name):
        return userdata.absolute(name, base)
    if pack.find(name, resolve_data_dir(data_dir)) is None and (Path(base or ".") / name).is_dir():
        return userdata.absolute(name, base)
    return name


def load_split(exp, data_dir=None) -> Splits:
    """exp's data set (an Experiment), loaded and split as exp says: the same on every rank."""
    if userdata.is_path(exp.dataset):
        return split(userdata.load(exp), exp.validation, exp.val_fraction, exp.test_fraction, exp.seed)
    if exp.dataset not in DATASETS:  # a pack of the user's data, staged by python -m hpccnn.stage PATH --name NAME
        folder = pack.find(exp.dataset, resolve_data_dir(data_dir))
        if folder is None and Path(exp.dataset).is_dir():  # a folder here, not staged
            return split(userdata.load(exp), exp.validation, exp.val_fraction, exp.test_fraction, exp.seed)
        if folder is None:
            raise UserError(f"unknown dataset {exp.dataset!r}: neither built in ({', '.join(DATASETS)}), nor a file or "
                            f"folder, nor a pack staged in {resolve_data_dir(data_dir)} (python -m hpccnn.stage PATH "
                            f"--name {exp.dataset})")
        raw = pack.load(folder, exp)
        userdata.pixels(raw, exp.dataset, exp)
        chosen = carve.in_memory(raw, pack.read_index(folder), exp)  # the sets a streamed pack reads
        return Splits(*chosen["train"], *chosen["val"], *chosen["test"], list(raw.classes), raw.scale)
    options = {}
    if exp.dataset == "synthetic":
        options = {"size": exp.synthetic_size, "shape": parse_shape(exp.synthetic_shape)}
    return split(load(exp.dataset, data_dir, **options), exp.validation, exp.val_fraction, exp.test_fraction,
                 exp.seed)


def check_dataset(name: str) -> None:
    if userdata.is_path(name):
        return userdata.check(name)
    if name not in DATASETS and not Path(name).is_dir() and not all(c.isalnum() or c in "_-." for c in name):
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def class_count(exp, data_dir=None) -> int:
    if userdata.is_path(exp.dataset):
        return userdata.peek(exp)[1]
    if exp.dataset not in DATASETS:
        return _pack_or_folder(exp, data_dir)[1]
    return CLASS_COUNT


def _pack_or_folder(exp, data_dir=None) -> tuple:
    """(shape, classes) of a bare --dataset name: a staged pack's, else a folder's here (as load_split reads it)."""
    if pack.find(exp.dataset, resolve_data_dir(data_dir)) is None and Path(exp.dataset).is_dir():
        return userdata.peek(exp)
    return pack_facts(exp, data_dir)


def pack_facts(exp, data_dir=None) -> tuple:
    """((height, width, channels) as the model gets them, class count) of a staged pack, from its index."""
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
    if userdata.is_path(exp.dataset):
        return userdata.peek(exp)[0]
    if exp.dataset not in DATASETS:
        return _pack_or_folder(exp, data_dir)[0]
    shape = {**SHAPES, "digits": (8, 8, 1), "synthetic": parse_shape(exp.synthetic_shape)}[exp.dataset]
    return (exp.image_size, exp.image_size, shape[2]) if exp.image_size else shape


def load(name: str, data_dir=None, **options) -> Raw:
    """The data set from the staged cache, checked: a missing, truncated or malformed file is a UserError."""
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

