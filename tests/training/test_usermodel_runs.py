"""The user's own model through every command, as real processes: hpccnn.train under horovodrun (stopped by
SIGTERM and resumed from the run folder's copy of the user's file), keras.applications, the Python API under
python and horovodrun, a grid of the user's hpccnn.toml through SLURM from the user's own folder (status,
report, halving), the benchmark, and bad input as the command prints it."""

import hashlib
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import read_json, run_folders, run_module, run_to_end
from test_resilience import final_weights, metrics, rank_pids, wait_until
from usermodels import MYNETS, write_mynets

from hpccnn.launching.launch import horovodrun_prefix, mpi_env


def train_command(ranks, *args):
    return [*horovodrun_prefix(ranks), sys.executable, "-m", "hpccnn.train", *map(str, args)]


@pytest.mark.mpi
@pytest.mark.slow
def test_a_users_functional_model_trains_under_horovodrun_and_resumes_from_its_own_copy(tmp_path):
    project = tmp_path / "project"
    mynets = write_mynets(project)  # outside the repository
    model = ["--model", "mynets.py:small_resnet", "--model-args", "width=4", "--dataset", "digits",
             "--image-size", "32", "--epochs", "8"]
    reference = run_to_end(train_command(2, *model, "--results-dir", tmp_path / "left_alone"), timeout=600,
                           env=mpi_env(), cwd=project)
    assert reference.returncode == 0, reference.stderr[-3000:]
    (left_alone,) = run_folders(tmp_path / "left_alone")

    results = tmp_path / "stopped"
    launcher = subprocess.Popen(train_command(2, *model, "--results-dir", results), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=mpi_env(), cwd=project, start_new_session=True)
    try:
        folder = wait_until(lambda: (run_folders(results) or [None])[0], 300, "the run folder")
        wait_until(lambda: metrics(folder).get("last_epoch", 0) >= 1, 300, "a finished epoch")
        for pid in rank_pids(results).values():  # as a preemption signals every rank
            subprocess.run(["kill", "-TERM", str(pid)])
        out, _ = launcher.communicate(timeout=180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    stopped = metrics(folder)
    assert stopped["status"] == "interrupted" and 1 <= stopped["last_epoch"] < 8, out[-3000:]
    prov = read_json(folder / "provenance.json")
    original = hashlib.sha256(MYNETS.encode()).hexdigest()
    assert prov["model_source"] == {"reference": f"{mynets}:small_resnet", "file": str(mynets),
                                    "copy": "model_source/mynets.py", "sha256": original}
    assert (folder / "model_source" / "mynets.py").read_text() == MYNETS
    # an edit between the stop and the resume (no residual activation): it must not change the run
    mynets.write_text(MYNETS.replace("x = keras.layers.Activation(activation)(keras.layers.Add()([x, y]))",
                                     "x = keras.layers.Add()([x, y])"))
    resumed = run_to_end(train_command(2, "--resume", folder), timeout=600, env=mpi_env(), cwd=project)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"hpccnn: {mynets} has changed since this run started; the run goes on with the model from its own "
            f"copy, {folder / 'model_source' / 'mynets.py'}") in resumed.stdout
    assert pd.read_csv(folder / "history.csv")["epoch"].tolist() == list(range(1, 9))
    for (name, a), (_, b) in zip(final_weights(folder), final_weights(left_alone)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    done = metrics(folder)
    assert done["status"] == "completed" and done["test_accuracy"] == pytest.approx(
        metrics(left_alone)["test_accuracy"], abs=1e-9)
    assert read_json(folder / "provenance.json")["world_size"] == 2
    report = run_module("hpccnn.report", folder, timeout=300)  # and its report, as for a seed's run
    assert report.returncode == 0 and (folder / "report.html").exists(), report.stderr[-2000:]


@pytest.mark.slow
def test_keras_applications_mobilenet_v2_trains_one_short_epoch_as_typed(tmp_path):
    proc = run_module("hpccnn.train", "--model", "keras.applications.mobilenet_v2:MobileNetV2", "--model-args",
                      "weights=None,alpha=0.35", "--dataset", "digits", "--image-size", "32", "--epochs", "1",
                      "--steps-per-epoch", "4", "--results-dir", tmp_path / "results", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_folders(tmp_path / "results")
    assert metrics(folder)["status"] == "completed" and metrics(folder)["test_images"] == 360
    config = read_json(folder / "config.json")
    assert (config["name"], config["model_args"]) == ("MobileNetV2", "weights=None,alpha=0.35")
    assert "model_source" not in read_json(folder / "provenance.json")  # Keras' own file is not the user's code
    assert not (folder / "model_source").exists()


SCRIPT = textwrap.dedent('''
    import sys

    import hpccnn
    from tensorflow import keras


    def build(input_shape, classes, hidden=32):
        return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                                 keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(classes)])


    if __name__ == "__main__":
        result = hpccnn.fit(build, dataset="digits", epochs=2, batch_size=64, learning_rate=3e-3,
                            model_args={"hidden": 16}, results_dir=sys.argv[1])
        if result.folder is not None:
            print(f"RESULT {result.folder} {result.test_accuracy:.4f} {result.experiment.name}")
''')


@pytest.mark.mpi
@pytest.mark.slow
def test_the_python_api_runs_the_same_under_python_and_horovodrun(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    plain = run_to_end([sys.executable, str(script), str(tmp_path / "one")], timeout=600, env=mpi_env(), cwd=tmp_path)
    two = run_to_end([*horovodrun_prefix(2), sys.executable, str(script), str(tmp_path / "two")], timeout=600,
                     env=mpi_env(), cwd=tmp_path)
    for proc, ranks in ((plain, 1), (two, 2)):
        assert proc.returncode == 0, proc.stderr[-3000:]
        # rank 0's line alone (horovodrun puts its own prefix around it)
        ((folder, accuracy, name),) = re.findall(r"RESULT (\S+) (\d\.\d{4}) (build)", proc.stdout)
        folder = Path(folder)
        assert name == "build" and folder.parent.parent == tmp_path / ("one" if ranks == 1 else "two")
        assert metrics(folder)["status"] == "completed" and f"{metrics(folder)['test_accuracy']:.4f}" == accuracy
        assert metrics(folder)["world_size"] == ranks
        assert read_json(folder / "config.json")["model_args"] == "hidden=16"
        assert pd.read_csv(folder / "history.csv")["epoch"].tolist() == [1, 2]
        assert read_json(folder / "checkpoint" / "latest.json")["epoch"] == 2
        assert (folder / "model_source" / "train.py").read_text() == SCRIPT
        assert read_json(folder / "provenance.json")["model_source"]["reference"] == f"{script}:build"
        for name in ("predictions.csv", "confusion_matrix.csv", "model.h5"):
            assert (folder / name).exists(), name


@pytest.mark.slow
def test_bench_measures_a_users_model_against_plain_keras(tmp_path):
    write_mynets(tmp_path)
    proc = run_module("hpccnn.bench", "--models", "mynets.py:small_resnet", "--ranks", "1", "--peers", "none",
                      "--steps", "16", "--warmup", "4", "--out", tmp_path / "bench", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "bench" / "bench.csv")
    assert set(rows["model"]) == {f"{tmp_path / 'mynets.py'}:small_resnet"}
    assert sorted(rows["runner"]) == ["hpccnn 1 rank", "plain keras"] and (rows["images_per_second"] > 0).all()


@pytest.mark.slow
def test_bad_model_output_and_the_users_own_bug_end_the_command_with_status_2_and_nothing_written(tmp_path):
    write_mynets(tmp_path)
    results = tmp_path / "results"
    wrong = run_module("hpccnn.train", "--model", "mynets.py:wrong_output", "--dataset", "digits", "--results-dir",
                       results, cwd=tmp_path, timeout=300)
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        "hpccnn: error: --model " f"{tmp_path}/mynets.py:wrong_output: the model's output for 2 images has shape "
        "(2, 3), not (2, 10); its last layer needs one unit per class of the data set (10)"], wrong.stderr
    bug = run_module("hpccnn.train", "--model", "mynets.py:broken", "--dataset", "digits", "--results-dir", results,
                     cwd=tmp_path, timeout=300)
    assert bug.returncode == 2, bug.stderr
    lines = bug.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):" and lines[-2] == "KeyError: 'wide'", bug.stderr
    assert f'File "{tmp_path}/mynets.py", line' in bug.stderr and "hpccnn/" not in "\n".join(lines[:-1])
    assert lines[-1].startswith("hpccnn: error: ") and "your code" in lines[-1]
    assert not results.exists()


GRID_TOML = '''
[experiments.resnet_digits]
model = "mynets:small_resnet"  # a module, found in the folder the grid is submitted from
dataset = "digits"
epochs = 1
model_args = { width = 4 }

[grids.widths]
experiment = "resnet_digits"
sweep = { model_args = ["width=4", "width=6"], learning_rate = [1e-3, 3e-3] }
description = "two widths, two learning rates"

[grids.seeds]
experiment = "resnet_digits"
sweep = { seed = [0, 1, 2] }
'''
ONE_CORE = ["--ntasks-per-node", "1", "--cpus-per-task", "1", "--mem-gb", "3", "--time-min", "15"]


@pytest.mark.slurm
@pytest.mark.slow
def test_a_grid_of_the_users_toml_runs_through_slurm_from_their_own_folder_and_halves(slurm_env, tmp_path):
    project = tmp_path / "project"
    mynets = write_mynets(project)
    (project / "hpccnn.toml").write_text(GRID_TOML)
    results = tmp_path / "results"
    dry = run_module("hpccnn.submit", "--grid", "widths", *ONE_CORE, "--results-dir", results, "--dry-run",
                     env=slurm_env, cwd=project, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    for width, parameters in ((4, 4 * 9 + 4 + 4 * 4 * 9 + 4 + 4 + 4 * 10 + 10), (6, None)):
        line = re.search(rf"hpccnn: mynets:small_resnet \(width={width}\) built for the 8x8x1 images of digits: "
                         rf"([\d,]+) parameters, output \(None, 10\)", dry.stdout)
        assert line, dry.stdout
        assert parameters is None or int(line.group(1).replace(",", "")) == parameters
    assert dry.stdout.count(f"--config {project / 'hpccnn.toml'}") == 4 and not results.exists()

    proc = run_module("hpccnn.submit", "--grid", "widths", *ONE_CORE, "--results-dir", results, "--wait",
                      env=slurm_env, cwd=project, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (folder,) = [p for p in results.glob("*/*") if (p / "grid.json").exists()]
    grid = pd.read_csv(folder / "grid.csv")
    assert len(grid) == 4 and (grid["status"] == "completed").all(), grid.to_string()
    for _, row in grid.iterrows():
        run = Path(row["run_folder"])
        assert read_json(run / "provenance.json")["slurm"]["SLURM_JOB_ID"]
        assert (run / "model_source" / "mynets.py").read_text() == MYNETS
        assert read_json(run / "config.json")["model"] == "mynets:small_resnet"
    status = run_module("hpccnn.submit", "--status", folder, env=slurm_env, timeout=120)
    assert status.returncode == 0 and "4 point(s): 4 completed" in status.stdout, status.stdout
    assert len(re.findall(r"^\d\d_width-\d_lr[\d.e-]+\s+completed\s+1/1", status.stdout, re.M)) == 4, status.stdout
    report = run_module("hpccnn.report", folder, timeout=300)  # the best model rebuilt from its copy, reloaded
    assert report.returncode == 0, report.stderr[-2000:]
    md = (folder / "report.md").read_text()
    assert all(label in md for label in grid["point"]), md[:3000]
    assert re.search(r"Best model \(\S+\) reloaded from \S+/model.h5 and evaluated again: test accuracy "
                     r"[\d.]+, recorded at training time [\d.]+: the same.", md), md[:3000]

    halved = run_module("hpccnn.submit", "--grid", "seeds", "--epochs", "3", "--halving", "3", "--min-epochs", "1",
                        *ONE_CORE, "--results-dir", tmp_path / "halved", "--wait", env=slurm_env, cwd=project,
                        timeout=900)
    assert halved.returncode == 0, halved.stdout[-3000:] + halved.stderr[-3000:]
    (folder,) = [p for p in (tmp_path / "halved").glob("*/*") if (p / "grid.json").exists()]
    (first, second) = read_json(folder / "grid.json")["halving"]["rungs"]
    assert len(first["points"]) == 3 and len(second["points"]) == 1
    (survivor,) = second["points"]
    assert pd.read_csv(folder / survivor / "history.csv")["epoch"].tolist() == [1, 2, 3]
    assert [r["after_epoch"] for r in read_json(folder / survivor / "provenance.json")["resumes"]] == [1]
    for label in set(first["points"]) - {survivor}:
        assert pd.read_csv(folder / label / "history.csv")["epoch"].tolist() == [1]


@pytest.mark.slow
def test_a_subclassed_model_trains_resumes_and_is_saved_as_its_weights(tmp_path, monkeypatch):
    from hpccnn.reports import report

    write_mynets(tmp_path)
    results = tmp_path / "results"
    first = run_module("hpccnn.train", "--model", "mynets.py:subclassed", "--dataset", "digits", "--epochs", "2",
                       "--results-dir", results, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    (folder,) = run_folders(results)
    again = run_module("hpccnn.train", "--resume", folder, "--epochs", "3", cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    done = metrics(folder)
    assert done["status"] == "completed" and done["resumes"] == 1
    assert pd.read_csv(folder / "history.csv")["epoch"].tolist() == [1, 2, 3]
    # Keras can't save a subclassed model whole as HDF5: its weights are kept, and the reason said
    assert not (folder / "model.h5").exists() and (folder / "model_weights.h5").exists()
    assert done["model_saved"].startswith("weights only, model_weights.h5: Keras can't save this model whole (")
    monkeypatch.chdir(tmp_path)
    assert report.reevaluate(folder, None) == pytest.approx(done["test_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_a_package_modules_model_with_relative_imports_resumes_from_its_copy_elsewhere(tmp_path):
    """--model mypkg.nets:small, whose file imports its package's other module relatively: resumed from another
    folder after the file was edited, the run builds its model from the run folder's copy, its relative
    imports finding the package where it sits."""
    package = tmp_path / "project" / "mypkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "blocks.py").write_text(
        "import tensorflow as tf\n\n\ndef conv(x, filters):\n"
        "    return tf.keras.layers.Conv2D(filters, 3, activation='relu')(x)\n")
    (package / "nets.py").write_text(
        "import tensorflow as tf\n\nfrom .blocks import conv\n\n\ndef small(input_shape, classes):\n"
        "    inputs = tf.keras.Input(input_shape)\n    x = tf.keras.layers.Flatten()(conv(inputs, 4))\n"
        "    return tf.keras.Model(inputs, tf.keras.layers.Dense(classes, activation='softmax')(x))\n")
    results = tmp_path / "results"
    first = run_module("hpccnn.train", "--model", "mypkg.nets:small", "--dataset", "digits", "--epochs", "1",
                       "--results-dir", results, "--no-save-model", cwd=package.parent, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    (folder,) = run_folders(results)
    nets = (package / "nets.py").read_text()
    (package / "nets.py").write_text(nets.replace("conv(inputs, 4)", "conv(inputs, 9)"))  # edited since
    (tmp_path / "elsewhere").mkdir()
    again = run_module("hpccnn.train", "--resume", folder, "--epochs", "2", cwd=tmp_path / "elsewhere",
                       timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "has changed since this run started; the run goes on with the model from its own copy" in again.stdout
    assert metrics(folder)["status"] == "completed" and metrics(folder)["resumes"] == 1
