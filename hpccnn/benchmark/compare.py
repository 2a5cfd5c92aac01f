"""python -m hpccnn.bench's comparison: plain Keras, hpccnn on 1 and N ranks and each peer runner per model,
a process per measurement, in rounds (bench.csv, bench.md, peers.csv); and with --interleave, plain Keras and
hpccnn's 1-rank path in one process, in alternating chunks (interleaved.csv, interleaved.md)."""

import os
import statistics

from hpccnn.benchmark import scaling
from hpccnn.benchmark.measure import matmul_peak, measure
from hpccnn.benchmark.plans import Options, Plan
from hpccnn.benchmark.results import document, write, write_csv
from hpccnn.benchmark.runners import KERAS, ONE_RANK, RUNNERS
from hpccnn.common import tables
from hpccnn.models.zoo import get_model


def run(options: Options):
    """Plain Keras, hpccnn and each peer runner per model (those on ranks on 1 and on each of the rank
    counts), rounds whose order alternates; images/s are the rounds' medians and each ratio the median
    of the rounds' ratios."""
    repeats, peers, log = options.repeats, options.peers, options.log
    peak = matmul_peak()
    log(f"matmul peak (4096x4096 float32, all {os.cpu_count()} cores): {peak:.1f} GFLOP/s")
    counts = sorted(set(options.ranks) | {1})
    lineup = [(key, n) for key, runner in RUNNERS.items() if key in ("keras", "hpccnn", *peers)
              for n in (counts if runner.on_ranks else [1])]
    rows, against = [], []
    for model in options.models:
        how = options.plan(model)
        rounds = [{(key, n): measure(key, model, n, how) for key, n in (lineup if repeat % 2 == 0 else lineup[::-1])}
                  for repeat in range(repeats)]
        for entry in lineup:
            rows.append(bench_row(model, how, entry, rounds, peak))
            log(format_row(rows[-1]))
        against += [peer_row(model, how, n, peer, rounds) for n in counts for peer in peers]
    spread = "" if repeats == 1 else (f" Each figure is the median of {repeats} rounds whose order alternates "
                                      f"(ratios: median of the rounds' ratios; in brackets, the lowest and "
                                      f"highest round).")
    after = ""
    if peers:
        after = ("\n\nhpccnn against what users would pick instead, on the same cores, global batch and model "
                 "(hpccnn / peer, per round):\n\n" + tables.markdown(*tables.cells(PEER_COLUMNS, against))
                 + "\n\nHow each runner was set up (threads intra-op/inter-op per worker; 0 is TensorFlow's "
                   "default, every core):\n\n" + tables.markdown(*tables.cells(SETUP_COLUMNS, _setups(rows))))
    md = write(options.out, "bench", rows, document(
        f"; matmul peak {peak:.1f} GFLOP/s (4096² float32). MFU = images/s × 6 × forward MACs ÷ peak.{spread}",
        bench_columns(repeats), rows, after=after + "\n" + scaling.paper(rows)))
    if against:
        write_csv(options.out / "peers.csv", against)
    return rows, md


def peer_row(model, how: Plan, ranks: int, peer: str, rounds) -> dict:
    """hpccnn on ranks against peer on as many workers, from the same rounds."""
    ours, theirs = [r[("hpccnn", ranks)]["images_per_second"] for r in rounds], \
        [r[(peer, ranks)]["images_per_second"] for r in rounds]
    ratios = [a / b for a, b in zip(ours, theirs)]
    return {"model": model, "batch": how.batch, "workers": ranks, "peer": RUNNERS[peer].label(ranks),
            "hpccnn": round(statistics.median(ours), 1), "peer_images_per_second": round(statistics.median(theirs), 1),
            "ratio": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3), "rounds": len(rounds)}


PEER_COLUMNS = {
    "model": tables.key("model"), "batch": tables.key("batch"), "workers": tables.key("workers"),
    "hpccnn images/s": tables.key("hpccnn", ",.1f"), "peer": tables.key("peer"),
    "peer images/s": tables.key("peer_images_per_second", ",.1f"),
    "hpccnn / peer": lambda r: f"{r['ratio']:.2f}×" + (f" ({r['ratio_min']:.2f}–{r['ratio_max']:.2f})"
                                                      if r["rounds"] > 1 else ""),
}


SETUP_COLUMNS = {"runner": tables.key("runner"), "threads": tables.key("threads"),
                 "batch per worker": tables.key("batch_per_worker"), "input": tables.key("input"),
                 "sharding": tables.key("sharding"), "collective": tables.key("collective")}


def _setups(rows) -> list:
    """One row per runner and worker count: its set-up as its first model's measurement reported it."""
    seen = {}
    for r in rows:
        seen.setdefault(r["runner"], r)
    return list(seen.values())


