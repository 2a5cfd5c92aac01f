"""The console command hpccnn (pyproject's [project.scripts]): hpccnn train ... is python -m hpccnn.train ..., and
so for submit, stage, report and bench; and the --help of each ends with an example line and the docs file."""

import importlib
import shlex
import sys
from pathlib import Path

import pytest

from conftest import ROOT, read_json, run_folders, run_to_end
from hpccnn.launching.launch import mpi_env

HPCCNN = Path(sys.executable).with_name("hpccnn")  # the console script pip installs beside the venv's python
COMMANDS = {"train": ("hpccnn.training.train", "docs/running.md"),  # the command: (its module, its docs file)
            "submit": ("hpccnn.launching.submit", "docs/slurm.md"),
            "stage": ("hpccnn.data.stage", "docs/data.md"),
            "report": ("hpccnn.reports.report", "docs/results.md"),
            "bench": ("hpccnn.benchmark.bench", "docs/performance.md")}


def hpccnn(*args, timeout=120):
    assert HPCCNN.is_file(), f"{HPCCNN} missing: pip install -e . (the README's set-up) installs it"
    return run_to_end([str(HPCCNN), *map(str, args)], timeout=timeout)


def python_m(module, *args, timeout=120):
    return run_to_end([sys.executable, "-m", module, *args], timeout=timeout)


def example_and_docs(help_text: str) -> tuple:
    """The last two lines of a --help: (the example command, the docs file)."""
    *_, example, docs = help_text.rstrip("\n").splitlines()
    assert example.startswith("example: ") and docs.startswith("docs: "), help_text[-500:]
    return example.removeprefix("example: "), docs.removeprefix("docs: ")


@pytest.mark.parametrize("args", [["--help"], ["-h"], []], ids=["--help", "-h", "bare"])
def test_hpccnn_alone_lists_the_five_commands(args):
    proc = hpccnn(*args)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS), proc.stdout
    assert proc.stdout.startswith("usage: hpccnn COMMAND")


def test_hpccnn_train_help_is_trains_own_named_hpccnn_train():
    proc = hpccnn("train", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: hpccnn train ")
    for option in ("--experiment", "--list", "--results-dir", "--epochs", "--steps-per-epoch", "--model", "--dataset"):
        assert option in proc.stdout
    example, docs = example_and_docs(proc.stdout)
    assert example.startswith("python -m hpccnn.train ") and docs == "docs/running.md"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_help_ends_with_an_example_and_a_docs_file_that_exists(command):
    proc = python_m(f"hpccnn.{command}", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m hpccnn.{command} ")  # not hpccnn COMMAND: that is cli's
    example, docs = example_and_docs(proc.stdout)
    assert docs == COMMANDS[command][1] and (ROOT / docs).is_file()
    # the python -m form, which reads right typed either way; and its arguments parse
    words = shlex.split(example)
    assert words[:3] == ["python", "-m", f"hpccnn.{command}"], example
    importlib.import_module(COMMANDS[command][0]).build_parser().parse_args(words[3:])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_build_parser_that_runs_nothing(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = importlib.import_module(COMMANDS[command][0]).build_parser()
    assert parser.prog == f"python -m hpccnn.{command}"
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_command_is_one_line_and_exit_2():
    proc = hpccnn("nope")
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("hpccnn: error: unknown command 'nope'")
    assert all(name in line for name in COMMANDS), line


def test_a_commands_usage_error_names_it_as_typed():
    proc = hpccnn("submit")
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith("hpccnn: error: one of the arguments --grid") and line.endswith("(see hpccnn submit --help)")


def test_the_console_command_names_itself_then_puts_the_name_and_argv_back(capsys):
    from hpccnn import cli
    from hpccnn.training import train

    argv = sys.argv
    with pytest.raises(SystemExit) as end:
        cli.main(["train", "--help"])
    assert end.value.code == 0 and capsys.readouterr().out.startswith("usage: hpccnn train ")
    assert sys.argv is argv
    assert train.build_parser().prog == "python -m hpccnn.train"


@pytest.mark.slow
def test_hpccnn_train_trains_and_writes_a_run_folder(tmp_path):
    results = tmp_path / "results"
    command = [str(HPCCNN), "train", "--experiment", "digits_cnn", "--epochs", "1", "--steps-per-epoch", "2",
               "--results-dir", str(results)]
    proc = run_to_end(command, timeout=600, env=mpi_env())  # the environment run_module gives python -m hpccnn.train
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_folders(results)
    assert folder.name.startswith("digits_cnn-") and f"results in {folder}" in proc.stdout
    metrics, config = read_json(folder / "metrics.json"), read_json(folder / "config.json")
    assert metrics["status"] == "completed" and config["epochs"] == 1 and config["steps_per_epoch"] == 2
    # recorded as the python -m form, which runs the same anywhere hpccnn is importable
    assert "-m hpccnn.train --experiment digits_cnn --epochs 1" in read_json(folder / "provenance.json")["command"]
