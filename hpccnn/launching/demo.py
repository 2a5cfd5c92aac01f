"""python -m hpccnn.demo: digits_cnn under ``horovodrun -np 2`` on this machine, no internet needed."""

import json
import subprocess
import sys
from pathlib import Path

from hpccnn.common.errors import Parser, cli
from hpccnn.launching.launch import horovodrun_command, mpi_env


def run_folders(results_dir: Path) -> set:
    return {p for p in results_dir.glob("*/*") if p.is_dir()}


@cli
def main(argv=None):
    p = Parser(prog="python -m hpccnn.demo", description=__doc__)
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--ranks", type=int, default=2)
    args = p.parse_args(argv)
    results = args.results_dir.resolve()
    before = run_folders(results)
    cmd = horovodrun_command(args.ranks, ["--experiment", "digits_cnn", "--results-dir", str(results)])
    print("hpccnn demo:", " ".join(cmd), flush=True)
    status = subprocess.run(cmd, env=mpi_env()).returncode
    new = sorted(run_folders(results) - before)
    if status != 0 or len(new) != 1:
        print(f"hpccnn demo: training failed (exit status {status}); see the output above", file=sys.stderr)
        return 1
    folder = new[0]
    metrics = json.loads((folder / "metrics.json").read_text())
    print(f"\nhpccnn demo: digits_cnn on {metrics['world_size']} Horovod ranks reached test accuracy "
          f"{metrics['test_accuracy']:.4f} in {metrics['wall_seconds']:.0f} s of training"
          f"\nhpccnn demo: results folder {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
