"""python -m hpccnn.bench: training throughput of hpccnn against plain Keras, in one run.

For each model it measures, after warm-up, training images/second of
  keras   the seeds' way: NumPy float arrays into model.fit, one process, all cores;
  1 rank  hpccnn: uint8 images through hpccnn's tf.data pipeline, Horovod's optimizer;
  N ranks hpccnn under horovodrun -np N on the same cores (each rank gets cores/N threads);
then the ratios 1-rank/keras and N-ranks/1-rank, model FLOPs utilisation against a matmul
peak measured in the same run, the time from launch to the first finished step, and peak
memory (RSS) per rank. Each measurement runs in its own process. Writes bench.csv and bench.md.

--interleave N instead trains plain Keras and hpccnn's 1-rank path in one process, N alternating
chunks each: the cost per step of each path, without the drift of a shared machine between
processes (interleaved.csv, interleaved.md). --variants measures speed options (variants.csv).
"""

import argparse
import csv
import datetime
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hpccnn import scaling
from hpccnn.errors import Parser, UserError, cli

# model: (input side, channels, default batch as in the seeds, warm-up steps)
MODELS = {
    "cnn_v3": (32, 3, 32, 8),
    "mnist_cnn": (28, 1, 128, 8),
    "alexnet64": (64, 3, 32, 8),
    "alexnet_galaxy10": (69, 3, 32, 8),
    "alexnet227": (227, 3, 16, 3),  # the seed's batch is 64; 16 keeps the benchmark to minutes
}

# Timed training per measurement. A fixed step count lasts 3x longer on one CPU than on another;
# under about 2 s the small CNNs' ratios are mostly noise, and more than 5 s makes the benchmark
# longer without making it steadier: a measurement varies more from one process to the next
# (up to +-10 % here) than within one.
SECONDS = 5.0


@dataclass(frozen=True)
class Plan:
    """What one measurement of a model runs: the global batch, warm-up steps (graph tracing,
    allocation; they also give the step rate), then steps timed, or, if steps is 0, as many
    as last about seconds at the warm-up's rate."""
    batch: int
    warmup: int
    steps: int = 0
    seconds: float = SECONDS

    def args(self) -> list:
        return ["--batch", str(self.batch), "--warmup", str(self.warmup), "--steps", str(self.steps),
                "--seconds", repr(self.seconds)]


def plan(model, batch=0, steps=0, warmup=0, seconds=SECONDS) -> Plan:
    """model's Plan: the options given, else the model's defaults."""
    return Plan(batch or MODELS[model][2], warmup or MODELS[model][3], steps, seconds)


def forward_macs(model) -> int:
    """Multiply-adds of one forward pass: convolutions and dense layers (the rest is negligible)."""
    import tensorflow as tf

    total = 0
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            total += kh * kw * cin * cout * layer.output.shape[1] * layer.output.shape[2]
        elif isinstance(layer, tf.keras.layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)


def _images(side, channels, n, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side, channels), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


class _Timer:
    """Keras callback: wall time of the first finished step, and (step, time) from the end of step
    `warmup` to the last.

    With steps_per_execution > 1 Keras calls it once per execution, so the timed span runs from
    the first call at or past the warm-up to the last, whatever the steps in between."""

    def __init__(self, warmup):
        import tensorflow as tf

        class Callback(tf.keras.callbacks.Callback):
            def on_train_batch_end(cb, batch, logs=None):
                now = time.perf_counter()
                if self.first is None:
                    self.first = time.time()
                if batch + 1 >= warmup:
                    if self.start is None:
                        self.start = (batch + 1, now)
                    self.end = (batch + 1, now)

        self.first = self.start = self.end = None
        self.callback = Callback()

    def steps_per_second(self) -> float:
        return (self.end[0] - self.start[0]) / (self.end[1] - self.start[1])


