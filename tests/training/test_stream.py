"""A staged pack streamed from its shards (hpccnn.training.stream), read as each rank of 1, 2 and 3 reads it: its own shards,
the same steps per epoch, every training image once per epoch within the rounding, an order that is a function of
the seed, the rank and the epoch, the in-memory path's splits, the test set predicted exactly once; and the choice
between memory and streaming, and the refusals."""

import json

import numpy as np
import pytest

from userdata_files import write_photo_folder

from hpccnn.common.errors import UserError
from hpccnn.data import datasets
from hpccnn.data import stage as command
from hpccnn.training import stream, train
from hpccnn.training.dist import World
from hpccnn.training.inputs import Batches


def refusal(function, *args) -> str:
    """The one line of the UserError function(*args) raises."""
    with pytest.raises(UserError) as err:
        function(*args)
    assert "\n" not in str(err.value), str(err.value)
    return str(err.value)


def stage(*argv):
    return command.main.__wrapped__([str(a) for a in argv])


def experiment(dataset, *settings):
    return train.parse(["--dataset", str(dataset), "--model", "mnist_cnn", *map(str, settings)])[1]


@pytest.fixture(scope="module")
def digits_pack(tmp_path_factory):
    """scikit-learn's 1,797 digits as uint8 in an .npz without a test set, staged as a pack of 8 training shards
    (the test and validation sets are carved from its training images, as for the built-in digits)."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("stream")
    digits = load_digits()
    np.savez(root / "digits.npz", x_train=(digits.images * 15).astype(np.uint8), y_train=digits.target)
    stage(root / "digits.npz", "--data-dir", root / "cache", "--name", "dig")
    return root / "cache"


def opened(cache, *settings):
    return stream.open_pack(experiment("dig", *settings), cache)


def epoch_indices(streamed, rank, size, batch, steps, seed=0, first=0, epochs=1):
    records = stream.train_records(streamed, rank, size, Batches(batch, steps, seed, first, epochs))
    found = [r["index"] for r in records.as_numpy_iterator()]
    assert all(len(f) == batch for f in found)  # whole batches
    return np.concatenate(found).reshape(epochs - first, -1)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_every_rank_reads_its_own_shards_the_same_steps_and_every_image_once_per_epoch(digits_pack, size):
    streamed, batch = opened(digits_pack), 16
    shards = streamed.index["splits"]["train"]["shards"]
    assert len(shards) == 8
    reads = [stream.reads(shards, rank, size) for rank in range(size)]
    whole = [{f for f, every, _ in r if every == 1} for r in reads]
    assert all(whole) and sum(len(w) for w in whole) == len(set().union(*whole))  # no shard read whole twice
    steps, fewest, most = stream.steps_per_epoch(streamed, size, batch)
    # each shard loses the same share to the validation and test sets, within an image for each of the two
    assert most - fewest <= 2 * max(len(w) for w in whole) + 8 % size, (most, fewest)
    train = set(streamed.sets["train"][1].tolist())
    seen = [epoch_indices(streamed, rank, size, batch, steps)[0] for rank in range(size)]
    assert all(len(s) == steps * batch for s in seen)  # the same steps on every rank
    together = np.concatenate(seen)
    assert len(set(together.tolist())) == len(together) and set(together.tolist()) <= train
    left_out = len(train) - len(together)
    assert 0 <= left_out <= size * (batch - 1) + size * (most - fewest), left_out


def test_the_order_is_a_function_of_the_seed_the_rank_and_the_epoch(digits_pack):
    streamed, batch = opened(digits_pack), 16
    steps = stream.steps_per_epoch(streamed, 2, batch)[0]
    three = epoch_indices(streamed, 1, 2, batch, steps, seed=5, epochs=3)
    np.testing.assert_array_equal(three, epoch_indices(streamed, 1, 2, batch, steps, seed=5, epochs=3))
    resumed = epoch_indices(streamed, 1, 2, batch, steps, seed=5, first=2, epochs=3)
    np.testing.assert_array_equal(resumed[0], three[2])  # a run resumed at epoch 2 reads what it would have
    assert not np.array_equal(three[0], three[1])  # each epoch its own order
    assert sorted(three[0].tolist()) != three[0].tolist()  # shuffled, not the shards' order
    other = epoch_indices(streamed, 1, 2, batch, steps, seed=6, epochs=1)
    assert not np.array_equal(other[0], three[0])


def test_the_streamed_sets_are_the_in_memory_splits_and_the_test_set_is_predicted_once(digits_pack):
    exp = experiment("dig", "--input", "memory")
    splits = datasets.load_split(exp, digits_pack)
    streamed = opened(digits_pack)
    assert streamed.count("train") == len(splits.x_train) and streamed.shape == splits.shape
    assert streamed.scale == splits.scale and streamed.classes == splits.classes
    for name, x, y in (("val", splits.x_val, splits.y_val), ("test", splits.x_test, splits.y_test)):
        batches = list(stream.eval_pipeline(streamed, name, 0, 1, 64, 0).as_numpy_iterator())
        at, _ = stream.test_labels(streamed, 0, 1, name)  # read shard by shard: each image's place in the set
        np.testing.assert_allclose(np.concatenate([b[0] for b in batches]), x[at] * splits.scale, atol=1e-6)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y[at], err_msg=name)
    positions, labels = zip(*(stream.test_labels(streamed, rank, 3) for rank in range(3)))
    together = np.concatenate(positions)
    np.testing.assert_array_equal(np.sort(together), np.arange(len(splits.x_test)))  # each exactly once
    np.testing.assert_array_equal(np.concatenate(labels), splits.y_test[together])
    for rank in range(3):  # what a rank predicts is what it says it predicts, in that order
        batches = list(stream.eval_pipeline(streamed, "test", rank, 3, 32, 0).as_numpy_iterator())
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels[rank])
    images = stream.TestImages(streamed)
    assert len(images) == len(splits.x_test)
    np.testing.assert_array_equal(images[[5, 0, 17]], splits.x_test[[5, 0, 17]])


def test_auto_holds_a_pack_in_memory_unless_its_images_take_over_half_the_node(digits_pack, monkeypatch, capsys):
    world = World(0, 0, 1, 1, 1)
    assert stream.choose(experiment("dig"), world, digits_pack)["read"] == "memory"
    assert "pack dig: 0 MB of images" in capsys.readouterr().out
    assert stream.choose(experiment("dig", "--input", "stream"), world, digits_pack)["why"] == "--input stream"
    monkeypatch.setattr(stream, "MEMORY_SHARE", 1e-9)
    chosen = stream.choose(experiment("dig"), world, digits_pack)
    assert chosen["read"] == "stream" and chosen["data_bytes"] == 1797 * 64 and chosen["node_bytes"] > 0
    out = capsys.readouterr().out
    assert "streamed from its shards, its images take more than 0% of the node's memory" in out
    resumed = stream.choose(experiment("dig"), world, digits_pack, resumed_read="memory")
    assert resumed["read"] == "memory" and "as the run read it" in resumed["why"]
    assert stream.choose(experiment("digits"), world, digits_pack) is None  # built in: memory, as ever
    assert "is not one; stage it first" in refusal(stream.choose, experiment("digits", "--input", "stream"), world,
                                                   digits_pack)


def test_nan_pixels_are_refused_with_their_count_or_replaced_when_streamed(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((60, 6, 6, 1), dtype=np.float32)
    x[7, 2, 2, 0] = np.nan
    x[30, 0, 0, 0] = np.inf
    np.savez(tmp_path / "sky.npz", x_train=x, y_train=np.arange(60) % 2)
    stage(tmp_path / "sky.npz", "--data-dir", tmp_path / "cache", "--name", "sky")
    line = refusal(stream.open_pack, experiment("sky"), tmp_path / "cache")
    assert "2 images have NaN or infinite pixels (the first: image 7)" in line and "--nonfinite" in line
    streamed = stream.open_pack(experiment("sky", "--nonfinite", "0.5"), tmp_path / "cache")
    assert streamed.scale == 1.0 and streamed.nonfinite == 0.5
    steps = stream.steps_per_epoch(streamed, 1, 4)[0]
    batches = list(stream.train_pipeline(streamed, 0, 1, Batches(4, steps, 0, 0, 1), 0).as_numpy_iterator())
    assert all(np.isfinite(b[0]).all() for b in batches)
    np.savez(tmp_path / "far.npz", x_train=x * 1000, y_train=np.arange(60) % 2)
    stage(tmp_path / "far.npz", "--data-dir", tmp_path / "cache", "--name", "far")
    line = refusal(stream.open_pack, experiment("far", "--nonfinite", "0"), tmp_path / "cache")
    assert "neither in 0..1 nor in 0..255; give --pixel-max" in line


def test_photographs_of_mixed_sizes_and_modes_stream_at_one_size_and_channel_count(tmp_path):
    stage(write_photo_folder(tmp_path / "photos", count=30), "--data-dir", tmp_path / "cache", "--name", "snaps")
    assert "--image-size" in refusal(stream.open_pack, experiment("snaps"), tmp_path / "cache")
    streamed = stream.open_pack(experiment("snaps", "--image-size", "24"), tmp_path / "cache")
    assert streamed.shape == (24, 24, 3)
    splits = datasets.load_split(experiment("snaps", "--image-size", "24", "--input", "memory"), tmp_path / "cache")
    batches = list(stream.eval_pipeline(streamed, "test", 0, 1, 8, 0).as_numpy_iterator())
    got = np.concatenate([b[0] for b in batches])[np.argsort(stream.test_labels(streamed, 0, 1)[0])]
    assert got.shape == splits.x_test.shape
    # resized by TensorFlow's bilinear here and PIL's in memory: the same images, nearly the same pixels
    assert np.abs(got - splits.x_test * splits.scale).mean() < 0.05


def test_a_pack_staged_before_streaming_existed_is_refused_for_streaming_only(digits_pack, tmp_path):
    import shutil

    old = tmp_path / "cache"
    shutil.copytree(digits_pack, old)
    index = json.loads((old / "packs" / "dig" / "index.json").read_text())
    index["format"] = 1
    (old / "packs" / "dig" / "index.json").write_text(json.dumps(index))
    line = refusal(stream.open_pack, experiment("dig"), old)
    assert "stage it again with python -m hpccnn.stage" in line and "--input memory" in line


def test_a_packs_shards_hold_every_class_in_a_shuffled_order_whatever_the_sources_order(tmp_path):
    """A folder's images come class by class; written in that order, a rank streaming its shards through a
    bounded shuffle buffer would train on a few classes at a time (all of Fashion-MNIST as PNGs streamed
    to a test accuracy of 0.37 instead of 0.90). Each shard holds every class alike, in a seeded order."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.argsort(digits.target, kind="stable")  # class by class, as a folder is read
    np.savez(tmp_path / "sorted.npz", x_train=(digits.images[order] * 15).astype(np.uint8)[..., None],
             y_train=digits.target[order])
    stage(tmp_path / "sorted.npz", "--data-dir", tmp_path / "cache", "--name", "sorted")
    streamed = stream.open_pack(experiment("sorted"), tmp_path / "cache")
    for k, shard in enumerate(streamed.index["splits"]["train"]["shards"]):
        records = [tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(str(streamed.folder / shard["file"]))
                   .as_numpy_iterator()]
        labels = [e.features.feature["label"].int64_list.value[0] for e in records]
        indices = [e.features.feature["index"].int64_list.value[0] for e in records]
        assert sorted(set(labels)) == list(range(10))  # every class in every shard
        assert sum(a != b for a, b in zip(labels, labels[1:])) > len(labels) // 2  # not class by class
        assert indices == stream.in_shard(streamed.index["splits"]["train"], k).tolist()  # as carve says
