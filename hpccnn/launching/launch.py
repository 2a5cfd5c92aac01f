"""Building launcher command lines (horovodrun, mpirun) for hpccnn.train. Imports training, never the reverse."""

import os
import shutil
import sys
from pathlib import Path

from hpccnn.common.errors import UserError


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    if found is None:
        raise UserError(f"{name} is not on PATH; run 'make install' in the hpccnn checkout (or load your MPI module)")
    return found


def train_command(train_args: list) -> list:
    return [sys.executable, "-m", "hpccnn.train", *train_args]


def horovodrun_prefix(ranks: int) -> list:
    return [_tool("horovodrun"), "-np", str(ranks), "-H", f"localhost:{ranks}"]


def horovodrun_command(ranks: int, train_args: list) -> list:
    return [*horovodrun_prefix(ranks), *train_command(train_args)]


def mpirun_command(ranks: int, train_args: list) -> list:
    # --bind-to none: hpccnn splits the cores between local ranks itself (intra-op threads).
    return [_tool("mpirun"), "-np", str(ranks), "--bind-to", "none", "-x", "PATH", "-x", "PYTHONPATH",
            *train_command(train_args)]


def mpi_env(base=None) -> dict:
    env = dict(os.environ if base is None else base)
    if os.geteuid() == 0:  # Open MPI refuses root unless told twice; containers and CI run as root
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The MPI settings that matter (yielding cores while waiting, the interface between nodes) are
    # not set here: each rank sets them itself before MPI starts (hpccnn.training.dist.mpi_settings), so that
    # they reach a horovodrun or mpirun line typed by hand as well.
    return env
