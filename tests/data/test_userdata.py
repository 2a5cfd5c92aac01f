"""--dataset PATH, the user's own data: image folders (real photographs of different sizes and modes), .npz and
HDF5 files, read and checked; every kind of bad data one line (a UserError) before anything is written."""

import h5py
import numpy as np
import pytest

from conftest import train_refusal
from userdata_files import write_npz, write_photo_folder


def splits_of(*argv):
    from hpccnn.data import datasets as data
    from hpccnn.training import train

    args, exp = train.parse([str(a) for a in argv])
    return exp, data.load_split(exp, args.data_dir)


def test_a_folder_of_photographs_of_different_sizes_and_modes_is_read_at_the_size_asked(tmp_path, capsys):
    root = write_photo_folder(tmp_path / "photos")
    (root / "train" / "china" / ".DS_Store").write_bytes(b"\0\1")  # hidden: neither an image nor a class
    (root / "train" / ".cache").mkdir()
    assert "different sizes" in train_refusal("--dataset", root, "--model", "cnn_v3")
    exp, splits = splits_of("--dataset", root, "--image-size", "64", "--model", "cnn_v3")
    assert exp.dataset == str(root)
    assert splits.classes == ["china", "flower"] and splits.x_train.shape[1:] == (64, 64, 3)
    assert splits.x_train.dtype == np.uint8 and splits.scale == pytest.approx(1 / 255)
    assert len(splits.x_train) + len(splits.x_val) == 40 and len(splits.x_test) == 40  # test/ is the test set
    assert set(np.unique(splits.y_test)) == {0, 1}
    out = capsys.readouterr().out
    assert "64 colour and 16 grayscale images; all converted to 3 channel(s) (the majority" in out, out
    _, gray = splits_of("--dataset", root, "--image-size", "32", "--channels", "1", "--model", "cnn_v3")
    assert gray.x_train.shape[1:] == (32, 32, 1)


def test_a_folder_with_train_val_and_test_uses_each_and_one_without_splits_is_split(tmp_path):
    root = write_photo_folder(tmp_path / "three", count=10, splits=("train", "validation", "test"))
    _, splits = splits_of("--dataset", root, "--image-size", "16", "--model", "cnn_v1")
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (10, 10, 10)
    flat = write_photo_folder(tmp_path / "flat", count=50, splits=("",))
    _, splits = splits_of("--dataset", flat, "--image-size", "16", "--model", "cnn_v1")
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (32, 8, 10)  # test 0.2, then val 0.2


def test_npz_and_hdf5_files_are_read_with_their_scale(tmp_path):
    path = write_npz(tmp_path / "a.npz")
    exp, splits = splits_of("--dataset", path, "--model", "cnn_v1", "--image-size", "32")
    assert splits.classes == ["0", "1", "2"] and len(splits.x_test) == 20 and splits.scale == pytest.approx(1 / 255)
    floats = write_npz(tmp_path / "f.npz", dtype=np.float32)
    assert splits_of("--dataset", floats, "--model", "cnn_v1")[1].scale == 1.0  # values in 0..1
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f["images"], f["ans"] = np.zeros((30, 8, 8, 3), np.uint8), np.arange(30) % 4
    assert splits_of("--dataset", tmp_path / "g.h5", "--model", "cnn_v1")[1].classes == ["0", "1", "2", "3"]
    with h5py.File(tmp_path / "named.h5", "w") as f:
        f["pics"], f["kind"] = np.zeros((30, 8, 8), np.uint8), np.arange(30) % 2
    _, splits = splits_of("--dataset", tmp_path / "named.h5", "--hdf5-images", "pics", "--hdf5-labels", "kind",
                          "--model", "cnn_v1")
    assert splits.shape == (8, 8, 1) and splits.classes == ["0", "1"]


def test_nonfinite_pixels_are_refused_with_their_count_or_replaced_as_asked(tmp_path):
    x = np.random.default_rng(0).random((60, 8, 8, 1)).astype(np.float32)
    x[7, 2, 2, 0], x[9, 0, 0, 0], x[10] = np.nan, np.inf, np.nan
    path = write_npz(tmp_path / "nan.npz", dtype=np.float32, x_train=x)
    message = train_refusal("--dataset", path, "--model", "cnn_v1")
    assert "3 of 60 training images have NaN or infinite pixels (the first: image 7)" in message
    assert "--nonfinite VALUE" in message
    _, splits = splits_of("--dataset", path, "--model", "cnn_v1", "--nonfinite", "0")
    assert np.isfinite(splits.x_train).all() and np.isfinite(splits.x_val).all()


