import numpy as np
import pytest

from conftest import write_cifar10, write_galaxy10, write_mnist
from hpccnn.data import builtin
from hpccnn.data import datasets as data
from hpccnn.data.base import Raw
from hpccnn.common.errors import UserError


def test_cifar10_pickled_batches_parse_into_nhwc_images(tmp_path):
    batches = write_cifar10(tmp_path / "cifar10" / "cifar-10-batches-py", per_batch=4, test=3)
    raw = data.load("cifar10", tmp_path)
    assert raw.x_train.shape == (20, 32, 32, 3) and raw.x_test.shape == (3, 32, 32, 3)
    # CIFAR stores each image as 1024 red, then green, then blue values, rows first.
    flat = batches["data_batch_1"][b"data"][0]
    assert raw.x_train[0, 0, 1, 0] == flat[1] and raw.x_train[0, 0, 0, 2] == flat[2048]
    assert raw.x_train[0, 1, 0, 1] == flat[1024 + 32]
    assert list(raw.y_train[:4]) == batches["data_batch_1"][b"labels"]
    assert list(raw.y_train[16:]) == batches["data_batch_5"][b"labels"]
    assert raw.classes[0] == "airplane" and len(raw.classes) == 10


def test_mnist_npz_parses_with_a_channel_axis(tmp_path):
    arrays = write_mnist(tmp_path / "mnist" / "mnist.npz", train=12, test=5)
    raw = data.load("mnist", tmp_path)
    assert raw.x_train.shape == (12, 28, 28, 1) and raw.x_test.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(raw.x_test[..., 0], arrays["x_test"])
    np.testing.assert_array_equal(raw.y_train, arrays["y_train"])


def test_galaxy10_h5_is_read_directly_with_h5py(tmp_path):
    images, ans = write_galaxy10(tmp_path / "galaxy10" / "Galaxy10.h5", n=10)
    raw = data.load("galaxy10", tmp_path)
    np.testing.assert_array_equal(raw.x_train, images)
    np.testing.assert_array_equal(raw.y_train, ans)
    assert raw.x_test is None and raw.classes[1] == "Smooth, Completely round"


def test_galaxy10_file_without_its_keys_is_a_clear_error(tmp_path):
    import h5py

    (tmp_path / "galaxy10").mkdir()
    with h5py.File(tmp_path / "galaxy10" / "Galaxy10.h5", "w") as f:
        f.create_dataset("pictures", data=np.zeros((2, 69, 69, 3), np.uint8))
    with pytest.raises(UserError, match="'images'"):
        data.load("galaxy10", tmp_path)


def test_digits_are_the_real_scikit_learn_data():
    raw = data.load("digits")
    assert raw.x_train.shape == (1797, 8, 8, 1) and raw.x_train.max() == 16
    assert raw.scale == 1 / 16 and sorted(set(raw.y_train)) == list(range(10))


@pytest.mark.parametrize("name,missing", [("cifar10", "data_batch_1"), ("mnist", "mnist.npz"),
                                          ("galaxy10", "Galaxy10.h5")])
def test_missing_data_names_the_file_and_the_staging_command(tmp_path, name, missing, monkeypatch):
    monkeypatch.setattr(builtin, "astronn_galaxy10_file", lambda: tmp_path / "no-astronn" / "Galaxy10.h5")
    with pytest.raises(UserError) as err:
        data.load(name, tmp_path)
    message = str(err.value)
    assert missing in message and f"python -m hpccnn.stage {name} --data-dir {tmp_path}" in message
    assert "\n" not in message


def test_galaxy10_split_matches_seed_000_proportions():
    raw = Raw(np.zeros((21785, 1, 1, 1), np.uint8), np.arange(21785) % 10, None, None, list(range(10)))
    s = builtin.split(raw, "split", 0.2, 0.2, seed=0)
    assert (len(s.x_train), len(s.x_val), len(s.x_test)) == (13942, 3486, 4357)


def test_splits_are_seeded_so_every_rank_agrees_and_disjoint():
    raw = data.load("digits")
    a, b = builtin.split(raw, seed=3), builtin.split(data.load("digits"), seed=3)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    c = builtin.split(raw, seed=4)
    assert not np.array_equal(a.y_train, c.y_train)


def test_validation_on_the_test_set_for_seeds_that_did_so(tmp_path):
    write_mnist(tmp_path / "mnist" / "mnist.npz", train=12, test=5)
    s = builtin.split(data.load("mnist", tmp_path), validation="test")
    assert len(s.x_train) == 12 and s.x_val is s.x_test


def test_labels_outside_the_class_range_are_refused(tmp_path):
    raw = Raw(np.zeros((20, 2, 2, 1), np.uint8), np.array([0] * 19 + [10]), None, None, list(range(10)))
    with pytest.raises(UserError, match="labels outside 0..9"):
        builtin.check(raw, "digits", "/cache")


