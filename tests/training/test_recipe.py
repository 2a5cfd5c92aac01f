"""The rest of Horovod's recipe, shown on real runs: LR scaling with warm-up, rank-0 checkpoints."""


import pandas as pd
import pytest

from conftest import ROOT, read_json, run_folders, run_to_end, write_galaxy10
from hpccnn.data import builtin
from hpccnn.data import datasets as data
from hpccnn.data.base import sha256
from hpccnn.common.errors import UserError
from hpccnn.launching.launch import horovodrun_command, mpi_env


@pytest.mark.mpi
def test_scaled_learning_rate_warms_up_to_size_times_the_base(tmp_path):
    proc = run_to_end(horovodrun_command(2, [
        "--experiment", "digits_cnn", "--epochs", "3", "--batch-size", "16", "--batch-per-rank", "true",
        "--scale-lr", "true", "--warmup-epochs", "2", "--no-save-model", "--results-dir", str(tmp_path)]),
        env=mpi_env(), cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_folders(tmp_path)
    lr = pd.read_csv(folder / "history.csv")["lr"].tolist()
    # warm-up starts near lr/size and ends at lr*size; afterwards it stays there
    assert lr[0] < lr[1] < 2e-3 * 1.0001 and lr[2] == pytest.approx(2e-3)
    config = read_json(folder / "config.json")
    assert config["batch_per_rank"] is True and config["scale_lr"] is True


@pytest.mark.mpi
def test_checkpoint_of_the_last_epoch_is_kept_by_rank_zero(tmp_path):
    proc = run_to_end(horovodrun_command(2, ["--experiment", "digits_cnn", "--epochs", "2", "--no-save-model",
                                             "--results-dir", str(tmp_path)]), env=mpi_env(), cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_folders(tmp_path)
    latest = read_json(folder / "checkpoint" / "latest.json")
    assert latest == {"epoch": 2, "folder": "epoch-0002"}
    assert [p.name for p in (folder / "checkpoint").iterdir() if p.is_dir()] == ["epoch-0002"]  # older ones gone
    saved = folder / "checkpoint" / "epoch-0002"
    assert (saved / "weights.h5").stat().st_size > 100_000 and (saved / "optimizer.npz").stat().st_size > 100_000
    state = read_json(saved / "state.json")
    assert state["epoch"] == 2 and [row["epoch"] for row in state["history"]] == [1, 2]
    assert read_json(folder / "metrics.json")["last_epoch"] == 2
    assert not list(folder.rglob(".*.tmp*"))


def astronn_loaders(monkeypatch, images=None, labels=None):
    """astroNN's Galaxy10 loaders (which download when the file in its cache is missing or damaged)
    replaced by stand-ins that note each call: the real download can't run on this machine. A call
    must show as a call: hpccnn.data.datasets turns a loader's download error into a UserError like its own."""
    from astroNN.datasets import galaxy10, galaxy10sdss

    import astroNN.datasets

    calls = []

    def loader(flag=None):
        calls.append(flag)
        if images is None:
            raise OSError("astroNN's loader would download Galaxy10.h5 here")
        return images, labels

    for module, name in ((galaxy10sdss, "load_data"), (galaxy10, "load_data"), (astroNN.datasets, "load_galaxy10"),
                         (astroNN.datasets, "load_galaxy10sdss")):
        monkeypatch.setattr(module, name, loader)
    return calls


def test_galaxy10_in_astronn_cache_with_a_wrong_checksum_is_not_trusted(tmp_path, monkeypatch):
    # The real Galaxy10.h5 (200 MB) cannot be downloaded here, so only the refusal is shown:
    # a file in astroNN's cache whose SHA-256 differs is ignored rather than handed to astroNN
    # (which would try to download it again from inside the job).
    fake = tmp_path / "astronn" / "datasets" / "Galaxy10.h5"
    write_galaxy10(fake, n=4)
    monkeypatch.setattr(builtin, "astronn_galaxy10_file", lambda: fake)
    calls = astronn_loaders(monkeypatch)
    with pytest.raises(UserError, match="python -m hpccnn.stage galaxy10"):
        data.load("galaxy10", tmp_path / "cache")
    assert calls == [], "astroNN's downloading loader was called for a file whose checksum is wrong"


def test_galaxy10_in_astronn_cache_with_the_right_checksum_is_read_by_astronn(tmp_path, monkeypatch):
    """The other side of the test above, so that its 'never called' can fail: the file whose SHA-256 is
    the real one's (here the fake's own hash stands in for it) goes to astroNN's loader, once."""
    fake = tmp_path / "astronn" / "datasets" / "Galaxy10.h5"
    images, labels = write_galaxy10(fake, n=4)
    monkeypatch.setattr(builtin, "astronn_galaxy10_file", lambda: fake)
    monkeypatch.setattr(builtin, "GALAXY10_SHA256", sha256(fake))
    calls = astronn_loaders(monkeypatch, images, labels)
    raw = data.load("galaxy10", tmp_path / "cache")
    assert calls == [None] and (raw.x_train == images).all() and list(raw.y_train) == list(labels)
