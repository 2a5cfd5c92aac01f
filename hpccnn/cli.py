"""hpccnn COMMAND ...: the console command (pyproject's [project.scripts]), one name for the five commands.

``hpccnn train ...`` is ``python -m hpccnn.train ...``, and so for submit, stage, report and bench: the rest of the
command line goes unchanged to that command's main, whose usage, --help and errors then name it ``hpccnn train``.
The ``python -m hpccnn.X`` forms stay what the SLURM templates and the docs use.
"""

import sys

from hpccnn.benchmark import bench
from hpccnn.common.errors import COMMAND_FORM, UserError, cli
from hpccnn.data import stage
from hpccnn.launching import submit
from hpccnn.reports import report
from hpccnn.training import train

COMMANDS = {"train": train, "submit": submit, "stage": stage, "report": report, "bench": bench}


def summary(module) -> str:
    """A command's line in hpccnn --help: the first line of its docstring, after 'python -m hpccnn.X ...: '."""
    first = module.__doc__.split("\n\n")[0].replace("\n", " ")
    return first.partition(": ")[2] or first


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "\n".join([
        "usage: hpccnn COMMAND [ARGUMENTS ...]",
        "",
        "Keras CNNs trained data-parallel with Horovod over MPI, on a workstation or a SLURM cluster.",
        "",
        "commands:",
        *(f"  {name:{width}}  {summary(module)}" for name, module in COMMANDS.items()),
        "",
        "hpccnn COMMAND --help shows a command's options; hpccnn COMMAND is python -m hpccnn.COMMAND.",
        "",
        "example: hpccnn train --experiment digits_cnn --epochs 5",
        "docs: README.md",
    ])


def run(name: str, argv: list) -> int:
    """The command's main on argv, as python -m hpccnn.NAME would run it (sys.argv[1:] is argv, for what reads
    it, such as the command a grid records), its usage and errors naming it ``hpccnn NAME``."""
    saved_argv, form = sys.argv, COMMAND_FORM.set("hpccnn {}")
    sys.argv = [sys.argv[0], *argv]
    try:
        return COMMANDS[name].main(argv)
    finally:
        sys.argv = saved_argv
        COMMAND_FORM.reset(form)


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        raise UserError(f"unknown command {argv[0]!r}; the commands are {', '.join(COMMANDS)} (see hpccnn --help)")
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
