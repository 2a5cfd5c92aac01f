"""python -m hpccnn.demo: digits_cnn under ``horovodrun -np 2`` on this machine, no internet needed."""

import json
import re
import subprocess
import sys
from pathlib import Path

from hpccnn.errors import cli
from hpccnn.launch import horovodrun_command, mpi_env


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cmd = horovodrun_command(2, ["--experiment", "digits_cnn", *argv])
    print("hpccnn demo:", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = None
    for line in proc.stdout:
        sys.stdout.write(line)
        match = re.search(r"hpccnn: results in (\S+)", line)
        if match:
            folder = Path(match.group(1))
    if proc.wait() != 0 or folder is None:
        print(f"hpccnn demo: training failed (exit status {proc.returncode})", file=sys.stderr)
        return 1
    metrics = json.loads((folder / "metrics.json").read_text())
    print(f"\nhpccnn demo: digits_cnn on {metrics['world_size']} Horovod ranks: test accuracy "
          f"{metrics['test_accuracy']:.4f}, {metrics['wall_seconds']:.0f} s\nhpccnn demo: results folder {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