def test_synthetic_data_has_the_size_and_shape_asked_for():
    from hpccnn.models.catalog import get_experiment
    from hpccnn.models.experiments import with_overrides

    exp = with_overrides(get_experiment("galaxy10_alexnet"), {"dataset": "synthetic", "synthetic_size": 500,
                                                              "synthetic_shape": "69x69x3"})
    s = data.load_split(exp)
    assert s.x_train.shape[1:] == (69, 69, 3) and s.x_train.dtype == np.uint8
    assert len(s.x_train) + len(s.x_val) + len(s.x_test) == 500 and len(s.x_test) == 100
    assert builtin.parse_shape("227X227x1") == (227, 227, 1)


def test_the_node_windows_layout_gives_back_every_split_aligned_and_read_only():
    from hpccnn.training import shared

    write = builtin.split(data.load("digits"), validation="test")  # x_val is x_test: stored once
    entries, size = shared.layout(write)
    assert all(offset % shared.ALIGN == 0 for _, dtype, _, offset in entries if dtype is not None)
    assert size < shared.nbytes(write) + 6 * shared.ALIGN and shared.nbytes(write) < 1.1 * size
    buffer = bytearray(size)
    for name, dtype, shape, offset in entries:
        if dtype is not None:
            shared.array_at(buffer, dtype, shape, offset)[...] = getattr(write, name)
    read = shared.views(buffer, entries, {"classes": write.classes, "scale": write.scale})
    for name in shared.ARRAYS:
        np.testing.assert_array_equal(getattr(read, name), getattr(write, name))
        assert not getattr(read, name).flags.writeable
    assert read.x_val is read.x_test and read.scale == 1 / 16


def test_a_window_too_large_for_its_folder_is_named_before_open_mpi_tries(tmp_path):
    from hpccnn.training import shared

    assert shared.window_problem(1 << 20, str(tmp_path)) == ""
    message = shared.window_problem(1 << 60, str(tmp_path))
    assert f"{tmp_path} has" in message and "OMPI_MCA_osc_sm_backing_directory" in message
    assert "is unusable" in shared.window_problem(1 << 20, str(tmp_path / "missing"))


def test_a_process_alone_loads_its_own_copy_without_mpi():
    """One rank (no MPI launcher) never imports mpi4py's MPI: no MPI is needed to load the data."""
    import subprocess
    import sys

    from conftest import ROOT

    script = ("import sys\nfrom hpccnn.training import shared\nfrom hpccnn.training.dist import World\n"
              "from hpccnn.models.catalog import get_experiment\n"
              "splits, held = shared.load(get_experiment('digits_cnn'), World(0, 0, 1, 1, 1))\n"
              "assert 'mpi4py.MPI' not in sys.modules and 'horovod' not in sys.modules, sorted(sys.modules)\n"
              "print(held.mode, held.own_bytes, held.per_rank_bytes, len(splits.x_train), sep='|')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mode, own, per_rank, train = proc.stdout.strip().splitlines()[-1].split("|")
    assert mode == "own copy" and int(own) == int(per_rank) > 1797 * 64 and int(train) == 1149


def test_memory_usage_reads_peak_rss_and_linuxs_smaps_rollup(tmp_path):
    from hpccnn.training import memory

    rollup = tmp_path / "smaps_rollup"
    rollup.write_text("00400000-ff ---p 00000000 00:00 0   [rollup]\nRss:  3000 kB\nPss:  1800 kB\n"
                      "Shared_Clean:  1500 kB\nShared_Dirty:  100 kB\nPrivate_Clean:  400 kB\n"
                      "Private_Dirty:  1000 kB\nSwap:  0 kB\n")
    used = memory.usage(rollup)
    assert (used["rss_bytes"], used["pss_bytes"]) == (3000 * 1024, 1800 * 1024)
    assert (used["shared_bytes"], used["private_bytes"]) == (1600 * 1024, 1400 * 1024)
    assert used["peak_rss_bytes"] > 0.9 * memory.usage()["rss_bytes"] > 0  # this process's own (gVisor may lag a little)
    assert set(memory.usage(tmp_path / "missing")) == {"peak_rss_bytes"}


def test_the_memory_line_says_each_ranks_peak_and_how_the_node_held_the_data():
    from hpccnn.training.results import memory_line

    mb = 2 ** 20
    window = {"held_as": "node window", "window_bytes": 154 * mb, "window_ranks": 2, "own_bytes": 0,
              "shard_bytes": 62 * mb}
    line = memory_line([{"peak_rss_bytes": 1300 * mb, "data": window}, {"peak_rss_bytes": 1100 * mb, "data": window}])
    assert line.startswith("peak memory per rank (0 to 1): 1,300, 1,100 MB; the data set: 154 MB shared by the 2 "
                           "ranks of a node, and 62 MB of rank 0's shards in TensorFlow"), line
    alone = {"held_as": "own copy", "window_bytes": 0, "window_ranks": 1, "own_bytes": 154 * mb, "shard_bytes": 0}
    assert "peak memory of the process: 900 MB; the data set: 154 MB in each rank's own copy" in \
        memory_line([{"peak_rss_bytes": 900 * mb, "data": alone}])
