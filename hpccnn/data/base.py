"""What every data module shares: a data set as loaded (Raw) and as split (Splits), the staged cache's folder,
and a file's SHA-256."""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def default_data_dir() -> Path:
    return Path(os.environ.get("HPCCNN_DATA", Path.home() / ".cache" / "hpccnn" / "data"))


def resolve_data_dir(data_dir=None) -> Path:
    return Path(data_dir).resolve() if data_dir else default_data_dir()


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


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
