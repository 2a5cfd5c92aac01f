"""One measurement of python -m hpccnn.bench, in a process of its own: python -m hpccnn.benchmark.worker
RUNNER ..., as hpccnn.benchmark.measure.worker_command writes it (each rank's, under a launcher).

It builds the runner's Trainer (hpccnn.benchmark.runners), warms it up and times it
(hpccnn.benchmark.timing), and rank 0 prints what it measured as one JSON line after 'BENCH ', which
hpccnn.benchmark.measure.measure() reads.
"""

import dataclasses
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from hpccnn.benchmark import scaling
from hpccnn.benchmark.input_runner import INPUTS
from hpccnn.benchmark.plans import SECONDS
from hpccnn.benchmark.runners import RUNNERS
from hpccnn.benchmark.timing import Timed, Timer, timed_steps
from hpccnn.benchmark.trainer import Trainer, random_images
from hpccnn.common.errors import Parser, cli
from hpccnn.models.catalog import get_experiment
from hpccnn.models.experiments import parse_assignment, parse_value, with_overrides
from hpccnn.models.zoo import get_model
from hpccnn.training import dist
from hpccnn.training.compute import compile_model, start


def _setup(args, horovod: bool):
    """(experiment, hpccnn's world or None): started before TensorFlow (XLA's CPU flags) if horovod."""
    settings = dict(model=args.model, optimizer="sgd")
    settings.update((k, parse_value(k, v)) for k, v in (parse_assignment(item, "--set") for item in args.set))
    exp = with_overrides(get_experiment("digits_cnn"), settings)
    return exp, start(exp)[0] if horovod else None


def _trainer(key, exp, world, args) -> Trainer:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)  # every runner starts from the same weights
    return RUNNERS[key].trainer(exp, world, get_model(args.model).input_shape, args.batch)


def _threads() -> str:
    """This process's TensorFlow threads, intra-op/inter-op (0 is TensorFlow's default: every core)."""
    import tensorflow as tf

    return f"{tf.config.threading.get_intra_op_parallelism_threads()}/{tf.config.threading.get_inter_op_parallelism_threads()}"


def losses(trainer, shape, steps: int, classes=10) -> dict:
    """The loss on a fixed batch before and after one epoch of steps global batches in order (the same
    images and order for every runner), from the first process's weights: runners that compute the same
    training agree on it."""
    import tensorflow as tf

    x, y = random_images(shape, trainer.batch * trainer.size * steps, seed=7)
    xe, ye = random_images(shape, 64, seed=8)
    spec_logits = getattr(trainer.model.loss, "get_config", lambda: {})().get("from_logits", False)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=spec_logits)

    def held_out():
        return float(loss(ye, trainer.model(xe.astype(np.float32) / 255, training=False)).numpy())

    before, weights = held_out(), [w.copy() for w in trainer.model.get_weights()]
    trainer.fit_in_order(x, y)
    moved = sum(float(((a - b).astype(np.float64) ** 2).sum()) for a, b in zip(trainer.model.get_weights(), weights))
    return {"loss_before": before, "loss_after": held_out(), "update_norm": moved ** 0.5, "steps": steps,
            "global_batch": trainer.batch * trainer.size}


def worker(args):
    """One measurement of runner args.runner, in this process: prints a JSON line (rank 0 only)."""
    runner = RUNNERS[args.runner]  # plain Keras is the seeds' way, the peers their own: no hpccnn set-up
    exp, world = _setup(args, runner.on_ranks and runner.hpccnn_setup)
    trainer = _trainer(args.runner, exp, world, args)
    if args.losses:
        got = losses(trainer, get_model(args.model).input_shape, args.losses)
        if trainer.is_main:
            print("BENCH " + json.dumps(got), flush=True)
        return 0
    timed = Timed(trainer, args.warmup)
    got = timed.time(trainer.share(timed_steps(args, timed.rate, trainer.every)), 1)
    if args.allreduce:  # every rank: one whole-gradient allreduce between them, on its own
        got["allreduce_all_seconds"] = scaling.time_allreduces(trainer.model, fp16=exp.fp16_allreduce)
        got["allreduce_seconds"] = statistics.median(got["allreduce_all_seconds"])
    ranks = trainer.gather({"rss_mb": _rss_mb()})
    if trainer.is_main:
        setup = {"threads": _threads(), "batch_per_worker": trainer.batch, "workers": trainer.size, **trainer.setup}
        print("BENCH " + json.dumps({**got, "first_step_seconds": timed.first - args.launched, "ranks": ranks,
                                     "setup": setup,
                                     "forward_macs": forward_macs(trainer.model),
                                     "params": int(trainer.model.count_params())}), flush=True)
    return 0


