"""python -m hpccnn.train as one process: the run folder holds everything, nothing is overwritten."""

import os

import numpy as np
import pandas as pd
import pytest

from conftest import read_json, run_folders, run_module, train_refusal

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds", "images_per_second"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    env = {**os.environ, "HPCCNN_PROGRESS_SECONDS": "0"}  # a progress line after every step but an epoch's last
    proc = run_module("hpccnn.train", "--experiment", "digits_cnn", "--epochs", "3", "--results-dir", results,
                      env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_folders(results)
    return folder, proc


def test_a_log_gets_progress_lines_within_each_epoch(digits_run):
    import re

    folder, proc = digits_run  # stdout is a pipe here, as a SLURM log is a file
    found = re.findall(r"^hpccnn: epoch (\d)/3: step (\d+)/(\d+), [\d,]+ img/s, \d+s left in this epoch$",
                       proc.stdout, re.M)
    steps, every = int(found[0][2]), read_json(folder / "config.json")["steps_per_execution"]
    assert steps > 2 * every  # Keras reports a step once per execution of steps_per_execution steps
    for epoch in (1, 2, 3):
        assert [int(s) for e, s, _ in found if int(e) == epoch] == list(range(every, steps, every))
    assert "\r" not in proc.stdout  # no terminal bar in a log


def test_a_terminal_gets_a_bar_redrawn_in_place_and_cleared_before_the_epoch_line():
    import io

    from hpccnn.training.callbacks import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    bar = Progress(steps=100, images_per_step=32, epochs=2, interval=30, stream=out)
    bar.interval = 0  # redraw at every step instead of twice a second
    bar.on_epoch_begin(0)
    for step in range(100):
        bar.on_train_batch_end(step)
    bar.on_epoch_end(0)
    text = out.getvalue()
    assert text.count("\r[") == 99 and "\n" not in text  # redrawn in place, never a new line
    assert "\r[############............] epoch 1/2: step 50/100," in text
    assert text.endswith("\r\033[K")  # the bar is gone before Keras prints the epoch's line


def test_run_folder_is_dated_and_named_after_the_experiment(digits_run):
    import datetime

    folder, proc = digits_run
    assert folder.parent.name == datetime.date.today().isoformat()
    assert folder.name.startswith("digits_cnn-")
    assert f"results in {folder}" in proc.stdout


def test_history_has_every_epoch_and_column(digits_run):
    folder, _ = digits_run
    history = pd.read_csv(folder / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    assert set(HISTORY_COLUMNS) <= set(history.columns)
    assert (history["images_per_second"] > 0).all() and (history["epoch_seconds"] > 0).all()
    assert history["lr"].iloc[0] == pytest.approx(1e-3)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]


def test_predictions_confusion_matrix_and_report_cover_the_whole_test_set(digits_run):
    folder, _ = digits_run
    predictions = pd.read_csv(folder / "predictions.csv")
    assert list(predictions.columns) == ["predict", "test"]
    assert len(predictions) == 360  # 20% of scikit-learn's 1,797 digits
    cm = pd.read_csv(folder / "confusion_matrix.csv", index_col=0)
    assert list(cm.columns) == [str(i) for i in range(10)] and list(cm.index.astype(str)) == list(cm.columns)
    assert cm.to_numpy().sum() == 360
    assert np.trace(cm.to_numpy()) == (predictions["predict"] == predictions["test"]).sum()
    report = pd.read_csv(folder / "classification_report.csv")
    assert list(report.columns) == ["class", "precision", "recall", "f1-score", "support"]
    assert len(report) == 10 and report["support"].sum() == 360
    metrics = read_json(folder / "metrics.json")
    assert metrics["status"] == "completed" and metrics["world_size"] == 1
    assert metrics["test_accuracy"] == pytest.approx((predictions["predict"] == predictions["test"]).mean())
    assert metrics["test_accuracy"] > 0.5 and metrics["test_loss"] > 0 and metrics["wall_seconds"] > 0


def test_plots_are_png_files(digits_run):
    folder, _ = digits_run
    for name in ("curves.png", "confusion_matrix.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_and_provenance_record_how_the_run_was_made(digits_run):
    folder, _ = digits_run
    config = read_json(folder / "config.json")
    assert config["name"] == "digits_cnn" and config["epochs"] == 3 and config["model"] == "mnist_cnn"
    prov = read_json(folder / "provenance.json")
    assert "hpccnn.train --experiment digits_cnn --epochs 3" in prov["command"]
    assert prov["versions"]["tensorflow"] == "2.15.1" and prov["versions"]["horovod"] == "0.28.1"
    assert prov["world_size"] == 1 and len(prov["ranks"]) == 1 and prov["hosts"]
    assert prov["git_commit"] and len(prov["git_commit"].split("-")[0]) == 40


def test_saved_model_reloads_and_reproduces_the_predictions(digits_run):
    import tensorflow as tf

    from hpccnn.data import datasets as data

    folder, _ = digits_run
    model = tf.keras.models.load_model(folder / "model.h5", compile=False)
    splits = data.split(data.load("digits"))
    x = splits.x_test.astype("float32") * splits.scale
    predicted = model.predict(x, verbose=0).argmax(axis=1)
    np.testing.assert_array_equal(predicted, pd.read_csv(folder / "predictions.csv")["predict"])


def test_tensorboard_events_are_written(digits_run):
    folder, _ = digits_run
    assert list((folder / "tensorboard").rglob("events.out.tfevents.*"))


def test_a_second_run_gets_its_own_folder(tmp_path):
    from hpccnn.common.runs import create_run_folder

    import datetime

    now = datetime.datetime(2026, 1, 2, 3, 4, 5)
    first, second = create_run_folder(tmp_path, "x", now), create_run_folder(tmp_path, "x", now)
    assert first != second and first.is_dir() and second.is_dir()
    assert first.parent == second.parent == tmp_path / "2026-01-02"


def test_a_requeued_job_resumes_the_folder_with_its_own_job_id(tmp_path, monkeypatch):
    from hpccnn.training.checkpoint import to_resume
    from hpccnn.common.runs import create_run_folder

    monkeypatch.setenv("SLURM_JOB_ID", "42")
    mine = create_run_folder(tmp_path, "x")
    monkeypatch.setenv("SLURM_JOB_ID", "43")
    create_run_folder(tmp_path, "x")  # another job's, newer
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert to_resume(None, tmp_path, "x") is None  # not requeued: a new run
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    resume = to_resume(None, tmp_path, "x")
    assert resume.folder == str(mine.resolve()) and resume.epoch == 0 and resume.checkpoint is None
    assert to_resume(None, tmp_path, "y") is None  # no folder of this experiment: a new run


def test_an_atomic_write_replaces_a_folder_whole_and_a_first_writer_is_kept(tmp_path):
    from hpccnn.common.files import read_json, write_atomic, write_json

    def folder_with(name):
        def write(tmp):
            tmp.mkdir()
            (tmp / name).write_text(name)
        return write

    write_atomic(tmp_path / "epoch", folder_with("old"))
    write_atomic(tmp_path / "epoch", folder_with("new"))
    assert [p.name for p in (tmp_path / "epoch").iterdir()] == ["new"]
    write_json(tmp_path / "grid.json", {"first": True}, replace=False)
    write_json(tmp_path / "grid.json", {"first": False}, replace=False)
    assert read_json(tmp_path / "grid.json") == {"first": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch", "grid.json"]  # no temporary left


def test_only_rank_zero_may_create_a_writer(tmp_path):
    from hpccnn.training.dist import World
    from hpccnn.training.results import RunWriter

    with pytest.raises(RuntimeError, match="only rank 0"):
        RunWriter.create(tmp_path, "x", World(rank=1, local_rank=1, size=2, local_size=2, intra_op_threads=1))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("experiment,extra", [
    ("cifar_cnn_v3", ["--batch-size", "16"]),
    ("cifar_alexnet64", ["--batch-size", "8"]),
    ("mnist_cnn", ["--batch-size", "16"]),
    ("galaxy10_alexnet", ["--batch-size", "8"]),
])
@pytest.mark.slow
def test_seed_experiments_train_on_small_files_in_the_real_formats(data_dir, tmp_path, experiment, extra):
    proc = run_module("hpccnn.train", "--experiment", experiment, "--epochs", "1", "--data-dir", data_dir,
                      "--results-dir", tmp_path / "results", "--no-save-model", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_folders(tmp_path / "results")
    assert read_json(folder / "metrics.json")["status"] == "completed"
    expected_test = {"cifar_cnn_v3": 30, "cifar_alexnet64": 30, "mnist_cnn": 20, "galaxy10_alexnet": 12}[experiment]
    assert len(pd.read_csv(folder / "predictions.csv")) == expected_test


@pytest.mark.slow
def test_synthetic_data_of_a_size_and_shape_trains_end_to_end_at_chance_level_in_capped_epochs(tmp_path):
    """--dataset synthetic: random images and labels, for trying a model with no data staged; here 1,000 of
    40x40x3, and --steps-per-epoch 3 of the 20 steps an epoch has."""
    proc = run_module("hpccnn.train", "--experiment", "cifar_cnn_v3", "--dataset", "synthetic", "--epochs", "2",
                      "--synthetic-size", "1000", "--synthetic-shape", "40x40x3", "--steps-per-epoch", "3",
                      "--data-dir", tmp_path / "no-cache", "--results-dir", tmp_path / "results", "--no-save-model")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "32 images per rank per step, 3 steps per epoch" in proc.stdout
    (folder,) = run_folders(tmp_path / "results")
    metrics, config = read_json(folder / "metrics.json"), read_json(folder / "config.json")
    assert metrics["status"] == "completed" and config["dataset"] == "synthetic"
    assert config["synthetic_shape"] == "40x40x3" and config["steps_per_epoch"] == 3
    assert len(pd.read_csv(folder / "history.csv")) == 2
    predictions = pd.read_csv(folder / "predictions.csv")
    assert len(predictions) == 200  # 20% of the 1,000 generated images
    assert metrics["test_accuracy"] < 0.25  # random labels: nothing to learn, ten classes
    assert not (tmp_path / "no-cache").exists()  # generated, never staged or cached
    (rank,) = read_json(folder / "provenance.json")["ranks"]  # a process alone holds its own copy
    data = rank["memory"]["data"]
    assert data["held_as"] == "own copy" and data["own_bytes"] >= 1000 * 40 * 40 * 3 and data["window_bytes"] == 0
    assert rank["memory"]["peak_rss_bytes"] > data["own_bytes"] and rank["memory"]["rss_bytes"] > data["own_bytes"]
    assert "hpccnn: peak memory of the process: " in proc.stdout


def test_list_shows_the_experiments():
    proc = run_module("hpccnn.train", "--list")
    assert proc.returncode == 0
    assert "digits_cnn" in proc.stdout and "cifar_alexnet64" in proc.stdout and "0.708" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--experiment", "nope"], "unknown experiment 'nope'"),
    (["--epochs", "two"], "--epochs must be int"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--learning-rate", "-1"], "--learning-rate must be positive"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--epoch", "3"], "unrecognized arguments"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "python -m hpccnn.stage cifar10"),
])
def test_bad_input_gets_one_line_exit_2_and_no_results(tmp_path, args, message, monkeypatch):
    """In this process (hpccnn.train as a command: tests/test_bad_input.py)."""
    monkeypatch.chdir(tmp_path)
    assert message in train_refusal(*args, "--results-dir", tmp_path / "results")
    assert not (tmp_path / "results").exists()
