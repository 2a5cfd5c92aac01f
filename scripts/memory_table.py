"""The memory each rank of finished runs took, and the data's part of it, as a Markdown table.

    python scripts/memory_table.py RUN_FOLDER...

One row per run: experiment, data shape and images, ranks, how the ranks held the data set (the node's
shared window or each its own copy) and its bytes, the shards each rank copied into TensorFlow, and
per rank the peak RSS (getrusage) and, at the end of the run, Pss and private bytes (smaps_rollup);
from provenance.json's ranks[].memory and config.json (README, Memory per rank)."""

import json
import sys
from pathlib import Path

from hpccnn.common.tables import markdown

MB = 2 ** 20


def row(folder: Path) -> list:
    config = json.loads((folder / "config.json").read_text())
    prov = json.loads((folder / "provenance.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    ranks = [r["memory"] for r in sorted(prov["ranks"], key=lambda r: r["rank"])]
    data = ranks[0]["data"]
    held = (f"window {data['window_bytes'] / MB:,.0f} (1 per node)" if data["held_as"] == "node window"
            else f"own copy {data['own_bytes'] / MB:,.0f} (1 per rank)")

    def per_rank(key):
        return " / ".join(f"{r[key] / MB:,.0f}" for r in ranks)

    shape = config["synthetic_shape"] if config["dataset"] == "synthetic" else config["dataset"]
    side = config["image_size"] or shape.split("x")[0]
    part = data["window_bytes"] / data["window_ranks"] + data["own_bytes"] + data["shard_bytes"]
    return [config["name"], f"{config['synthetic_size']:,} × {shape} → {side}", prov["world_size"], held,
            f"{data['shard_bytes'] / MB:,.0f}", f"{part / MB:,.0f}", per_rank("peak_rss_bytes"), per_rank("pss_bytes"),
            per_rank("private_bytes"), f"{metrics.get('wall_seconds', 0):,.0f}"]


HEADER = ["experiment", "images (trained at)", "ranks", "data set held as, MB", "shards in TF per rank, MB",
          "data per rank (its share), MB",
          "peak RSS per rank, MB", "Pss at end, MB", "private at end, MB", "wall s"]

if __name__ == "__main__":
    print(markdown(HEADER, [row(Path(f)) for f in sys.argv[1:]]), end="")
