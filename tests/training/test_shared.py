"""The ranks of a node share one copy of the data set (hpccnn.training.shared), under real horovodrun with 2 ranks."""

import json
import sys

import pytest

from conftest import ROOT, output_of, read_json, run_folders, run_to_end
from hpccnn.launching.launch import horovodrun_command, horovodrun_prefix, mpi_env

SIZE = 20_000  # synthetic 32x32x3 images: a 61.6 MB window, large beside what else a rank's pages share


def shared_data(tmp_path, **env):
    """tests/shared_data.py under horovodrun -np 2: (each rank's facts, the run's stderr)."""
    out = tmp_path / "facts"
    proc = run_to_end([*horovodrun_prefix(2), sys.executable, str(ROOT / "tests" / "shared_data.py"), str(out),
                       str(SIZE)], env={**mpi_env(), "PYTHONPATH": str(ROOT), **env}, timeout=300)  # about 20 s here
    assert proc.returncode == 0, output_of(proc)
    return [json.loads((tmp_path / f"facts.{rank}.json").read_text()) for rank in (0, 1)], proc.stderr


def the_same_data_as_loading_alone(ranks):
    """Each rank holds exactly the splits that loading alone gives, its training shard is its own (no image in
    both), the two cover the training set, and the first batches each rank trains on are the ones it had before."""
    for facts in ranks:
        assert facts["digests"] == facts["alone"]["digests"]
        assert facts["batches"] == facts["alone"]["batches"]
    first, second = (set(facts["shard_images"]) for facts in ranks)
    assert not first & second
    assert sorted(first | second) == ranks[0]["alone"]["train_images"]


@pytest.mark.mpi
@pytest.mark.slow
def test_the_ranks_of_a_node_share_one_copy_of_the_data_that_loading_alone_gives(tmp_path):
    ranks, _ = shared_data(tmp_path)
    window_bytes = ranks[0]["held"]["window_bytes"]
    assert window_bytes >= SIZE * 32 * 32 * 3
    for facts in ranks:
        assert facts["held"]["held_as"] == "node window" and facts["held"]["window_ranks"] == 2
        assert facts["held"]["own_bytes"] == 0
        start, end = facts["window"]
        for name, (address, size) in facts["arrays"].items():  # every split lives in the window's memory
            assert start <= address and address + size <= end and address % 64 == 0, name
    # rank 1 maps the window: its pages are shared, none of them its own, and half of them count as its (Pss).
    # Pss is read from the window's own mappings: the process's total also moves with whatever else it frees
    # meanwhile (CI once saw the total's Pss grow by 0.27 of the window while the window's pages were shared).
    before, after = ranks[1]["before"], ranks[1]["after"]
    assert after["shared_bytes"] - before["shared_bytes"] > 0.9 * window_bytes
    assert after["private_bytes"] - before["private_bytes"] < 0.1 * window_bytes
    for facts in ranks:
        pages = facts["window_pages"]
        assert pages["shared_bytes"] > 0.95 * window_bytes and pages.get("private_bytes", 0) < 0.05 * window_bytes, \
            (facts["rank"], pages, window_bytes)
        assert 0.45 * window_bytes < pages["pss_bytes"] < 0.55 * window_bytes, (facts["rank"], pages, window_bytes)
    the_same_data_as_loading_alone(ranks)


@pytest.mark.mpi
@pytest.mark.slow
def test_a_window_open_mpi_refuses_leaves_each_rank_its_own_copy_after_one_warning(tmp_path):
    ranks, stderr = shared_data(tmp_path, OMPI_MCA_osc="^sm")  # Open MPI without its shared-memory windows
    warnings = [line for line in stderr.splitlines() if "hpccnn: warning:" in line]
    assert len(warnings) == 1, stderr[-3000:]
    assert "each rank of this node loads its own copy of the data set: Open MPI could not make a shared-memory " \
           "window" in warnings[0]
    for facts in ranks:
        assert facts["held"]["held_as"] == "own copy" and facts["held"]["window_bytes"] == 0
        assert facts["held"]["own_bytes"] >= SIZE * 32 * 32 * 3 and facts["window"] is None
    the_same_data_as_loading_alone(ranks)


@pytest.mark.mpi
@pytest.mark.slow
def test_a_run_of_cifar10s_full_size_sharing_the_window_by_default_ends_when_its_results_are_written(tmp_path):
    """The two ranks free the node's 147 MB window and exit, not hang: before train.free_data, the rank done first
    exited at once and Horovod's thread on the other called MPI_Finalize in the middle of its free, which then
    waited for ever for the rank gone (this run hung 2 times of 2; digits' small window freed in time)."""
    cmd = horovodrun_command(2, ["--experiment", "cifar_cnn_v3", "--dataset", "synthetic", "--synthetic-size", "50000",
                                 "--epochs", "1", "--steps-per-epoch", "5", "--no-save-model",
                                 "--results-dir", str(tmp_path)])
    proc = run_to_end(cmd, env=mpi_env(), timeout=300)  # about 30 s here
    assert proc.returncode == 0, output_of(proc)
    (folder,) = run_folders(tmp_path)
    assert read_json(folder / "metrics.json")["status"] == "completed"
    held = [rank["memory"]["data"] for rank in read_json(folder / "provenance.json")["ranks"]]
    assert [h["held_as"] for h in held] == ["node window"] * 2 and held[0]["window_bytes"] >= 50_000 * 32 * 32 * 3