def _runner(kind, exp, world, side, channels, batch):
    """(compiled model, fit(steps, callbacks, seed), batch per rank) of one runner:
    keras, the seeds' way, or hpccnn's rank world.rank of world.size."""
    import numpy as np
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    if kind == "keras":
        from hpccnn.models import get_model

        spec = get_model(exp.model)
        model = spec((side, side, channels), 10)
        model.compile(optimizer=tf.keras.optimizers.legacy.SGD(1e-3), metrics=["accuracy"],
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=spec.logits))

        def fit(steps, callbacks, seed):
            x, y = _images(side, channels, batch * steps, seed)
            x = x.astype(np.float32) / 255  # the seeds scale the whole array up front
            model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)

        return model, fit, batch
    from hpccnn import data
    from hpccnn.models import get_model
    from hpccnn.train import compile_model

    model, _ = compile_model(exp, world, get_model(exp.model), (side, side, channels), 10)
    per_rank = max(1, batch // world.size)  # the global batch is split between the ranks

    def fit(steps, callbacks, seed):
        x, y = _images(side, channels, per_rank * steps, seed=(seed, world.rank))
        ds = data.train_pipeline(x, y, per_rank, steps, 1 / 255, 0, seed=(seed, world.rank), epochs=1)
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=callbacks)

    return model, fit, per_rank


def _experiment(args):
    from hpccnn.experiments import get_experiment, parse_assignment, parse_value, with_overrides

    settings = dict(model=args.model, optimizer="sgd")
    settings.update((k, parse_value(k, v)) for k, v in (parse_assignment(item, "--set") for item in args.set))
    return with_overrides(get_experiment("digits_cnn"), settings)


