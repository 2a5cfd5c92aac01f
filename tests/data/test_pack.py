"""python -m hpccnn.stage PATH: a user's data set checked and packed once into TFRecord shards with an index
(classes, counts, each shard's SHA-256); interrupted packing goes on; bad files and damaged shards refused in one
line; Imagenette from an archive in its own layout, of real photographs; training reads a pack as its source."""

import json
import tarfile

import numpy as np
import pytest

from conftest import refusal
from userdata_files import write_npz, write_photo_folder


def stage(*argv):
    from hpccnn.data import stage as command

    return command.main.__wrapped__([str(a) for a in argv])


def loaded(dataset, data_dir, *settings):
    from hpccnn.data import datasets as data
    from hpccnn.training import train

    args, exp = train.parse(["--dataset", str(dataset), "--data-dir", str(data_dir), "--model", "cnn_v1", *settings])
    return data.load_split(exp, args.data_dir)


def test_a_folder_is_packed_with_its_index_and_trains_as_the_folder_does(tmp_path, capsys):
    from hpccnn.data.base import sha256

    photos = write_photo_folder(tmp_path / "photos", count=40)
    cache = tmp_path / "cache"
    stage(photos, "--data-dir", cache, "--name", "snaps")
    out = capsys.readouterr().out
    assert "hpccnn: packing snaps: shard 8/9 (train, 5 images)" in out and "shard 9/9 (test, 40 images)" in out
    assert f"hpccnn: staged pack snaps: 40 train, 40 test images of 2 classes in 9 shards, {cache}/packs/snaps" in out
    folder = cache / "packs" / "snaps"
    index = json.loads((folder / "index.json").read_text())
    assert index["classes"] == ["china", "flower"] and index["source"] == str(photos)
    assert index["splits"]["train"]["count"] == 40 and index["splits"]["train"]["per_class"] == [20, 20]
    assert index["channels"] == {"3": 64, "1": 16} and index["distinct_sizes"] > 1 and index["skipped"] == []
    for split in index["splits"].values():
        for shard in split["shards"]:
            assert sha256(folder / shard["file"]) == shard["sha256"]
    assert not list((cache / "packs").glob(".*"))  # no partial pack left
    from_pack = loaded("snaps", cache, "--image-size", "24")
    from_folder = loaded(photos, cache, "--image-size", "24")
    for part in ("x_test", "y_test"):
        np.testing.assert_array_equal(getattr(from_pack, part), getattr(from_folder, part), err_msg=part)
    # the same images for training and validation; a pack carves its validation set alike from every shard
    # (hpccnn.training.stream.carve), a folder at random
    assert len(from_pack.x_val) == len(from_folder.x_val)
    both = [np.concatenate([p.x_train, p.x_val]).reshape(40, -1) for p in (from_pack, from_folder)]
    np.testing.assert_array_equal(*(b[np.lexsort(b.T)] for b in both))
    assert "already in" in refusal(__import__("hpccnn.stage").stage.main, photos, "--data-dir", cache, "--name", "snaps")