def test_float_pixels_outside_both_scales_need_pixel_max(tmp_path):
    x = np.full((60, 8, 8, 1), 1000.0, np.float32)
    x[3] = 0
    path = write_npz(tmp_path / "counts.npz", dtype=np.float32, x_train=x, x_test=x[:20])
    message = train_refusal("--dataset", path, "--model", "cnn_v1")
    assert "its pixels lie between 0 and 1000, neither in 0..1 nor in 0..255; give --pixel-max" in message, message
    assert splits_of("--dataset", path, "--model", "cnn_v1", "--pixel-max", "4000")[1].scale == 1 / 4000


def _truncated_jpeg(root):
    jpeg = sorted((root / "train" / "china").glob("*.jpg"))[0]
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    return jpeg, f"1 of 80 files are not readable images: {jpeg} (", 80


def _text_as_png(root):
    fake = root / "train" / "flower" / "notes.png"
    fake.write_text("not an image\n")
    return fake, f"1 of 81 files are not readable images: {fake} (cannot identify image file", 81


@pytest.mark.parametrize("damage", [_truncated_jpeg, _text_as_png])
def test_unreadable_images_are_listed_or_skipped_when_asked(tmp_path, damage, capsys):
    root = write_photo_folder(tmp_path / "photos")
    bad, message, files = damage(root)
    got = train_refusal("--dataset", root, "--image-size", "16", "--model", "cnn_v1")
    assert message in got and "--skip-bad-images true" in got, got
    _, splits = splits_of("--dataset", root, "--image-size", "16", "--model", "cnn_v1", "--skip-bad-images", "true")
    assert len(splits.x_train) + len(splits.x_val) + len(splits.x_test) == files - 1
    assert f"1 of {files} files skipped, not readable images (the first: {bad})" in capsys.readouterr().out


def test_each_kind_of_bad_folder_or_file_is_one_line(tmp_path):
    def folder(name, classes, splits=("train", "test")):
        root = tmp_path / name
        for split in splits:
            for c in classes.get(split, classes.get("*", [])):
                (root / split / c).mkdir(parents=True)
        write_photo_folder(tmp_path / f"{name}-src", count=4, splits=("",))
        for split in splits:
            for c in classes.get(split, classes.get("*", [])):
                if c != "empty":
                    for f in (tmp_path / f"{name}-src").glob("*/*"):
                        (root / split / c / f.name).write_bytes(f.read_bytes())
        return root

    cases = [
        (folder("empty", {"*": ["a", "b", "empty"]}), "class folder {root}/train/empty is empty"),
        (folder("single", {"*": ["only"]}), "{root}/train has 1 class folder(s) (only); a classifier needs at least two"),
        (folder("testonly", {"train": ["a", "b"], "test": ["a", "b", "c"]}),
         "class 'c' is only in test/, not in train/"),
        (write_npz(tmp_path / "short.npz", y_train=np.zeros(59, np.int64)),
         "60 training images but 59 training labels"),
        (tmp_path / "nothing", "no such file or folder"),
        (tmp_path / "notes.txt", "hpccnn reads an .npz, an HDF5 file (.h5, .hdf5) or a folder of images"),
    ]
    flat = write_photo_folder(tmp_path / "flatwithtest", count=4, splits=("",))
    (flat / "test" / "china").mkdir(parents=True)
    cases.append((flat, "has test/ but no train/; put the training images' class folders under train/"))
    (tmp_path / "notes.txt").write_text("x")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["pixels"] = np.zeros((3, 8, 8), np.uint8)
    cases.append((tmp_path / "other.h5", "has no datasets 'images' and 'ans' (or 'labels'), or 'x' and 'y'; it holds "
                                        "pixels: name them with --hdf5-images and --hdf5-labels"))
    with h5py.File(tmp_path / "half.h5", "w") as f:
        f["pics"], f["labels"] = np.zeros((30, 8, 8), np.uint8), np.arange(30) % 2
    _, splits = splits_of("--dataset", tmp_path / "half.h5", "--hdf5-images", "pics", "--model", "cnn_v1")
    assert splits.classes == ["0", "1"]  # the labels' name of the defaults
    for root, message in cases:
        got = train_refusal("--dataset", root, "--image-size", "16", "--model", "cnn_v1")
        assert message.format(root=root) in got, got


def test_a_dataset_path_is_absolute_in_the_run_and_relative_to_the_users_file(tmp_path, monkeypatch):
    from hpccnn.models.catalog import get_experiment

    root = write_photo_folder(tmp_path / "project" / "photos", count=6)
    monkeypatch.chdir(tmp_path / "project")
    monkeypatch.delenv("HPCCNN_CONFIG", raising=False)
    exp, _ = splits_of("--dataset", "photos", "--image-size", "16", "--model", "cnn_v1")
    assert exp.dataset == str(root)
    (tmp_path / "project" / "hpccnn.toml").write_text(
        '[experiments.mine]\nmodel = "cnn_v1"\ndataset = "photos"\nimage_size = 16\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPCCNN_CONFIG", str(tmp_path / "project" / "hpccnn.toml"))
    assert get_experiment("mine").dataset == str(root)