def interleaved_worker(args):
    """Plain Keras and hpccnn's 1-rank path in this one process, trained in alternating chunks of
    steps (Keras first, then hpccnn first, and so on): what each path costs per step, with the
    machine's drift between processes taken out. Both share hpccnn's process settings (Horovod
    started, threads per core), which on CPUs are TensorFlow's own apart from Horovod's background
    thread. Each chunk lasts about --seconds at the slower one's warm-up rate. Prints a JSON line."""
    exp, world = _setup(args, True)
    trainers = {key: _trainer(key, exp, world, args) for key in ("keras", "hpccnn")}
    timed = {key: Timed(trainer, args.warmup) for key, trainer in trainers.items()}
    every = math.lcm(*(trainer.every for trainer in trainers.values()))  # whole executions of both
    steps = timed_steps(args, min(t.rate for t in timed.values()), every)
    chunks = {key: [] for key in timed}
    for i in range(args.chunks):
        for key in (list(timed) if i % 2 == 0 else reversed(list(timed))):
            chunks[key].append(timed[key].time(steps, i + 1)["images_per_second"])
    print("BENCH " + json.dumps({"steps_per_chunk": steps, "images_per_second": chunks, "optimizers": {
        key: f"{type(t.model.optimizer).__module__}.{type(t.model.optimizer).__name__}"
        for key, t in trainers.items()}}), flush=True)
    return 0


def input_chunks_worker(args):
    """Every input of HPCCNN_BENCH_INPUT (comma-separated, INPUTS) in this one process (each rank): one model
    trained on them in turn in one fit, args.chunks timed chunks of each after an untimed round, their order
    alternating, each about --seconds at the first input's warm-up rate. The inputs' pipelines go on between
    their chunks (tf.data's choose_from_datasets picks each batch's), epochs and blocks included, so their
    ratios are free of a shared machine's drift between processes. Prints a JSON line (rank 0 only)."""
    import tensorflow as tf

    exp, world = _setup(args, True)
    tf.keras.utils.set_random_seed(0)
    kinds, folder = os.environ["HPCCNN_BENCH_INPUT"].split(","), Path(os.environ["HPCCNN_BENCH_DATA"])
    shape = get_model(args.model).input_shape
    model, _ = compile_model(exp, world, get_model(exp.model), shape, 10)
    per_rank, every = max(1, args.batch // world.size), exp.steps_per_execution
    sources = {k: INPUTS[k](dataclasses.replace(exp, dataset="bench", input=k, validation="test"), folder, world,
                            per_rank, shape)[0] for k in kinds}
    warmup = math.ceil(max(2, args.warmup, 3 * every) / every) * every
    warm = Timer(warmup // 2)
    model.fit(sources[kinds[0]](warmup, 0), steps_per_epoch=warmup, epochs=1, verbose=0,
              callbacks=[dist.hvd().callbacks.BroadcastGlobalVariablesCallback(0), warm.callback])
    chunk = dist.broadcast_object(timed_steps(args, warm.steps_per_second(), every))
    order = [k for i in range(args.chunks + 1) for k in (kinds if i % 2 == 0 else kinds[::-1])]
    choice = tf.data.Dataset.from_tensor_slices(np.repeat([kinds.index(k) for k in order], chunk).astype(np.int64))
    ds = tf.data.Dataset.choose_from_datasets([sources[k](chunk * (args.chunks + 1), 1) for k in kinds], choice)
    ends = {}  # steps done: time, at the end of each execution
    model.fit(ds, steps_per_epoch=chunk * len(order), epochs=1, verbose=0, callbacks=[tf.keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: ends.__setitem__(batch + 1, time.perf_counter()))])
    rates = {k: [] for k in kinds}
    for j in range(len(kinds), len(order)):  # after the untimed first round
        rates[order[j]].append(chunk * per_rank * world.size / (ends[(j + 1) * chunk] - ends[j * chunk]))
    if world.is_main:
        print("BENCH " + json.dumps({"chunk_steps": chunk, "order": order, "images_per_second": rates}), flush=True)
    return 0


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


def _rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM, its own since it started. Not ru_maxrss, which a
    process started by vfork and exec inherits from its parent (Python's subprocess: every rank would show
    at least the benchmark's own peak); ru_maxrss only where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@cli
def main(argv=None):
    """A measurement's process: python -m hpccnn.benchmark.worker RUNNER ..., as worker_command() writes it."""
    p = Parser(prog="python -m hpccnn.benchmark.worker", description=main.__doc__)
    p.add_argument("runner", choices=(*RUNNERS, "interleaved"), help="interleaved: plain Keras and hpccnn in turn")
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, required=True, help="global batch")
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--steps", type=int, default=0, help="timed steps (0: as many as last --seconds)")
    p.add_argument("--seconds", type=float, default=SECONDS)
    p.add_argument("--launched", type=float, default=0.0, help="time.time() at launch: the first step's from it")
    p.add_argument("--allreduce", action="store_true", help="and time a whole-gradient allreduce on its own")
    p.add_argument("--chunks", type=int, default=0, help="interleaved: chunks per runner; input: chunks per input, "
                                                          "every input of HPCCNN_BENCH_INPUT in this process")
    p.add_argument("--losses", type=int, default=0, metavar="STEPS",
                   help="instead of timing: the loss on a fixed batch before and after STEPS batches in order")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an hpccnn.train setting")
    args = p.parse_args(argv)
    if args.runner == "input" and args.chunks:
        return input_chunks_worker(args)
    return interleaved_worker(args) if args.runner == "interleaved" else worker(args)


if __name__ == "__main__":
    sys.exit(main())
