"""Data sets of a user's own, written by the tests in their real formats: folders of real photographs (scikit-learn's
sample images, cropped) as JPEG, PNG, BMP and GIF in class subfolders, .npz and HDF5 files."""

from pathlib import Path

import numpy as np


def photo_crops(count: int, seed=0):
    """(class name, PIL image) pairs: crops of different sizes of scikit-learn's two sample photographs, the
    photograph being the class; some converted to grayscale."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        which = i % 2
        image = photos.images[which]
        h, w = rng.integers(40, 120, size=2)
        top, left = rng.integers(0, image.shape[0] - h), rng.integers(0, image.shape[1] - w)
        crop = Image.fromarray(image[top:top + h, left:left + w])
        if i % 5 == 4:
            crop = crop.convert("L")
        crops.append((["china", "flower"][which], crop))
    return crops


def write_photo_folder(root: Path, count=40, splits=("train", "test"), seed=0) -> Path:
    """root/<split>/<class>/<n>.<jpg|png|bmp|gif>: photographs of different sizes and colour modes."""
    suffixes = (".jpg", ".png", ".JPEG", ".bmp", ".gif")
    for split in splits:
        for n, (name, image) in enumerate(photo_crops(count, seed + len(split))):
            folder = (root / split if split else root) / name
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{n:03d}{suffixes[n % len(suffixes)]}")
    return root


def write_npz(path: Path, n=60, shape=(8, 8, 1), dtype=np.uint8, seed=0, **overrides) -> Path:
    rng = np.random.default_rng(seed)
    high = 256 if dtype == np.uint8 else 1.0
    arrays = {"x_train": (rng.random((n, *shape)) * high).astype(dtype), "y_train": rng.integers(0, 3, n),
              "x_test": (rng.random((n // 3, *shape)) * high).astype(dtype), "y_test": rng.integers(0, 3, n // 3)}
    arrays.update(overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path
