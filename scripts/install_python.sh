#!/usr/bin/env bash
# Creates the virtual environment VENV with the pinned stack and Horovod compiled
# against its TensorFlow with MPI. Each step is skipped when already done.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
here=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
pip=("$py" -m pip install --disable-pip-version-check -q)
"${pip[@]}" -c "$here/requirements/constraints.txt" -r "$here/requirements/base.txt"
# mpi4py from source so that it links the system Open MPI that mpirun/srun start.
if ! "$py" -c "import mpi4py" 2>/dev/null; then
  # -O1: the generated C file takes minutes at -O3 and gains nothing for hpccnn's few calls.
  CFLAGS="-O1 -g0" "${pip[@]}" --no-binary mpi4py -c "$here/requirements/constraints.txt" "mpi4py>=4,<5"
fi
# Horovod 0.28.1 is the last release; it must be compiled against the TensorFlow
# already in the environment (no build isolation) and with MPI (about 5 minutes).
if ! "$py" -c "import horovod.tensorflow as h; assert h.mpi_built()" 2>/dev/null; then
  echo "hpccnn: compiling Horovod 0.28.1 against TensorFlow with MPI (about 5 minutes)"
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 CMAKE_POLICY_VERSION_MINIMUM=3.5 \
    "${pip[@]}" --no-build-isolation --no-cache-dir -c "$here/requirements/constraints.txt" horovod==0.28.1
fi
"${pip[@]}" --no-deps --no-build-isolation -e "$here"