def test_an_interrupted_pack_goes_on_from_its_finished_shards_and_never_counts_as_staged(tmp_path, monkeypatch,
                                                                                         capsys):
    from hpccnn.data import pack

    photos = write_photo_folder(tmp_path / "photos", count=40)
    cache = tmp_path / "cache"
    real, written = pack.write_shard, []

    def interrupted(*args):
        if len(written) == 3:
            raise KeyboardInterrupt  # Ctrl-C, or the login node's time limit
        written.append(args[2])
        return real(*args)

    monkeypatch.setattr(pack, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stage(photos, "--data-dir", cache)
    assert pack.find("photos", cache) is None  # not staged
    assert "unknown dataset 'photos'" in refusal_of_training("photos", cache)
    monkeypatch.setattr(pack, "write_shard", lambda *args: written.append(args[2]) or real(*args))
    stage(photos, "--data-dir", cache)
    assert "photos: 3 of 9 shards were packed already; going on from there" in capsys.readouterr().out
    assert len(written) == 9 and pack.find("photos", cache) is not None  # 3 + the 6 left, none twice
    assert len(loaded("photos", cache, "--image-size", "8").x_test) == 40


def refusal_of_training(dataset, cache):
    from conftest import train_refusal

    return train_refusal("--dataset", dataset, "--data-dir", cache, "--model", "cnn_v1", "--image-size", "8")


def test_bad_files_stop_packing_with_their_count_and_paths_or_are_skipped_and_listed(tmp_path, capsys):
    from hpccnn.data import stage as command

    photos = write_photo_folder(tmp_path / "photos", count=20)
    jpeg = sorted((photos / "train" / "china").glob("*.jpg"))[0]
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    (photos / "test" / "flower" / "notes.png").write_text("not an image")
    cache = tmp_path / "cache"
    message = refusal(command.main, photos, "--data-dir", cache)
    assert "2 of 41 files are not readable images: " in message and str(jpeg) in message and "notes.png" in message
    assert "stage again with --skip-bad-images to pack the rest; nothing was staged" in message
    assert not (cache / "packs" / "photos").exists()  # not staged; its finished shards kept for the next try
    capsys.readouterr()
    stage(photos, "--data-dir", cache, "--skip-bad-images")
    index = json.loads((cache / "packs" / "photos" / "index.json").read_text())
    assert len(index["skipped"]) == 2 and index["splits"]["train"]["count"] == 19
    out = capsys.readouterr().out
    assert "photos: 9 of 9 shards were packed already" in out  # no image decoded twice
    assert "2 unreadable files skipped (index.json lists them)" in out


def test_a_shard_damaged_after_staging_is_refused_by_its_sha256(tmp_path):
    path = write_npz(tmp_path / "arrays.npz")
    cache = tmp_path / "cache"
    stage(path, "--data-dir", cache, "--shards", "2")
    shard = cache / "packs" / "arrays" / "train-00001-of-00002.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    message = refusal_of_training("arrays", cache)
    assert f"pack arrays: shard {shard} has changed since it was packed (its SHA-256 differs)" in message
    assert f"stage it again with python -m hpccnn.stage {path} --name arrays --force" in message


def write_imagenette(path, count=12):
    """A small archive in Imagenette's layout (imagenette2-320/{train,val}/<WordNet id>/*.JPEG) of real photographs."""
    folder = tmp = path.parent / "imagenette2-320"
    for split in ("train", "val"):
        write_photo_folder(tmp / "src" / split, count=count, splits=("",), seed=len(split))
        for name, wnid in (("china", "n01440764"), ("flower", "n02102040")):
            (folder / split / wnid).mkdir(parents=True)
            for n, image in enumerate(sorted((tmp / "src" / split / name).iterdir())):
                image.rename(folder / split / wnid / f"{wnid}_{n}.JPEG" if image.suffix.lower() in (".jpg", ".jpeg")
                             else folder / split / wnid / f"{wnid}_{n}{image.suffix}")
    import shutil

    shutil.rmtree(tmp / "src")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="imagenette2-320")
    return path


def test_imagenette_is_staged_from_its_archive_with_its_classes_and_split(tmp_path, capsys):
    archive = write_imagenette(tmp_path / "imagenette2-320.tgz")
    cache = tmp_path / "cache"
    stage("imagenette", "--source", archive, "--data-dir", cache)
    assert "hpccnn: staged pack imagenette: 12 train, 12 val images of 2 classes" in capsys.readouterr().out
    splits = loaded("imagenette", cache, "--image-size", "16")
    assert splits.classes == ["tench", "English springer"]
    assert len(splits.x_test) == 12 and len(splits.x_train) + len(splits.x_val) == 12  # val/ is the test set
    assert not list(cache.glob(".staging-*")) and not list(cache.glob(".imagenette*"))  # nothing left behind