def worker(args):
    """One measurement, in this process: prints a JSON line (rank 0 only)."""
    from hpccnn.train import start

    exp = _experiment(args)
    world = None
    if args.kind == "hpccnn":  # before TensorFlow starts (XLA's CPU flags); plain Keras is the seeds' way
        world, _ = start(exp)
    side, channels = MODELS[args.model][:2]
    # Two fits of the same compiled model: the warm-up, whose second half gives the step rate, then
    # the timed one, sized from that rate; its first execution (the new iterator) is untimed. Keras
    # calls back once per execution of `every` steps, so both fits run whole executions, at least
    # three of them in the warm-up: two calls make the shortest span a rate can be timed over.
    every = exp.steps_per_execution if args.kind == "hpccnn" else 1
    warmup = max(args.warmup, 3 * every)
    warm = _Timer(warmup // 2)
    model, fit, per_rank = _runner(args.kind, exp, world, side, channels, args.batch)
    if args.kind == "keras":
        share, first_callbacks = (lambda value: value), []
    else:
        from hpccnn import dist

        # every rank runs rank 0's number of timed steps: each step's allreduce needs all of them
        share = dist.broadcast_object
        first_callbacks = [dist.hvd().callbacks.BroadcastGlobalVariablesCallback(0)]
    fit(warmup, [*first_callbacks, warm.callback], 0)
    steps = share(args.steps or max(3, math.ceil(args.seconds * warm.steps_per_second())))
    steps = math.ceil(steps / every) * every
    timer = _Timer(every)
    fit(steps + every, [timer.callback], 1)
    extra = {}
    if args.allreduce:  # every rank: one whole-gradient allreduce between them, on its own
        extra["allreduce_seconds"] = scaling.time_allreduce(model, fp16=exp.fp16_allreduce)
    if args.kind == "keras":
        ranks, size = [{"rss_mb": _rss_mb()}], 1
    else:
        ranks = dist.allgather_object({"rss_mb": _rss_mb(), "threads": world.intra_op_threads})
        size = world.size
        if not world.is_main:
            return 0
    print("BENCH " + json.dumps({
        "images_per_second": timer.steps_per_second() * per_rank * size,
        "timed_steps": timer.end[0] - timer.start[0], "timed_seconds": timer.end[1] - timer.start[1],
        "first_step_seconds": warm.first - args.launched, "ranks": ranks,
        "forward_macs": forward_macs(model), "params": int(model.count_params()), **extra}), flush=True)
    return 0


def interleaved_worker(args):
    """Plain Keras and hpccnn's 1-rank path in this one process, trained in alternating chunks of
    steps (Keras first, then hpccnn first, and so on), each chunk timed after its first step: what
    each path costs per step, with the machine's drift between processes taken out. Both share
    hpccnn's process settings (Horovod started, threads per core), which on CPUs are TensorFlow's
    own apart from Horovod's background thread. Prints a JSON line."""
    from hpccnn.train import start

    exp = _experiment(args)
    world, _ = start(exp)
    side, channels = MODELS[args.model][:2]
    runners = {kind: _runner(kind, exp, world, side, channels, args.batch) for kind in ("keras", "hpccnn")}
    # Keras calls back once per execution: hpccnn's runs whole executions of its steps_per_execution
    every = {"keras": 1, "hpccnn": exp.steps_per_execution}
    rates = {}
    for kind, (_, fit, _) in runners.items():
        warmup = max(2, args.warmup, 3 * every[kind])
        warm = _Timer(warmup // 2)
        fit(warmup, [warm.callback], 0)
        rates[kind] = warm.steps_per_second()
    # each chunk lasts about --seconds at the slower runner's warm-up rate
    steps = args.steps or max(3, math.ceil(args.seconds * min(rates.values())))
    steps = math.ceil(steps / every["hpccnn"]) * every["hpccnn"]
    chunks = {kind: [] for kind in runners}
    for i in range(args.chunks):
        for kind in (runners if i % 2 == 0 else reversed(list(runners))):
            _, fit, batch = runners[kind]
            timer = _Timer(every[kind])  # from the end of the first execution (the new iterator)
            fit(steps + every[kind], [timer.callback], i + 1)
            chunks[kind].append(timer.steps_per_second() * batch)
    print("BENCH " + json.dumps({"steps_per_chunk": steps, "images_per_second": chunks,
                                 "optimizers": {kind: f"{type(model.optimizer).__module__}.{type(model.optimizer).__name__}"
                                                for kind, (model, _, _) in runners.items()}}), flush=True)
    return 0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(n=4096, repeats=5) -> float:
    """GFLOP/s of a float32 n x n matmul on all cores: the practical peak for utilisation."""
    code = (f"import time, tensorflow as tf\n"
            f"a = tf.random.normal(({n}, {n})); b = tf.random.normal(({n}, {n}))\n"
            f"(a @ b).numpy()\n"
            f"t = time.perf_counter()\n"
            f"for _ in range({repeats}): c = (a @ b)\n"
            f"c.numpy(); print('PEAK', 2 * {n}**3 * {repeats} / (time.perf_counter() - t) / 1e9)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("PEAK"):
            return float(line.split()[1])
    raise RuntimeError(f"matmul peak measurement failed: {out.stderr[-1000:]}")


def _env():
    from hpccnn.launch import mpi_env

    return mpi_env()


def measure(kind, model, ranks, plan: Plan, settings=None, env=None) -> dict:
    """One measurement in its own process(es): settings are hpccnn.train settings, env extra variables."""
    from hpccnn.launch import horovodrun_prefix

    cmd = worker_command(kind, model, plan, settings)
    if kind == "hpccnn" and ranks > 1:
        cmd = [*horovodrun_prefix(ranks), *cmd]
        cmd[cmd.index("--launched") + 1] = repr(time.time())
    out = subprocess.run(cmd, capture_output=True, text=True, env={**_env(), **(env or {})}, timeout=3600)
    try:
        return parse_result(out.stdout)
    except RuntimeError:
        raise RuntimeError(f"{kind} {model} on {ranks} rank(s) failed:\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}") from None


def worker_command(kind, model, plan: Plan, settings=None, allreduce=False) -> list:
    """The command of one measurement's process (each rank's, under a launcher)."""
    return [sys.executable, "-m", "hpccnn.bench", "--worker", kind, "--model", model, *plan.args(),
            "--launched", repr(time.time()), *(["--allreduce"] if allreduce else []),
            *(f"--set={k}={v}" for k, v in (settings or {}).items())]


def parse_result(output: str) -> dict:
    """The JSON a worker printed after 'BENCH ' (rank 0's)."""
    for line in output.splitlines():
        if "BENCH " in line:
            # horovodrun interleaves the ranks' output: take the first JSON value on the line
            return json.JSONDecoder().raw_decode(line.split("BENCH ", 1)[1])[0]
    raise RuntimeError(f"no measurement in the output:\n{output[-1500:]}")


# What --variants tries, each against hpccnn's defaults on the same rank count, measured back to back:
# name: (ranks, hpccnn.train settings, environment variables)
VARIANTS = {
    "none (A/A)": (1, {}, {}),  # the defaults against themselves: how far noise alone moves a ratio
    "xla": (1, {"xla": "on"}, {}),
    "xla off": (1, {"xla": "off"}, {}),  # not even GPU auto-clustering's flag
    "mixed precision": (1, {"mixed_precision": "on"}, {}),  # float16
    "bfloat16": (1, {"mixed_precision": "bfloat16"}, {}),
    # hpccnn's default is 8 (hpccnn.experiments): this measures what it gains over Keras' 1
    "steps_per_execution 1": (1, {"steps_per_execution": 1}, {}),
    "oneDNN off": (1, {}, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
    # Horovod's own cycle for one rank, where hpccnn sets 20 ms (hpccnn.dist: SINGLE_RANK_CYCLE_MS)
    "Horovod cycle 1 ms 1 rank": (1, {}, {"HOROVOD_CYCLE_TIME": "1"}),
    "none (A/A) 2 ranks": (2, {}, {}),
    "fp16 allreduce": (2, {"fp16_allreduce": "true"}, {}),
    "Horovod cycle 10 ms": (2, {}, {"HOROVOD_CYCLE_TIME": "10"}),
    "Horovod fusion 256 MB": (2, {}, {"HOROVOD_FUSION_THRESHOLD": str(256 * 2 ** 20)}),
    "no MPI yield": (2, {}, {"OMPI_MCA_mpi_yield_when_idle": "0"}),
}


def _try(model, ranks, plan, settings, env, name, log):
    """A variant's images/s, or None (said in the log) if it does not run."""
    try:
        return measure("hpccnn", model, ranks, plan, settings, env)["images_per_second"]
    except RuntimeError as err:
        log(f"{model:17} {name:22} failed: {str(err).strip().splitlines()[-1][:200]}")
        return None


def run_variants(models, variants, options: dict, out_dir: Path, repeats=2, log=print):
    """Each variant against the defaults on the same ranks, in pairs whose order alternates (default
    first, then variant first), so neither a slow drift of a shared machine nor a bias for the first
    or second process of a pair favours either side; the ratio is the median of the pairs' ratios."""
    import statistics

    rows = []
    for model in models:
        how = plan(model, **options)
        for name in variants:
            ranks, settings, env = VARIANTS[name]

            def default():
                return measure("hpccnn", model, ranks, how)["images_per_second"]

            def variant():
                return _try(model, ranks, how, settings, env, name, log)

            pairs = []  # (default images/s, variant images/s or None if it failed)
            for repeat in range(repeats):
                order = (default, variant) if repeat % 2 == 0 else (variant, default)
                got = {side: side() for side in order}
                pairs.append((got[default], got[variant]))
                if got[variant] is None:
                    break
            failed = pairs[-1][1] is None
            rows.append({"model": model, "batch": how.batch, "ranks": ranks, "variant": name,
                         "default_images_per_second": round(statistics.median(b for b, _ in pairs), 1),
                         "variant_images_per_second": None if failed else round(statistics.median(t for _, t in pairs), 1),
                         "ratio": None if failed else round(statistics.median(t / b for b, t in pairs), 3),
                         "pairs": len(pairs)})
            ratio = rows[-1]["ratio"]
            log(f"{model:17} {name:22} {ranks} rank(s)  default {rows[-1]['default_images_per_second']:8.1f} img/s  "
                + ("failed" if ratio is None else f"variant {rows[-1]['variant_images_per_second']:8.1f} img/s  "
                                                  f"x{ratio:.2f}"))
    md = (f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {machine()}: each variant against "
          f"hpccnn's defaults on the same ranks, {repeats} pairs in alternating order, median ratio.\n\n"
          "| model | batch | ranks | variant | default images/s | variant images/s | variant / default |\n"
          "|---|---|---|---|---|---|---|\n" + "".join(
              f"| {r['model']} | {r['batch']} | {r['ranks']} | {r['variant']} | {r['default_images_per_second']:,.1f} | "
              + ("failed | |" if r["ratio"] is None else f"{r['variant_images_per_second']:,.1f} | {r['ratio']:.2f}× |")
              + "\n" for r in rows))
    write(out_dir, "variants", rows, md)
    return rows, md


def run_interleaved(models, options: dict, out_dir: Path, chunks: int, log=print):
    """Per model, plain Keras against hpccnn's 1-rank path in one process, in alternating chunks
    (interleaved_worker); images/s are the chunks' medians, the ratio the median of the chunk pairs'."""
    import statistics

    rows = []
    for model in models:
        how = plan(model, **options)
        cmd = [sys.executable, "-m", "hpccnn.bench", "--worker", "interleaved", "--model", model, *how.args(),
               "--chunks", str(chunks)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=3600)
        line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
        if line is None:
            raise RuntimeError(f"interleaved {model} failed:\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}")
        got = json.loads(line[len("BENCH "):])
        keras, ours = got["images_per_second"]["keras"], got["images_per_second"]["hpccnn"]
        ratios = sorted(b / a for a, b in zip(keras, ours))
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        rows.append({"model": model, "batch": how.batch, "chunks": chunks, "steps_per_chunk": got["steps_per_chunk"],
                     "keras_images_per_second": round(statistics.median(keras), 1),
                     "hpccnn_images_per_second": round(statistics.median(ours), 1),
                     "ratio": round(statistics.median(ratios), 3), "ratio_q1": round(quartiles[0], 3),
                     "ratio_q3": round(quartiles[2], 3), "keras_optimizer": got["optimizers"]["keras"],
                     "hpccnn_optimizer": got["optimizers"]["hpccnn"]})
        r = rows[-1]
        log(f"{model:17} keras {r['keras_images_per_second']:8.1f} img/s  hpccnn 1 rank "
            f"{r['hpccnn_images_per_second']:8.1f} img/s  x{r['ratio']:.3f} (quartiles {r['ratio_q1']:.2f}-{r['ratio_q3']:.2f})")
    md = (f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {machine()}: plain Keras and hpccnn's 1-rank "
          f"path in one process, {chunks} chunks each, alternating which goes first; images/s are the chunks' "
          f"medians, the ratio is the median of the chunk pairs' ratios (in brackets, their quartiles).\n\n"
          "| model | batch | steps per chunk | plain Keras images/s | hpccnn 1 rank images/s | hpccnn / Keras |\n"
          "|---|---|---|---|---|---|\n" + "".join(
              f"| {r['model']} | {r['batch']} | {r['steps_per_chunk']} | {r['keras_images_per_second']:,.1f} | "
              f"{r['hpccnn_images_per_second']:,.1f} | {r['ratio']:.3f}× ({r['ratio_q1']:.2f}–{r['ratio_q3']:.2f}) |\n"
              for r in rows))
    write(out_dir, "interleaved", rows, md)
    return rows, md


def run(models, ranks, options: dict, out_dir: Path, repeats=1, log=print):
    """Plain Keras, hpccnn on 1 rank and on each of ranks, per model, repeats rounds whose order
    alternates; images/s are the rounds' medians and each ratio the median of the rounds' ratios."""
    import statistics

    peak = matmul_peak()
    log(f"matmul peak (4096x4096 float32, all {os.cpu_count()} cores): {peak:.1f} GFLOP/s")
    rows = []
    for model in models:
        how = plan(model, **options)
        batch = how.batch
        runners = [0, *sorted(set(ranks) | {1})]  # 0: plain Keras
        rounds = []
        for repeat in range(repeats):
            order = runners if repeat % 2 == 0 else runners[::-1]
            rounds.append({n: measure("keras" if n == 0 else "hpccnn", model, max(n, 1), how) for n in order})
        flops = 3 * 2 * rounds[0][0]["forward_macs"]

        def each(n, key="images_per_second", over=None):  # one value per round
            return [r[n][key] / (r[over][key] if over is not None else 1) for r in rounds]

        def median(n, key="images_per_second", over=None):
            return statistics.median(each(n, key, over))

        for n in runners:
            ips = median(n)
            rows.append({
                "model": model, "side": MODELS[model][0], "batch": batch,
                "runner": "plain keras" if n == 0 else f"hpccnn {n} rank{'s' if n > 1 else ''}",
                "ranks": max(n, 1), "images_per_second": round(ips, 1),
                "vs_keras": round(median(n, over=0), 3),
                # the rounds' lowest and highest ratio: how far one round alone could mislead
                "vs_keras_min": round(min(each(n, over=0)), 3), "vs_keras_max": round(max(each(n, over=0)), 3),
                "vs_1_rank": round(median(n, over=1), 3) if n else None,
                "train_gflop_per_image": round(flops / 1e9, 4),
                "gradient_mb": round(rounds[0][0]["params"] * 4 / 1e6, 2),
                "step_seconds": round(batch / ips, 4),
                "mfu": round(ips * flops / 1e9 / peak, 3),
                "first_step_seconds": round(median(n, "first_step_seconds"), 1),
                "timed_seconds": round(median(n, "timed_seconds"), 1),
                "timed_steps": round(median(n, "timed_steps")),
                "peak_rss_mb_per_rank": round(max(x["rss_mb"] for r in rounds for x in r[n]["ranks"])),
                "rounds": repeats,
            })
            log(format_row(rows[-1]))
    md = markdown(rows, peak, repeats) + "\n" + scaling.paper(rows)
    write(out_dir, "bench", rows, md)
    return rows, md


def write(out_dir: Path, name: str, rows, md):
    """name.csv and name.md in out_dir, a new folder (never an existing one)."""
    out_dir.mkdir(parents=True, exist_ok=False)
    write_tables(out_dir, name, rows, md)


def write_tables(out_dir: Path, name: str, rows, md):
    """name.csv and name.md in the folder out_dir."""
    with open(out_dir / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / f"{name}.md").write_text(md)


def format_row(r) -> str:
    return (f"{r['model']:17} {r['runner']:16} {r['images_per_second']:9.1f} img/s  x{r['vs_keras']:.2f} keras"
            + (f"  x{r['vs_1_rank']:.2f} 1-rank" if r["vs_1_rank"] is not None else "")
            + f"  MFU {r['mfu']:.0%}  first step {r['first_step_seconds']:.1f} s  {r['peak_rss_mb_per_rank']} MB/rank")


def markdown(rows, peak, repeats=1) -> str:
    def vs_keras(r):
        text = f"{r['vs_keras']:.2f}×"
        if repeats > 1 and r["runner"] != "plain keras":
            text += f" ({r['vs_keras_min']:.2f}–{r['vs_keras_max']:.2f})"
        return text

    head = ("| model | input | batch | runner | images/s | vs plain Keras | vs 1 rank | MFU | timed s (steps) "
            "| launch to first step (s) | peak RSS per rank (MB) |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['model']} | {r['side']}×{r['side']} | {r['batch']} | {r['runner']} | {r['images_per_second']:,.1f} | "
        f"{vs_keras(r)} | {'' if r['vs_1_rank'] is None else format(r['vs_1_rank'], '.2f') + '×'} | "
        f"{r['mfu']:.0%} | {r['timed_seconds']:.1f} ({r['timed_steps']}) | {r['first_step_seconds']:.1f} | "
        f"{r['peak_rss_mb_per_rank']:,} |\n" for r in rows)
    rounds = "" if repeats == 1 else (f" Each figure is the median of {repeats} rounds whose order alternates "
                                      f"(ratios: median of the rounds' ratios; in brackets, the lowest and "
                                      f"highest round).")
    return (f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {machine()}; matmul peak "
            f"{peak:.1f} GFLOP/s (4096² float32). MFU = images/s × 6 × forward MACs ÷ peak.{rounds}\n\n"
            + head + body)


def machine() -> str:
    """This machine in a few words: cores, CPU model and its widest vector unit, memory."""
    from hpccnn.dist import cpu_model_and_flags

    name, flags = cpu_model_and_flags()
    vector = next((v for v, flag in (("AVX-512 with BF16", "avx512_bf16"), ("AVX-512", "avx512f"), ("AVX2", "avx2"))
                   if flag in flags), "no AVX2")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{os.cpu_count()} cores of {name} ({vector}), {memory:.0f} GB"


@cli
def main(argv=None):
    p = Parser(prog="python -m hpccnn.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cnn_v3,mnist_cnn,alexnet64,alexnet_galaxy10,alexnet227",
                   help=f"comma-separated, from: {', '.join(MODELS)}")
    p.add_argument("--ranks", default="1,2", help="rank counts for hpccnn (horovodrun on this machine)")
    p.add_argument("--seconds", type=float, default=SECONDS,
                   help="timed training per measurement: as many steps as last this long at the warm-up's rate")
    p.add_argument("--steps", type=int, default=0, help="timed training steps per measurement, instead of --seconds")
    p.add_argument("--warmup", type=int, default=0,
                   help="steps run before timing: graph tracing, allocation, the step rate (default: per model, 3-8)")
    p.add_argument("--batch", type=int, default=0, help="global batch for every model (default: each seed's)")
    p.add_argument("--variants", default=None, metavar="NAMES",
                   help="instead of the comparison with Keras, measure these speed options against hpccnn's "
                        f"defaults (comma-separated, or 'all'): {', '.join(VARIANTS)}")
    p.add_argument("--interleave", type=int, default=0, metavar="CHUNKS",
                   help="instead, train plain Keras and hpccnn's 1-rank path in one process, CHUNKS chunks of "
                        "about --seconds each in alternating order: their per-step cost without the drift "
                        "between processes")
    p.add_argument("--repeats", type=int, default=None,
                   help="rounds per model, in alternating order (default 1; with --variants, 2 pairs)")
    p.add_argument("--out", type=Path, default=None, help="folder for bench.csv and bench.md "
                                                          "(default results/bench-<date>-<time>)")
    p.add_argument("--nodes", type=int, default=0,
                   help="instead, measure scaling over a network: this many namespace nodes on this machine "
                        "(root; one rank per node, each on its own cores), at each --link-gbit, against the "
                        "README's scaling model; --batch is then the batch per rank (default: each seed's)")
    p.add_argument("--link-gbit", default="0.2,0.5,1,2", metavar="SPEEDS",
                   help="with --nodes: the link speeds in Gbit/s, comma-separated (default 0.2,0.5,1,2)")
    p.add_argument("--fp16-allreduce", action="store_true",
                   help="with --nodes: send the gradients as float16 (Horovod's Compression.fp16)")
    p.add_argument("--worker", choices=("keras", "hpccnn", "interleaved"), help=argparse.SUPPRESS)
    p.add_argument("--allreduce", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--chunks", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--launched", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.kind = args.worker
        return interleaved_worker(args) if args.kind == "interleaved" else worker(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise UserError(f"unknown model {unknown[0]!r} for the benchmark; choose from: {', '.join(MODELS)}")
    try:
        ranks = sorted({int(r) for r in args.ranks.split(",")})
    except ValueError:
        raise UserError(f"--ranks wants comma-separated integers, got {args.ranks!r}") from None
    if min(args.steps, args.warmup, args.batch, args.interleave) < 0 or min(ranks) < 1 or (args.repeats or 1) < 1 or args.seconds <= 0:
        raise UserError("--repeats, --ranks and --seconds must be positive, --steps, --warmup, --batch and "
                        "--interleave not negative")
    if args.interleave and args.variants:
        raise UserError("--interleave and --variants are two different measurements; give one of them")
    if 0 < args.warmup < 2:
        raise UserError("--warmup must be at least 2: the step rate is timed over the warm-up's second half")
    options = dict(batch=args.batch, steps=args.steps, warmup=args.warmup, seconds=args.seconds)
    out = args.out or Path("results") / f"bench-{datetime.datetime.now():%Y-%m-%d-%H%M%S}"
    if out.exists():
        raise UserError(f"--out {out} already exists; hpccnn never overwrites results")
    if args.nodes:
        if args.interleave or args.variants:
            raise UserError("--nodes is a measurement of its own; give it without --interleave or --variants")
        rows, md = scaling.run_nodes(models, args.nodes, scaling.parse_links(args.link_gbit), options, out,
                                     fp16=args.fp16_allreduce)
        print("\n" + md)
        print(f"hpccnn: {out / 'nodes.csv'}")
        return 0
    if args.variants:
        names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown:
            raise UserError(f"unknown variant {unknown[0]!r}; choose from: {', '.join(VARIANTS)} (or all)")
        rows, md = run_variants(models, names, options, out, args.repeats or 2)
        print("\n" + md)
        print(f"hpccnn: {out / 'variants.csv'}")
        return 0
    if args.interleave:
        rows, md = run_interleaved(models, options, out, args.interleave)
        print("\n" + md)
        print(f"hpccnn: {out / 'interleaved.csv'}")
        return 0
    rows, md = run(models, ranks, options, out, args.repeats or 1)
    print("\n" + md)
    print(f"hpccnn: {out / 'bench.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
