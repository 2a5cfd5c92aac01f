"""python -m hpccnn.submit and slurm/grid_array.sbatch, submitted for real to the local SLURM cluster."""

import csv
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT, job_field, read_json, refusal, run_module, sbatch, wait_for

from hpccnn.common import slurm
from hpccnn.launching.status import point_row

SMALL = ["--cpus-per-task", "1", "--mem-gb", "3", "--time-min", "15"]  # the 2-core local node, not a real one


def grid_folder(results: Path) -> Path:
    (folder,) = [p for p in results.glob("*/*") if (p / "grid.json").exists()]
    return folder


def read_grid(folder: Path):
    with open(folder / "grid.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.mpi
@pytest.mark.slow
def test_cifar_hparams_grid_halved_through_slurm_runs_its_rungs_in_order_and_resumes_the_best(digits_grid):
    """Seed 001's 12-point grid with --halving 3 --min-epochs 1 --epochs 3 and --wait: rung 0 one 12-task array
    of 2-rank tasks to epoch 1, rung 1 an array of its own for the best 4, which resume their run folders to
    epoch 3; the other 8 stop with their results, and grid.csv's rank-epochs add up."""
    results, dry, dry_results_existed, proc = digits_grid
    assert dry.returncode == 0, dry.stderr
    assert not dry_results_existed, "a dry run must not write anything"
    planned = re.findall(r"^\[array task (\d+)\] (\S+): (.+)$", dry.stdout, re.M)
    assert re.search(r"rung 0: every point \(12\) to epoch 1\n\s+rung 1: the best 4 \(4\) to epoch 3\n", dry.stdout)

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = grid_folder(results)
    assert str(folder) in proc.stdout
    arrays = re.findall(r"submitted job array (\d+) \((\d+) task\(s\)\) for rung (\d)", proc.stdout)
    assert [(n, k) for _, n, k in arrays] == [("12", "0"), ("4", "1")] and arrays[0][0] != arrays[1][0], arrays
    # the rungs ran in order: rung 1 was chosen only once every task of rung 0 had ended
    rung_one = proc.stdout.index("hpccnn: rung 1: 4 point(s) to epoch 3: ")
    record = read_json(folder / "grid.json")
    (first, second) = record["halving"]["rungs"]
    assert record["halving"]["epochs"] == [1, 3] and (first["epochs"], second["epochs"]) == (1, 3)
    rows = read_grid(folder)
    expected = list(itertools.product(["relu", "sigmoid"], ["32", "64", "128"], ["sgd", "adam"]))
    assert [(r["activation"], r["batch_size"], r["optimizer"]) for r in rows] == expected
    from hpccnn.launching import halving

    promoted = second["points"]
    at_one = [{"point": r["point"], "status": r["status"], **{k: float(v) for k, v in list(csv.DictReader(
        open(Path(r["run_folder"]) / "history.csv")))[0].items() if k in ("val_accuracy", "val_loss")}} for r in rows]
    assert first["promoted"] == promoted == halving.promote(at_one, 4), (at_one, promoted)
    assert proc.stdout[rung_one:].splitlines()[0].endswith(", ".join(promoted))
    array_ids = {k: job for job, _, k in arrays}
    for index, (row, point) in enumerate(zip(rows, record["points"])):
        assert row["status"] == "completed", row
        run = Path(row["run_folder"])
        assert run.parent == folder and run.name == point["label"]
        metrics, prov = read_json(run / "metrics.json"), read_json(run / "provenance.json")
        assert float(row["test_accuracy"]) == pytest.approx(metrics["test_accuracy"])
        assert prov["world_size"] == 2 and int(row["world_size"]) == 2
        assert prov["slurm"]["SLURM_ARRAY_JOB_ID"] == array_ids["0"] and prov["slurm"]["SLURM_ARRAY_TASK_ID"] == str(index)
        assert prov["slurm"]["SLURM_NTASKS"] == "2" and prov["slurm"]["SLURM_NNODES"] == "1"
        config = read_json(run / "config.json")
        assert (config["activation"], str(config["batch_size"]), config["optimizer"]) == expected[index]
        assert config["dataset"] == "digits" and config["model"] == "cnn_v3"
        # seed 001 compiled with optimizer="sgd"/"adam": Keras' default learning rate for each
        assert config["learning_rate"] == {"sgd": 0.01, "adam": 0.001}[config["optimizer"]]
        with open(run / "history.csv") as f:
            epochs = [int(h["epoch"]) for h in csv.DictReader(f)]
        if point["label"] in promoted:  # resumed from its checkpoint in rung 1's own array: every epoch once
            assert epochs == [1, 2, 3] and config["epochs"] == 3 and metrics["resumes"] == 1
            (resume,) = prov["resumes"]
            assert resume["after_epoch"] == 1 and resume["slurm"]["SLURM_ARRAY_JOB_ID"] == array_ids["1"]
            assert (row["rung"], row["epochs_trained"], row["stopped_early"]) == ("1", "3", "False"), row
        else:  # stopped after rung 0, its results kept
            assert epochs == [1] and config["epochs"] == 1 and "resumes" not in prov
            assert (row["rung"], row["epochs_trained"], row["stopped_early"]) == ("0", "1", "True"), row
        assert int(row["rank_epochs"]) == 2 * int(row["epochs_trained"])
        # the dry run showed the very command each of rung 0's array tasks ran (its folder's time aside)
        task, label, command = planned[index]
        assert int(task) == index and label == point["label"]
        shown = shlex.split(command)[1:]
        ran = ["-m", "hpccnn.train", *point["train_args"]]
        ran[ran.index("--epochs") + 1] = "1"  # the experiment's 3 epochs, rung 0's 1
        assert [a.split("/")[-1] for a in shown] == [a.split("/")[-1] for a in ran]
        assert Path(row["log"]).exists()
    assert sum(int(r["rank_epochs"]) for r in rows) == 2 * (12 * 1 + 4 * 2)  # against 2 x 12 x 3 = 72 unhalved
    # the table printed at the end, best row first
    table = proc.stdout[proc.stdout.rindex("point "):]
    assert len([line for line in table.splitlines() if re.match(r"\d\d_", line)]) == 12
    # --wait's progress, as a SLURM log holds it (stdout is a pipe here), for each rung: a line per point whose
    # state, epoch or validation accuracy changed, never a terminal's redrawn bar, nor a line repeating the one before
    assert "\r" not in proc.stdout
    for k, text, labels, target in ((0, proc.stdout[:rung_one], [p["label"] for p in record["points"]], 1),
                                    (1, proc.stdout[rung_one:], promoted, 3)):
        lines = re.findall(r"^hpccnn: \d\d:\d\d:\d\d (\S+): (\w[\w ]*), epoch (\d+)/(\d+), val_acc (\S+), "
                           r"elapsed \S+, left \S+$", text, re.M)
        seen = {}
        for label, state, epoch, of, val in lines:
            seen.setdefault(label, []).append((state, epoch, val))
            assert of == str(target), (k, label, state, epoch, of)
        assert sorted(seen) == sorted(labels), (k, text[:3000])
        for label in labels:
            changes = seen[label]
            assert all(a != b for a, b in zip(changes, changes[1:])), changes
            states = [state for state, _, _ in changes]  # e.g. pending, running (epoch 0, then 1), completed
            assert "completed" not in states[:-1] and not ({"pending", "running"} <= set(states) and
                                                            max(i for i, s in enumerate(states) if s == "pending") >
                                                            states.index("running")), changes
            with open(folder / label / "history.csv") as f:
                history = list(csv.DictReader(f))
            assert changes[-1][:2] == ("completed", str(target))
            assert float(changes[-1][2]) == pytest.approx(float(history[target - 1]["val_accuracy"]), abs=6e-5)
        if k == 0:  # 12 points of 2 ranks on a 2-core node run a few at a time: some were seen waiting first
            assert any(changes[0][0] == "pending" for changes in seen.values()), seen


@pytest.mark.mpi
@pytest.mark.slow
def test_a_failing_point_is_failed_in_grid_csv_and_in_the_exit_status(slurm_env, tmp_path):
    results = tmp_path / "results"
    # batch 4000 is more than digits' 1,149 training images: that point fails at run time, in the job
    proc = run_module("hpccnn.submit", "--experiment", "digits_cnn", "--sweep", "batch-size=32,4000", "--epochs", "1",
                      "--results-dir", results, "--no-save-model", "--wait", *SMALL, env=slurm_env, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = read_grid(grid_folder(results))
    assert [r["status"] for r in rows] == ["completed", "failed"]
    failed = rows[1]
    assert "batch of 2000 per rank is larger" in failed["reason"]
    assert "batch of 2000 per rank is larger" in Path(failed["log"]).read_text()
    assert failed["log"] in proc.stderr


@pytest.mark.mpi
@pytest.mark.slow
def test_without_wait_a_collector_job_writes_grid_csv_after_the_array(slurm_env, tmp_path):
    results = tmp_path / "results"
    proc = run_module("hpccnn.submit", "--experiment", "digits_cnn", "--epochs", "1", "--results-dir", results,
                      "--no-save-model", *SMALL, env=slurm_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    collector = re.search(r"written by job (\d+)", proc.stdout).group(1)
    assert wait_for(slurm_env, collector, timeout=600) == "COMPLETED"
    (row,) = read_grid(grid_folder(results))
    assert row["status"] == "completed" and row["world_size"] == "2"


@pytest.mark.mpi
@pytest.mark.slow
def test_status_shows_a_running_grid_and_resubmit_resumes_the_point_that_was_cancelled(slurm_env, tmp_path,
                                                                                     monkeypatch):
    from hpccnn.launching import status
    from hpccnn.launching.record import read_record

    for key, value in slurm_env.items():  # this process reads SLURM's states too (status.point_rows)
        monkeypatch.setenv(key, value)
    results = tmp_path / "results"
    proc = run_module("hpccnn.submit", "--experiment", "digits_cnn", "--sweep", "seed=0,1", "--epochs", "20",
                      "--results-dir", results, "--no-save-model", *SMALL, env=slurm_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    folder = grid_folder(results)
    seen, shown, cancelled_after, deadline = set(), None, None, time.time() + 300
    while time.time() < deadline and cancelled_after is None:
        rows = {p["point"]: p for p in map(status.progress, status.point_rows(read_record(folder)))}
        first, second = rows["00_0"], rows["01_1"]
        seen.add((first["status"], second["status"]))
        if first["status"] == "running" and 1 <= first["epoch"] < 15 and shown is None:
            shown = run_module("hpccnn.submit", "--status", folder, env=slurm_env, timeout=120)
        if second["status"] == "running" and second["epoch"] >= 2:  # it has a checkpoint: cancel it now
            job = read_record(folder)["points"][1]["job_id"]
            subprocess.run(["scancel", job], env=slurm_env, check=True, timeout=30)
            cancelled_after = second["epoch"]
        time.sleep(0.5)
    assert cancelled_after is not None, seen
    # --status while the grid ran: the first point running, some epochs of 20 done, an estimate of what is left
    assert shown is not None and shown.returncode == 0, seen
    line = next(x for x in shown.stdout.splitlines() if x.startswith("00_0 "))
    epoch, left = re.search(r"running\s+(\d+)/20\s+0\.\d{4}\s+\S+\s+(\S+)", line).groups()
    assert 1 <= int(epoch) < 20 and re.fullmatch(r"(\d+m)?\d+s", left), shown.stdout
    collector = re.search(r"written by job (\d+)", proc.stdout).group(1)
    assert wait_for(slurm_env, collector, timeout=600) == "COMPLETED"

    after = run_module("hpccnn.submit", "--status", folder, env=slurm_env, timeout=120)
    assert re.search(r"^00_0\s+completed\s+20/20\s+0\.\d{4}\s+\S+\s+0s", after.stdout, re.M), after.stdout
    assert re.search(r"^01_1\s+failed\s+(\d+)/20 .*(SIGTERM|CANCELLED)", after.stdout, re.M), after.stdout
    assert "2 point(s): 1 completed, 1 failed" in after.stdout

    again = run_module("hpccnn.submit", "--resubmit", folder, "--wait", "--time-min", "14", env=slurm_env, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resubmitting 1 of 2 point(s)" in again.stdout and "01_1" in again.stdout
    # the resources given with --resubmit win over those the grid was submitted with; the others stay
    job = read_json(folder / "grid.json")["points"][1]["job_id"].split("_")[0]
    script = (folder / "submitit" / f"{job}_submission.sh").read_text()
    assert "#SBATCH --time=14" in script and "#SBATCH --cpus-per-task=1" in script, script
    assert [r["status"] for r in read_grid(folder)] == ["completed", "completed"]  # the grid as a whole
    run = folder / "01_1"
    with open(run / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, 21))  # every epoch once, continuing
    resumed = read_json(run / "provenance.json")["resumes"][-1]
    assert resumed["after_epoch"] >= cancelled_after and "--resume" in resumed["command"]
    point = read_json(folder / "grid.json")["points"][1]
    assert point["attempts"][0]["job_id"] != point["job_id"]
    nothing = run_module("hpccnn.submit", "--resubmit", folder, env=slurm_env, timeout=120)
    assert nothing.returncode == 0 and nothing.stdout.strip().count("\n") == 0
    assert nothing.stdout.startswith("hpccnn: nothing to resubmit")


@pytest.mark.mpi
@pytest.mark.slow
def test_array_template_runs_grid_points_and_collects(slurm_env, tmp_path):
    results = tmp_path / "results"
    job = sbatch(dict(slurm_env, DATASET="digits", EPOCHS="1", RESULTS_DIR=str(results)), "slurm/grid_array.sbatch",
                 "--export=ALL", "--array=0-1", "--cpus-per-task=1", "--mem=3G", "--time=15",
                 f"--output={tmp_path}/slurm-%A_%a.out", args=["--no-save-model"])
    for task in (0, 1):
        assert wait_for(slurm_env, f"{job}_{task}") == "COMPLETED", (tmp_path / f"slurm-{job}_{task}.out").read_text()
    folder = grid_folder(results)
    assert folder.name == f"cifar_hparams-job{job}"
    proc = run_module("hpccnn.submit", "--collect", folder, env=slurm_env, timeout=120)
    assert proc.returncode == 1  # only 2 of the 12 points were in --array
    rows = read_grid(folder)
    assert [r["status"] for r in rows] == ["completed"] * 2 + ["not run"] * 10
    for task, row in enumerate(rows[:2]):
        prov = read_json(Path(row["run_folder"]) / "provenance.json")
        assert prov["world_size"] == 2 and prov["slurm"]["SLURM_ARRAY_TASK_ID"] == str(task)
        assert Path(row["log"]) == tmp_path / f"slurm-{job}_{task}.out"


@pytest.mark.slow
@pytest.mark.parametrize("cluster, ranks", [pytest.param("local", 2, marks=pytest.mark.mpi), ("debug", 1)])
def test_local_and_debug_executors_run_and_wait(tmp_path, cluster, ranks):
    results = tmp_path / "results"
    proc = run_module("hpccnn.submit", "--experiment", "digits_cnn", "--epochs", "1", "--cluster", cluster,
                      "--results-dir", results, "--no-save-model", timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (row,) = read_grid(grid_folder(results))
    assert row["status"] == "completed" and int(row["world_size"]) == ranks
    prov = read_json(Path(row["run_folder"]) / "provenance.json")
    assert prov["launcher"] == ("horovodrun" if cluster == "local" else "python")


def test_dry_run_shows_the_sbatch_resources(tmp_path):
    results = tmp_path / "results"
    proc = run_module("hpccnn.submit", "--grid", "alexnet227_lr", "--dry-run", "--partition", "gpu", "--account",
                      "proj1", "--gpus-per-node", "2", "--ntasks-per-node", "2", "--cpus-per-task", "6",
                      "--mem-gb", "90", "--time-min", "120", "--results-dir", results, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in ["#SBATCH --array=0-2%3", "#SBATCH --partition=gpu", "#SBATCH --account=proj1",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=6",
                 "#SBATCH --mem=90GB", "#SBATCH --time=120"]:
        assert line in out.splitlines(), line
    assert re.search(r"^srun .*--mpi=pmix --kill-on-bad-exit=1 --cpus-per-task=6 ", out, re.M)
    commands = re.findall(r"^\[array task \d\] \S+: (.+)$", out, re.M)
    assert [re.search(r"--learning-rate (\S+)", c).group(1) for c in commands] == ["0.001", "0.0001", "5e-05"]
    assert all("--experiment cifar_alexnet227" in c for c in commands)
    assert "12.0 rank-hours at most" in out  # 3 points x 2 ranks x 2 h
    assert not results.exists()


@pytest.mark.parametrize("grid, given, layout", [
    ("alexnet227_lr", [], (1, 8)),  # a 233 MB gradient: one rank with all the node's cores
    ("cifar_hparams", [], (2, 4)),  # cnn_v3's 0.5 MB: two ranks gain where one can't keep 8 cores busy
    ("alexnet227_lr", ["--ntasks-per-node", "4"], (4, 2)),  # the cores shared by the ranks asked for
    ("cifar_hparams", ["--cpus-per-task", "1"], (2, 1)),
    ("alexnet227_lr", ["--gpus-per-node", "2"], (2, 4)),  # one rank per GPU
])
def test_ranks_per_node_default_by_the_models_gradient(tmp_path, grid, given, layout):
    proc = run_module("hpccnn.submit", "--grid", grid, "--dry-run", "--results-dir", tmp_path / "r", *given, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"#SBATCH --ntasks-per-node={layout[0]}" in out.splitlines()
    assert f"#SBATCH --cpus-per-task={layout[1]}" in out.splitlines()
    assert f"x {layout[0]} rank(s) x {layout[1]} core(s)" in out


def test_cifar_hparams_learning_rate_follows_the_optimizer_unless_swept(tmp_path):
    from hpccnn.models.catalog import get_grid
    from hpccnn.launching.submit import build_parser, plan

    points = get_grid("cifar_hparams").points()
    assert {(p["optimizer"], p["learning_rate"]) for p in points} == {("sgd", 0.01), ("adam", 0.001)}
    grid, resolved = plan(build_parser().parse_args(["--grid", "cifar_hparams", "--sweep", "learning-rate=0.1,0.2"]))
    assert len(resolved) == 24 and {exp.learning_rate for _, _, exp in resolved} == {0.1, 0.2}
    # a sampled learning rate replaces the optimizer's linked one, as a swept or typed one does
    _, resolved = plan(build_parser().parse_args(["--grid", "cifar_hparams", "--sample",
                                                  "learning-rate=loguniform:1e-4,1e-1", "--samples", "2"]))
    drawn = {settings["learning_rate"] for _, settings, _ in resolved}
    assert len(resolved) == 24 and len(drawn) == 2 and not drawn & {0.01, 0.001}
    assert all(exp.learning_rate == settings["learning_rate"] for _, settings, exp in resolved)


def test_dry_run_piped_into_head_ends_quietly(tmp_path):
    seeds = ",".join(map(str, range(1500)))  # far more output than a pipe holds, so writing does hit the closed pipe
    proc = subprocess.run(f"{sys.executable} -m hpccnn.submit --experiment digits_cnn --sweep seed={seeds} "
                          f"--dry-run | head -1", shell=True, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.startswith("hpccnn: digits_cnn: 1500 point(s)")
    assert proc.stderr == ""  # no BrokenPipeError traceback once head has stopped reading


def sampled(*args):
    """The (label, settings) of a dry run's points for these submit options, planned in process."""
    from hpccnn.launching.submit import build_parser, plan

    _, resolved = plan(build_parser().parse_args(["--experiment", "digits_cnn", *args]))
    return [(label, settings) for label, settings, _ in resolved]


def test_sampling_draws_the_same_points_for_the_same_seed_within_their_ranges():
    args = ["--sample", "learning-rate=loguniform:1e-4,1e-1", "--sample", "batch-size=uniform:16,256",
            "--sample", "optimizer=choice:sgd,adam,rmsprop", "--samples", "40"]
    first, again = sampled(*args), sampled(*args)
    assert first == again  # reproducible: the same options and seed give the same points, labels included
    other = sampled(*args, "--sample-seed", "1")
    assert [s for _, s in other] != [s for _, s in first]
    rates = [s["learning_rate"] for _, s in first]
    assert all(1e-4 <= r <= 1e-1 for r in rates)
    # loguniform: about a third of the draws in each decade, not most of them in the top one as uniform would
    assert sum(r < 1e-3 for r in rates) >= 5 and sum(r < 1e-2 for r in rates) >= 15
    assert all(isinstance(s["batch_size"], int) and 16 <= s["batch_size"] <= 256 for _, s in first)
    assert {s["optimizer"] for _, s in first} == {"sgd", "adam", "rmsprop"}
    assert len({label for label, _ in first}) == 40 and all(f"lr{s['learning_rate']:g}" in label for label, s in first)


def test_a_draw_rounded_to_four_digits_stays_within_its_range():
    narrow = [s["learning_rate"] for _, s in sampled("--sample", "learning-rate=uniform:0.12345,0.123456",
                                                      "--samples", "20")]
    assert all(0.12345 <= r <= 0.123456 for r in narrow), narrow  # 0.1234 and 0.1235 are both outside


def test_sampling_crosses_each_draw_with_the_sweep():
    points = sampled("--sample", "learning-rate=loguniform:1e-4,1e-1", "--samples", "3", "--sweep", "batch-size=32,64")
    assert len(points) == 6
    assert sorted((s["batch_size"], s["learning_rate"]) for _, s in points) == sorted(
        (b, s["learning_rate"]) for b in (32, 64) for _, s in points[:3])


def test_halving_rungs_survivors_and_rank_epochs():
    from hpccnn.launching import halving

    assert halving.rung_epochs(1, 3, 9) == [1, 3, 9] and halving.rung_epochs(1, 3, 10) == [1, 3, 10]
    assert halving.rung_epochs(2, 2, 8) == [2, 4, 8] and halving.rung_epochs(1, 3, 2) == [2]
    assert halving.survivors(12, 3, 3) == [12, 4, 2] and halving.survivors(10, 3, 3) == [10, 4, 2]
    assert halving.rank_epochs([12, 4, 2], [1, 3, 9], 2) == 2 * (12 * 1 + 4 * 2 + 2 * 6)
    rows = [{"point": "a", "status": "completed", "val_accuracy": 0.5, "val_loss": 1.0},
            {"point": "b", "status": "failed", "val_accuracy": 0.9, "val_loss": 0.1},  # failed: never promoted
            {"point": "c", "status": "completed", "val_accuracy": 0.5, "val_loss": 0.8},  # a tie, lower loss
            {"point": "d", "status": "completed", "val_accuracy": 0.7, "val_loss": 2.0},
            {"point": "e", "status": "completed", "val_accuracy": 0.5, "val_loss": 0.8}]  # a tie in both: order
    assert halving.promote(rows, 3) == ["d", "c", "e"]
    assert halving.promote(rows[:2], 2) == ["a"]
    no_loss = [{"point": "x", "status": "completed", "val_accuracy": 0.5, "val_loss": None},
               {"point": "y", "status": "completed", "val_accuracy": 0.5, "val_loss": 0.3}]
    assert halving.promote(no_loss, 1) == ["y"]  # a missing loss ranks below any, never a TypeError


def test_halving_dry_run_prints_the_rungs_and_rung_zeros_commands(tmp_path):
    results = tmp_path / "results"
    proc = run_module("hpccnn.submit", "--grid", "cifar_hparams", "--halving", "3", "--min-epochs", "1", "--epochs", "9",
                      "--dry-run", "--results-dir", results, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"rung 0: every point \(12\) to epoch 1\n\s+rung 1: the best 4 \(4\) to epoch 3\n"
                     r"\s+rung 2: the best 2 \(2\) to epoch 9\n", proc.stdout), proc.stdout
    assert "64 rank-epochs at most, against 216 for the whole grid" in proc.stdout  # 2 ranks x (12 + 4x2 + 2x6)
    assert "288.0 rank-hours at most (each rung" in proc.stdout  # 18 array tasks x 2 ranks x 8 h
    commands = re.findall(r"^\[array task \d+\] \S+: (.+)$", proc.stdout, re.M)
    assert len(commands) == 12 and all("--epochs 1 " in c and "--epochs 9" not in c for c in commands)
    assert not results.exists()


@pytest.mark.slow
def test_halving_on_the_debug_cluster_resumes_the_best_and_stops_the_rest(tmp_path):
    import pandas as pd

    results = tmp_path / "results"
    proc = run_module("hpccnn.submit", "--experiment", "digits_cnn", "--sweep", "seed=0,1,2", "--sweep",
                      "learning-rate=1e-3,1e-5", "--epochs", "3", "--halving", "3", "--cluster", "debug",
                      "--results-dir", results, "--no-save-model", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = grid_folder(results)
    assert proc.stdout.index("rung 0: 6 point(s) to epoch 1") < proc.stdout.index("rung 1: 2 point(s) to epoch 3")
    record = read_json(folder / "grid.json")
    (first, second) = record["halving"]["rungs"]
    assert len(first["points"]) == 6 and first["promoted"] == second["points"] and len(second["points"]) == 2
    # the promoted are rung 0's best by validation accuracy after its one epoch
    after_one = {label: pd.read_csv(folder / label / "history.csv").iloc[0]["val_accuracy"] for label in first["points"]}
    assert sorted(after_one.values())[-2:] == sorted(after_one[label] for label in second["points"])
    grid = pd.read_csv(folder / "grid.csv")
    assert (grid["status"] == "completed").all()
    for _, row in grid.iterrows():
        history = pd.read_csv(Path(row["run_folder"]) / "history.csv")
        promoted = row["point"] in second["points"]
        assert list(history["epoch"]) == ([1, 2, 3] if promoted else [1])  # each epoch once, continuing
        assert (row["rung"], row["epochs_trained"], bool(row["stopped_early"])) == ((1, 3, False) if promoted
                                                                                   else (0, 1, True))
        assert read_json(Path(row["run_folder"]) / "config.json")["epochs"] == row["epochs_trained"]
        # a promoted point's training time is that of both its rungs, not of the last one alone
        assert row["wall_seconds"] >= history["epoch_seconds"].sum()
    assert grid["rank_epochs"].sum() == 4 * 1 + 2 * 3  # one rank: 4 points stopped after 1 epoch, 2 trained to 3
    # the grid report shows the rungs: who was promoted, who stopped where, and the rank-epochs
    report = run_module("hpccnn.report", folder, "--no-reevaluate", timeout=300)
    assert report.returncode == 0, report.stderr
    md = (folder / "report.md").read_text()
    stopped = [p for p in first["points"] if p not in second["points"]]
    assert f"| 0 | 1 | 6 | {', '.join(first['promoted'])} | {', '.join(stopped)} |" in md, md[:3000]
    assert "| 1 | 3 | 2 | (the last rung) | - |" in md and "10 rank-epochs trained, against 18" in md
    best = md.split("| ★ | ")[1].split(" |")[0]
    assert best in second["points"]  # the best row is one trained to the end


@pytest.mark.mpi
@pytest.mark.slow
def test_halving_a_sampled_set_on_the_local_cluster_promotes_under_horovodrun(tmp_path):
    import pandas as pd

    results = tmp_path / "results"
    proc = run_module("hpccnn.submit", "--experiment", "digits_cnn", "--sample", "learning-rate=loguniform:1e-4,1e-2",
                      "--samples", "2", "--epochs", "2", "--halving", "2", "--cluster", "local", "--ntasks-per-node",
                      "1", "--results-dir", results, "--no-save-model", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = grid_folder(results)
    record = read_json(folder / "grid.json")
    assert record["sampled"]["samples"] == 2 and len(record["points"]) == 2
    (first, second) = record["halving"]["rungs"]
    after_one = [{"point": p, "status": "completed", **pd.read_csv(folder / p / "history.csv").iloc[0][
        ["val_accuracy", "val_loss"]].to_dict()} for p in first["points"]]
    from hpccnn.launching import halving

    assert second["points"] == halving.promote(after_one, 1)
    grid = pd.read_csv(folder / "grid.csv")
    assert (grid["status"] == "completed").all() and grid["learning_rate"].between(1e-4, 1e-2).all()
    assert sorted(grid["epochs_trained"]) == [1, 2]
    (promoted,) = second["points"]
    assert pd.read_csv(folder / promoted / "history.csv")["epoch"].tolist() == [1, 2]
    prov = read_json(folder / promoted / "provenance.json")
    assert prov["launcher"] == "horovodrun" and "--resume" in prov["resumes"][-1]["command"]


@pytest.mark.slow
def test_status_of_a_debug_grid_while_it_runs_shows_running_and_pending_never_failed(tmp_path):
    results = tmp_path / "results"
    grid = subprocess.Popen([sys.executable, "-m", "hpccnn.submit", "--experiment", "digits_cnn", "--sweep",
                             "seed=0,1", "--epochs", "4", "--cluster", "debug", "--results-dir", str(results),
                             "--no-save-model"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, refused = set(), ""
    try:
        deadline = time.time() + 600
        while grid.poll() is None and time.time() < deadline:
            folders = list(results.glob("*/*/grid.json"))
            if folders:
                proc = run_module("hpccnn.submit", "--status", folders[0].parent, timeout=60)
                assert proc.returncode == 0, proc.stderr
                rows = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()
                        if line.startswith(("00_", "01_"))}
                assert "failed" not in rows.values() and "not" not in rows.values(), proc.stdout  # not run
                seen.add(tuple(sorted(rows.items())))
                if rows.get("00_0") == "running" and not refused:
                    from hpccnn.launching.submit import main

                    refused = refusal(main, "--resubmit", folders[0].parent)
            time.sleep(1)
        out = grid.communicate(timeout=60)[0]
    finally:
        grid.kill()
    assert grid.returncode == 0, out[-3000:]
    assert (("00_0", "running"), ("01_1", "pending")) in seen, seen  # the first point trains, the second waits
    assert "still pending or running" in refused
    final = run_module("hpccnn.submit", "--status", grid_folder(results), timeout=60).stdout
    assert "2 point(s): 2 completed" in final, final


def test_a_local_grid_whose_submitting_process_died_shows_its_points_failed_and_not_run(tmp_path):
    from hpccnn.launching.status import driver, point_rows

    dead = subprocess.Popen(["true"])
    dead.wait()
    points = [{"label": label, "settings": {}, "run_dir": str(tmp_path / label), "state": state}
              for label, state in (("a", "RUNNING"), ("b", "PENDING"), ("c", "COMPLETED"))]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.json").write_text('{"status": "running", "last_epoch": 1}')
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.json").write_text('{"status": "completed", "last_epoch": 2}')
    alive = {"cluster": "debug", "driver": driver(), "points": [dict(p) for p in points]}
    assert [r["status"] for r in point_rows(alive)] == ["running", "pending", "completed"]
    gone = {"cluster": "local", "driver": {**driver(), "pid": dead.pid}, "points": [dict(p) for p in points]}
    rows = point_rows(gone)
    assert [r["status"] for r in rows] == ["failed", "not run", "completed"]
    assert all("ended before the point" in r["reason"] for r in rows[:2]), rows


@pytest.mark.slow
def test_a_later_rung_that_fails_to_start_keeps_the_earlier_rungs_results(tmp_path):
    """The submission of rung 1 fails here by an injected error (sbatch down, say, which this machine
    can't produce on demand); rung 0 trains for real, in a process of its own (the debug cluster trains
    in the submitting process, and TensorFlow's threads can be set only once per process)."""
    results = tmp_path / "results"
    code = textwrap.dedent(f"""
        import sys
        from hpccnn.launching import halving, submit
        real, calls = halving.run_points, []
        def run_points(*args):
            calls.append(args)
            if len(calls) == 2:
                raise RuntimeError("sbatch: error: Batch job submission failed")
            return real(*args)
        halving.run_points = run_points  # the rungs' submissions
        submit.main(["--experiment", "digits_cnn", "--sweep", "seed=0,1", "--epochs", "3", "--halving", "2",
                     "--cluster", "debug", "--results-dir", {str(results)!r}, "--no-save-model"])
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode != 0 and "Batch job submission failed" in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "rung 0: 2 point(s) to epoch 1" in proc.stdout
    folder = grid_folder(results)
    for label in ("00_0", "01_1"):
        assert read_json(folder / label / "metrics.json")["status"] == "completed"


@pytest.mark.mpi
@pytest.mark.slow
def test_halving_through_slurm_without_wait_runs_every_rung_by_its_own_jobs(slurm_env, tmp_path):
    import pandas as pd

    results = tmp_path / "results"
    proc = run_module("hpccnn.submit", "--experiment", "digits_cnn", "--sweep", "seed=0,1,2", "--epochs", "3",
                      "--halving", "3", "--results-dir", results, "--no-save-model", *SMALL, env=slurm_env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    advance = re.search(r"job (\d+) starts rung 1 when rung 0 has ended", proc.stdout).group(1)
    assert wait_for(slurm_env, advance, timeout=600) == "COMPLETED"  # it promoted and submitted rung 1
    folder = grid_folder(results)
    record = read_json(folder / "grid.json")
    (first, second) = record["halving"]["rungs"]
    (promoted,) = second["points"]
    job = next(p["job_id"] for p in record["points"] if p["label"] == promoted)
    assert job.split("_")[0] != record["points"][0]["job_id"].split("_")[0]  # rung 1 is an array of its own
    assert wait_for(slurm_env, job, timeout=600) == "COMPLETED"
    deadline = time.time() + 300  # then rung 1's collector writes grid.csv
    while not (folder / "grid.csv").exists() and time.time() < deadline:
        time.sleep(2)
    grid = pd.read_csv(folder / "grid.csv")
    assert (grid["status"] == "completed").all() and grid["world_size"].tolist() == [2, 2, 2]
    assert grid.set_index("point")["epochs_trained"].to_dict() == {p: 3 if p == promoted else 1 for p in first["points"]}
    assert grid["rank_epochs"].sum() == 2 * (2 * 1 + 3)
    history = pd.read_csv(folder / promoted / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]


def halving_with_the_next_rung_held(slurm_env, tmp_path, seeds, epochs, halving):
    """A halving grid of digits_cnn over the seeds submitted, the job that starts rung 1 held (scontrol hold):
    (that job's id, the grid's folder)."""
    results = tmp_path / "results"
    proc = run_module("hpccnn.submit", "--experiment", "digits_cnn", "--sweep", f"seed={seeds}", "--epochs", epochs,
                      "--halving", halving, "--results-dir", results, "--no-save-model", *SMALL, env=slurm_env,
                      timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    advance = re.search(r"job (\d+) starts rung 1", proc.stdout).group(1)
    subprocess.run(["scontrol", "hold", advance], env=slurm_env, check=True, timeout=30)
    return advance, grid_folder(results)


@pytest.mark.mpi
@pytest.mark.slow
def test_resubmitting_a_halving_grid_reruns_its_rungs_failed_point_to_the_rungs_epochs_and_goes_on(slurm_env,
                                                                                                   tmp_path):
    import pandas as pd

    advance, folder = halving_with_the_next_rung_held(slurm_env, tmp_path, seeds="0,1,2", epochs=3, halving=3)
    jobs = [p["job_id"] for p in read_json(folder / "grid.json")["points"]]
    subprocess.run(["scancel", jobs[2]], env=slurm_env, check=True, timeout=30)  # rung 0's third point fails
    wait_for(slurm_env, jobs[0].split("_")[0], timeout=600)  # the array (SLURM forgets a task cancelled pending)
    refused = run_module("hpccnn.submit", "--resubmit", folder, env=slurm_env, timeout=120)
    assert refused.returncode == 2 and f"job {advance}, which starts the next rung" in refused.stderr, refused.stderr
    subprocess.run(["scancel", advance], env=slurm_env, check=True, timeout=30)
    wait_for(slurm_env, advance, timeout=120)

    again = run_module("hpccnn.submit", "--resubmit", folder, "--wait", env=slurm_env, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resubmitting 1 of 3 point(s)" in again.stdout and "(rung 0, to epoch 1): 02_2" in again.stdout
    record = read_json(folder / "grid.json")
    (first, second) = record["halving"]["rungs"]
    assert len(second["points"]) == 1 and second["points"] == first["promoted"]
    grid = pd.read_csv(folder / "grid.csv")
    assert (grid["status"] == "completed").all(), grid
    trained = grid.set_index("point")["epochs_trained"].to_dict()
    assert trained == {p: 3 if p in second["points"] else 1 for p in first["points"]}  # 02_2 trained to rung 0's 1
    # the promoted point is the best of all three after one epoch, the resubmitted one included
    after_one = {p: pd.read_csv(folder / p / "history.csv").iloc[0]["val_accuracy"] for p in first["points"]}
    assert after_one[second["points"][0]] == max(after_one.values())
    nothing = run_module("hpccnn.submit", "--resubmit", folder, env=slurm_env, timeout=120)
    assert "nothing to resubmit" in nothing.stdout and "stopped early by the halving" in nothing.stdout


@pytest.mark.mpi
@pytest.mark.slow
def test_a_rung_that_sbatch_refuses_is_recorded_and_resubmit_starts_it_with_the_resources_given(slurm_env, tmp_path):
    """Between the rungs the grid's partition goes away (here: grid.json edited while the Advance job is held,
    as an administrator renaming a partition would); sbatch's refusal is real."""
    import pandas as pd

    advance, folder = halving_with_the_next_rung_held(slurm_env, tmp_path, seeds="0,1", epochs=2, halving=2)
    record = read_json(folder / "grid.json")
    record["resources"]["partition"] = "gone"
    (folder / "grid.json").write_text(json.dumps(record))
    subprocess.run(["scontrol", "release", advance], env=slurm_env, check=True, timeout=30)
    assert wait_for(slurm_env, advance, timeout=600) == "FAILED"
    error = read_json(folder / "grid.json")["halving"]["error"]
    assert error.startswith("rung 1 could not be submitted:") and "partition" in error.lower(), error
    grid = pd.read_csv(folder / "grid.csv")  # what ran is summed up
    assert (grid["status"] == "completed").all() and (grid["epochs_trained"] == 1).all()
    shown = run_module("hpccnn.submit", "--status", folder, env=slurm_env, timeout=120)
    assert "the halving stopped: rung 1 could not be submitted" in shown.stdout, shown.stdout

    again = run_module("hpccnn.submit", "--resubmit", folder, "--partition", "debug", "--wait", env=slurm_env,
                       timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "starting rung 1" in again.stdout
    grid = pd.read_csv(folder / "grid.csv")
    assert (grid["status"] == "completed").all() and sorted(grid["epochs_trained"]) == [1, 2]
    assert "error" not in read_json(folder / "grid.json")["halving"]


@pytest.mark.mpi
@pytest.mark.slow
def test_a_point_preempted_in_a_rung_resumes_within_it_and_the_next_rung_waits_for_it(slurm_env, tmp_path):
    """Rung 0 to epoch 3: its first point gets SLURM's warning signal after an epoch (as --signal before a
    time limit or preemption sends it), requeues itself and resumes; the job that starts rung 1 waits for it."""
    import pandas as pd

    results = tmp_path / "results"
    proc = run_module("hpccnn.submit", "--experiment", "digits_cnn", "--image-size", "32", "--sweep", "seed=0,1",
                      "--epochs", "6", "--halving", "2", "--min-epochs", "3", "--results-dir", results,
                      "--no-save-model", *SMALL, env=slurm_env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    advance = re.search(r"job (\d+) starts rung 1", proc.stdout).group(1)
    folder = grid_folder(results)
    job = read_json(folder / "grid.json")["points"][0]["job_id"]
    deadline = time.time() + 300
    from hpccnn.common.files import read_json as read_if_there

    while (read_if_there(folder / "00_0" / "metrics.json") or {}).get("last_epoch", 0) < 1 and time.time() < deadline:
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, env=slurm_env, timeout=30)
    assert wait_for(slurm_env, advance, timeout=900) == "COMPLETED"
    record = read_json(folder / "grid.json")
    (first, second) = record["halving"]["rungs"]
    history = pd.read_csv(folder / "00_0" / "history.csv")
    assert job_field(slurm_env, job, "Restarts") == "1"  # it was requeued, and resumed
    assert read_json(folder / "00_0" / "metrics.json")["resumes"] >= 1
    # the Advance job promoted from both points' finished rung: 00_0 had its three epochs, once each
    assert history["epoch"].tolist()[:3] == [1, 2, 3]
    from hpccnn.launching import halving

    at_three = [{"point": p, "status": "completed", **pd.read_csv(folder / p / "history.csv").iloc[2][
        ["val_accuracy", "val_loss"]].to_dict()} for p in ("00_0", "01_1")]
    assert second["points"] == halving.promote(at_three, 1), (at_three, second)
    later = next(p["job_id"] for p in record["points"] if p["label"] == second["points"][0])
    assert wait_for(slurm_env, later, timeout=600) == "COMPLETED"


BAD_SUBMITS = [
    (["--resubmit", "somewhere", "--dry-run"], "--resubmit has no --dry-run"),
    (["--resubmit", "somewhere", "--epochs", "30"], "--resubmit takes resource options only, not --epochs"),
    (["--resubmit", "somewhere", "--sweep", "seed=1,2"], "--resubmit takes resource options only, not --sweep"),
    (["--experiment", "digits_cnn", "--halving", "1"], "--halving must be 2 or more"),
    (["--experiment", "digits_cnn", "--min-epochs", "2"], "--min-epochs goes with --halving ETA"),
    (["--experiment", "digits_cnn", "--halving", "3", "--min-epochs", "0"], "--min-epochs must be a positive"),
    (["--experiment", "digits_cnn", "--halving", "3", "--epochs", "2"],
     "--halving 3 --min-epochs 1 leaves one rung of 2 epoch(s): nothing to stop early"),
    (["--experiment", "digits_cnn", "--halving", "3", "--sweep", "epochs=3,9"], "don't sweep --epochs"),

    (["--experiment", "digits_cnn", "--sample", "learning-rate=normal:0,1", "--samples", "2"],
     "--sample 'learning-rate=normal:0,1': after SETTING= write one of loguniform:LOW,HIGH"),
    (["--experiment", "digits_cnn", "--sample", "learning-rate=loguniform:0,1", "--samples", "2"],
     "--sample 'learning-rate=loguniform:0,1' must be loguniform:LOW,HIGH (0 < LOW < HIGH"),
    (["--experiment", "digits_cnn", "--sample", "learning-rate=uniform:0.5,0.1", "--samples", "2"],
     "must be uniform:LOW,HIGH (LOW < HIGH)"),
    (["--experiment", "digits_cnn", "--sample", "activation=uniform:1,2", "--samples", "2"],
     "--activation takes str values; use choice:A,B"),
    (["--experiment", "digits_cnn", "--sample", "optimizer=choice:sgd,nope", "--samples", "2"],
     "--optimizer must be one of"),
    (["--experiment", "digits_cnn", "--sample", "learning-rate=uniform:x,1", "--samples", "2"],
     "--learning-rate must be float, got 'x'"),
    (["--experiment", "digits_cnn", "--sample", "learning-rate=uniform:0.1,1"], "--sample and --samples N go together"),
    (["--experiment", "digits_cnn", "--samples", "3"], "--sample and --samples N go together"),
    (["--experiment", "digits_cnn", "--sample", "seed=choice:1,2", "--samples", "0"], "--samples must be a positive"),
    (["--grid", "cifar_hparams", "--sample", "optimizer=choice:sgd", "--samples", "2"],
     "--optimizer is sampled by --sample; it can't also be swept or set"),

    (["--grid", "nope"], "unknown grid 'nope'; built in: cifar_hparams, alexnet227_lr"),
    (["--grid", "cifar_hparams", "--optimizer", "adam"], "--optimizer is swept by grid 'cifar_hparams'"),
    (["--experiment", "digits_cnn", "--sweep", "batch-size"], "--sweep wants SETTING=VALUE1,VALUE2"),
    (["--experiment", "digits_cnn", "--sweep", "batch-size=32,x"], "--batch-size must be int, got 'x'"),
    (["--experiment", "digits_cnn", "--sweep", "colour=1,2"], "unknown setting 'colour'"),
    (["--experiment", "digits_cnn", "--sweep", "epochs=1,0"], "--epochs must be a positive integer, got 0"),
    (["--experiment", "digits_cnn", "--cpus-per-task", "0"], "--cpus-per-task must be a positive integer"),
    (["--experiment", "digits_cnn", "--partition", "gpu;rm -rf ~"], "is not a SLURM partition name"),
    (["--experiment", "nope"], "unknown experiment 'nope'"),
    (["--grid", "cifar_hparams", "--experiment", "digits_cnn"], "not allowed with argument"),
]


@pytest.mark.parametrize("args, message", BAD_SUBMITS)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, args, message):
    from hpccnn.launching import submit

    results = tmp_path / "results"
    assert message in refusal(submit.main, *args, "--results-dir", results)
    assert not results.exists()


def test_bad_input_is_one_line_and_exit_2_and_writes_nothing(tmp_path):
    args, message = BAD_SUBMITS[0]
    results = tmp_path / "results"
    proc = run_module("hpccnn.submit", *args, "--results-dir", results, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not results.exists()


def test_no_sbatch_on_path_says_use_local(tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    proc = run_module("hpccnn.submit", "--experiment", "digits_cnn", "--results-dir", tmp_path / "r", env=env)
    assert proc.returncode == 2 and "sbatch is not on PATH" in proc.stderr and "--cluster local" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_grid_larger_than_max_array_size_is_refused(slurm_env, tmp_path):
    seeds = ",".join(str(i) for i in range(1002))  # scripts/local_slurm.sh sets MaxArraySize=1001
    proc = run_module("hpccnn.submit", "--experiment", "digits_cnn", "--sweep", f"seed={seeds}",
                      "--results-dir", tmp_path / "r", env=slurm_env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "1002 points exceed this cluster's MaxArraySize of 1001" in proc.stderr, proc.stderr
    assert not (tmp_path / "r").exists()


# How SLURM's own output reads, and how a point's status is decided from it.

def test_job_states_parse_sacct_and_scontrol_output():
    sacct = "40_0|COMPLETED\n40_1|FAILED\n40_2|CANCELLED by 0\n40_[3-5%2]|PENDING\n41|RUNNING\n"
    assert slurm.parse_sacct(sacct) == {"40_0": "COMPLETED", "40_1": "FAILED", "40_2": "CANCELLED",
                                        "40_3": "PENDING", "40_4": "PENDING", "40_5": "PENDING", "41": "RUNNING"}
    scontrol = ("JobId=42 ArrayJobId=40 ArrayTaskId=0 JobName=x JobState=TIMEOUT Reason=TimeLimit\n"
                "JobId=40 ArrayJobId=40 ArrayTaskId=1-3,5 JobName=x JobState=PENDING Reason=Resources\n"
                "JobId=50 JobName=y JobState=COMPLETED Reason=None\n")
    assert slurm.parse_scontrol(scontrol) == {"40_0": "TIMEOUT", "40_1": "PENDING", "40_2": "PENDING",
                                              "40_3": "PENDING", "40_5": "PENDING", "50": "COMPLETED"}


@pytest.mark.parametrize("metrics, state, status, reason", [
    ({"status": "completed", "test_accuracy": 0.9}, "COMPLETED", "completed", ""),
    ({"status": "completed", "test_accuracy": 0.9}, "FAILED", "failed", "job ended FAILED although rank 0 finished"),
    ({"status": "running", "last_epoch": 3}, "TIMEOUT", "failed", "job ended TIMEOUT"),
    ({"status": "running", "last_epoch": 3}, "RUNNING", "running", ""),
    ({"status": "failed", "reason": "ValueError: x"}, "FAILED", "failed", "ValueError: x"),
    (None, "PENDING", "pending", ""),
    (None, "NODE_FAIL", "failed", "job ended NODE_FAIL"),
    (None, None, "not run", "no job ran this point"),
    # its latest job (resubmitted, promoted to a later rung, requeued) is queued: what SLURM says wins
    ({"status": "failed", "reason": "stopped by SIGTERM"}, "PENDING", "pending", ""),
    ({"status": "completed", "test_accuracy": 0.9}, "RUNNING", "running", ""),
])
def test_point_status_combines_metrics_and_slurm_state(tmp_path, metrics, state, status, reason):
    import json

    run = tmp_path / "00_x"
    if metrics is not None:
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps(metrics))
    row = point_row({"label": "00_x", "settings": {"epochs": 1}, "run_dir": str(run)}, state)
    assert row["status"] == status and row["reason"].startswith(reason), row