def test_imagenette_interrupted_goes_on_from_its_finished_shards(tmp_path, monkeypatch, capsys):
    from hpccnn.data import pack

    archive = write_imagenette(tmp_path / "imagenette2-320.tgz")
    cache = tmp_path / "cache"
    real, written = pack.write_shard, []

    def interrupted(*args):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(args[2])
        return real(*args)

    monkeypatch.setattr(pack, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stage("imagenette", "--source", archive, "--data-dir", cache)
    monkeypatch.setattr(pack, "write_shard", real)
    stage("imagenette", "--source", archive, "--data-dir", cache)
    assert "imagenette: 2 of 9 shards were packed already; going on from there" in capsys.readouterr().out
    assert pack.find("imagenette", cache) is not None and not list(cache.glob(".imagenette*"))


def test_a_pack_name_that_would_leave_the_cache_or_can_not_be_named_again_is_refused(tmp_path, monkeypatch):
    from hpccnn.data import stage as command

    photos = write_photo_folder(tmp_path / "photos", count=4)
    cache = tmp_path / "cache"
    (cache / "keep").mkdir(parents=True)
    monkeypatch.chdir(photos / "train")
    stage("..", "--data-dir", cache, "--force")  # named after the folder it stands for: photos
    assert (cache / "packs" / "photos" / "index.json").is_file()
    for name in ("..", ".hidden", "arrays.npz", "cifar10"):
        assert "a pack's name is letters" in refusal(command.main, "..", "--data-dir", cache, "--name", name)
    assert (cache / "keep").is_dir()  # nothing outside packs/ touched


def test_sixteen_bit_images_keep_their_range_and_float_ones_are_named(tmp_path):
    from PIL import Image

    from hpccnn.data.userdata import read_image

    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # mode I;16
    pixels, _ = read_image(tmp_path / "deep.png")
    assert pixels.shape == (8, 8, 1) and pixels.max() == 63000 >> 8 and len(np.unique(pixels)) > 32  # not clipped
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "float.tiff")
    pixels, reason = read_image(tmp_path / "float.tiff")
    assert pixels is None and reason.startswith("F mode (float pixels)")


def test_a_damaged_npz_is_one_line(tmp_path):
    from conftest import train_refusal

    path = write_npz(tmp_path / "half.npz")
    path.write_bytes(path.read_bytes()[:200])
    assert "not a readable .npz" in train_refusal("--dataset", path, "--model", "cnn_v1")


@pytest.mark.slow
def test_a_resumed_run_refuses_a_pack_staged_again_since_it_started(tmp_path):
    from conftest import run_folders, run_module

    photos = write_photo_folder(tmp_path / "photos", count=10)
    cache = tmp_path / "cache"
    stage(photos, "--data-dir", cache)
    settings = ["--data-dir", cache, "--results-dir", tmp_path / "results", "--no-save-model", "--batch-size", "4"]
    first = run_module("hpccnn.train", "--dataset", "photos", "--model", "cnn_v1", "--image-size", "16", "--epochs",
                       "1", *settings, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    (folder,) = run_folders(tmp_path / "results")
    assert read_index_sha(cache) == __import__("json").loads((folder / "provenance.json").read_text())["pack"][
        "index_sha256"]
    stage(photos, "--data-dir", cache, "--force", "--shards", "2")  # staged again, otherwise
    again = run_module("hpccnn.train", "--resume", folder, "--epochs", "2", "--data-dir", cache, cwd=tmp_path,
                       timeout=300)
    assert again.returncode == 2 and "pack photos was staged again since" in again.stderr, again.stderr[-2000:]
    assert __import__("json").loads((folder / "metrics.json").read_text())["last_epoch"] == 1  # untouched


@pytest.mark.slow
def test_a_resumed_run_refuses_a_folder_of_its_own_that_changed_since_it_started(tmp_path):
    from conftest import run_folders, run_module

    photos = write_photo_folder(tmp_path / "photos", count=10)
    settings = ["--results-dir", tmp_path / "results", "--no-save-model", "--batch-size", "4"]
    first = run_module("hpccnn.train", "--dataset", photos, "--model", "cnn_v1", "--image-size", "16", "--epochs",
                       "1", *settings, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    (folder,) = run_folders(tmp_path / "results")
    assert __import__("json").loads((folder / "provenance.json").read_text())["pack"]["files"] == 20
    (photos / "train" / "china" / "000.jpg").rename(photos / "train" / "flower" / "moved.jpg")  # relabelled
    again = run_module("hpccnn.train", "--resume", folder, "--epochs", "2", cwd=tmp_path, timeout=300)
    assert again.returncode == 2 and f"--dataset {photos} has changed since" in again.stderr, again.stderr[-2000:]
    assert __import__("json").loads((folder / "metrics.json").read_text())["last_epoch"] == 1  # untouched


def read_index_sha(cache):
    from hpccnn.data.base import sha256

    return sha256(cache / "packs" / "photos" / "index.json")