def bench_row(model, how: Plan, entry, rounds, peak) -> dict:
    """bench.csv's row of entry (runner, ranks) from its rounds' measurements."""
    key, ranks = entry

    def each(over=None, field="images_per_second"):  # one value per round
        return [r[entry][field] / (r[over][field] if over else 1) for r in rounds]

    ips = statistics.median(each())
    flops = 3 * 2 * rounds[0][KERAS]["forward_macs"]
    return {
        "model": model, "side": get_model(model).input_side, "batch": how.batch, "runner": RUNNERS[key].label(ranks),
        "ranks": ranks, "images_per_second": round(ips, 1), "vs_keras": round(statistics.median(each(KERAS)), 3),
        # the rounds' lowest and highest ratio: how far one round alone could mislead
        "vs_keras_min": round(min(each(KERAS)), 3), "vs_keras_max": round(max(each(KERAS)), 3),
        "vs_1_rank": round(statistics.median(each(ONE_RANK)), 3) if key == "hpccnn" else None,  # hpccnn's own
        "train_gflop_per_image": round(flops / 1e9, 4), "gradient_mb": round(rounds[0][KERAS]["params"] * 4 / 1e6, 2),
        "step_seconds": round(how.batch / ips, 4), "mfu": round(ips * flops / 1e9 / peak, 3),
        "first_step_seconds": round(statistics.median(each(field="first_step_seconds")), 1),
        "timed_seconds": round(statistics.median(each(field="timed_seconds")), 1),
        "timed_steps": round(statistics.median(each(field="timed_steps"))),
        "peak_rss_mb_per_rank": round(max(x["rss_mb"] for r in rounds for x in r[entry]["ranks"])),
        "rounds": len(rounds),
        **{k: rounds[0][entry].get("setup", {}).get(k, "") for k in ("threads", "batch_per_worker", "input",
                                                                     "sharding", "collective")},
    }


def format_row(r) -> str:
    return (f"{r['model']:17} {r['runner']:16} {r['images_per_second']:9.1f} img/s  x{r['vs_keras']:.2f} keras"
            + (f"  x{r['vs_1_rank']:.2f} 1-rank" if r["vs_1_rank"] is not None else "")
            + f"  MFU {r['mfu']:.0%}  first step {r['first_step_seconds']:.1f} s  {r['peak_rss_mb_per_rank']} MB/rank")


def bench_columns(repeats) -> dict:
    """bench.md's first table: heading -> a row's cell."""
    def vs_keras(r):  # with the rounds' spread, where there are rounds and something to compare
        spread = repeats > 1 and r["runner"] != RUNNERS["keras"].title
        return f"{r['vs_keras']:.2f}×" + (f" ({r['vs_keras_min']:.2f}–{r['vs_keras_max']:.2f})" if spread else "")

    return {"model": tables.key("model"), "input": lambda r: f"{r['side']}×{r['side']}", "batch": tables.key("batch"),
            "runner": tables.key("runner"), "images/s": tables.key("images_per_second", ",.1f"),
            "vs plain Keras": vs_keras,
            "vs 1 rank": lambda r: "" if r["vs_1_rank"] is None else f"{r['vs_1_rank']:.2f}×",
            "MFU": tables.key("mfu", ".0%"),
            "timed s (steps)": lambda r: f"{r['timed_seconds']:.1f} ({r['timed_steps']})",
            "launch to first step (s)": tables.key("first_step_seconds", ".1f"),
            "peak RSS per rank (MB)": tables.key("peak_rss_mb_per_rank", ",")}


def run_interleaved(options: Options, chunks: int):
    """Per model, plain Keras against hpccnn's 1-rank path in one process, in alternating chunks
    (hpccnn.benchmark.worker.interleaved_worker); images/s are the chunks' medians, the ratio the median of the
    chunk pairs'."""
    rows = []
    for model in options.models:
        how = options.plan(model)
        got = measure("interleaved", model, 1, how, extra=["--chunks", str(chunks)])
        keras, ours = got["images_per_second"]["keras"], got["images_per_second"]["hpccnn"]
        ratios = sorted(b / a for a, b in zip(keras, ours))
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        r = {"model": model, "batch": how.batch, "chunks": chunks, "steps_per_chunk": got["steps_per_chunk"],
             "keras_images_per_second": round(statistics.median(keras), 1),
             "hpccnn_images_per_second": round(statistics.median(ours), 1),
             "ratio": round(statistics.median(ratios), 3), "ratio_q1": round(quartiles[0], 3),
             "ratio_q3": round(quartiles[2], 3), "keras_optimizer": got["optimizers"]["keras"],
             "hpccnn_optimizer": got["optimizers"]["hpccnn"]}
        rows.append(r)
        options.log(f"{model:17} keras {r['keras_images_per_second']:8.1f} img/s  hpccnn 1 rank "
                    f"{r['hpccnn_images_per_second']:8.1f} img/s  x{r['ratio']:.3f} "
                    f"(quartiles {r['ratio_q1']:.2f}-{r['ratio_q3']:.2f})")
    return rows, write(options.out, "interleaved", rows, document(
        f": plain Keras and hpccnn's 1-rank path in one process, {chunks} chunks each, alternating which goes "
        f"first; images/s are the chunks' medians, the ratio is the median of the chunk pairs' ratios (in "
        f"brackets, their quartiles).", INTERLEAVED_COLUMNS, rows))


INTERLEAVED_COLUMNS = {
    "model": tables.key("model"), "batch": tables.key("batch"), "steps per chunk": tables.key("steps_per_chunk"),
    "plain Keras images/s": tables.key("keras_images_per_second", ",.1f"),
    "hpccnn 1 rank images/s": tables.key("hpccnn_images_per_second", ",.1f"),
    "hpccnn / Keras": lambda r: f"{r['ratio']:.3f}× ({r['ratio_q1']:.2f}–{r['ratio_q3']:.2f})",
}
