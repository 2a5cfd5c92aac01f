"""One measurement of python -m hpccnn.bench, in a process of its own: the runners.

A runner is one way of training a model: plain Keras written the seeds' way, or hpccnn's, on 1
rank or on N under horovodrun. Each builds a Trainer; Timed warms every Trainer up and times it
the same way, and the worker prints what it measured as one JSON line, which measure() reads.
A new runner is a function that returns a Trainer, and its entry in RUNNERS.
"""

import dataclasses
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hpccnn.benchmark import scaling
from hpccnn.common.errors import Parser, cli
from hpccnn.launching.launch import horovodrun_prefix, mpi_env
from hpccnn.models.zoo import get_model

# Timed training per measurement, in seconds at the warm-up's step rate rather than a step count,
# which lasts three times longer on one CPU than on another (README, Performance: what shorter and
# longer spans did to the ratios).
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


@dataclass
class Trainer:
    """A runner's compiled model in this process, and how it trains: all the timing needs to know."""
    model: object
    fit: Callable  # fit(steps, callbacks, seed): one epoch of that many steps on new random images
    batch: int  # images per step in this process
    every: int = 1  # steps per execution: Keras calls the callbacks back once per that many steps
    size: int = 1  # processes training together, each on its own batch
    is_main: bool = True  # the process that prints the measurement
    first_callbacks: tuple = ()  # for the first fit only (Horovod's broadcast of rank 0's weights)
    share: Callable = lambda value: value  # rank 0's value, on every rank
    gather: Callable = lambda value: [value]  # every rank's value, in rank order
    setup: dict = field(default_factory=dict)  # how it is set up: sharding and collective (bench.md prints it)
    # fit_in_order(x, y): one epoch over these global uint8 images in order, unshuffled, global batch by
    # global batch, each process on its own part of each (the loss-agreement check)
    fit_in_order: Callable = None
    rank: int = 0


def _my_part(x, y, batch, rank, size):
    """Of each global batch of x, y (in order), the part of process rank of size: what it trains on."""
    import numpy as np

    per = batch // size
    index = np.concatenate([np.arange(start + rank * per, start + (rank + 1) * per)
                            for start in range(0, len(x), batch)])
    return x[index], y[index]


def _threads() -> str:
    """This process's TensorFlow threads, intra-op/inter-op (0 is TensorFlow's default: every core)."""
    import tensorflow as tf

    return f"{tf.config.threading.get_intra_op_parallelism_threads()}/{tf.config.threading.get_inter_op_parallelism_threads()}"


def keras_trainer(exp, world, shape, batch) -> Trainer:
    """The seeds' way: NumPy float arrays into model.fit, one process, all cores."""
    import numpy as np
    import tensorflow as tf

    spec = get_model(exp.model)
    model = spec(shape, 10)
    model.compile(optimizer=tf.keras.optimizers.legacy.SGD(exp.learning_rate), metrics=["accuracy"],
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=spec.logits))

    def fit(steps, callbacks, seed):
        x, y = _images(shape, batch * steps, seed)
        x = x.astype(np.float32) / 255  # the seeds scale the whole array up front
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)

    def fit_in_order(x, y):
        model.fit(x.astype(np.float32) / 255, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)

    return Trainer(model, fit, batch, fit_in_order=fit_in_order, setup={"sharding": "one process, the whole batch",
                                             "collective": "none", "input": "float32 NumPy arrays into fit"})


def hpccnn_trainer(exp, world, shape, batch) -> Trainer:
    """hpccnn's way, as rank world.rank of world.size: uint8 images through its tf.data pipeline,
    Horovod's optimizer, the global batch split between the ranks."""
    from hpccnn.data import datasets as data
    from hpccnn.training import dist
    from hpccnn.models.zoo import get_model
    from hpccnn.training.train import compile_model

    model, _ = compile_model(exp, world, get_model(exp.model), shape, 10)
    per_rank = max(1, batch // world.size)

    def fit(steps, callbacks, seed):
        x, y = _images(shape, per_rank * steps, seed=(seed, world.rank))
        ds = data.train_pipeline(x, y, per_rank, steps, 1 / 255, 0, seed=(seed, world.rank), epochs=1)
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=callbacks)

    def fit_in_order(x, y):
        mine = _my_part(x, y, batch, world.rank, world.size)
        model.fit(data.pipeline(*mine, per_rank, 1 / 255), epochs=1, verbose=0,
                  callbacks=[dist.hvd().callbacks.BroadcastGlobalVariablesCallback(0)])

    # every rank runs rank 0's number of timed steps (share): each step's allreduce needs all of them
    return Trainer(model, fit, per_rank, exp.steps_per_execution, world.size, world.is_main,
                   (dist.hvd().callbacks.BroadcastGlobalVariablesCallback(0),),
                   dist.broadcast_object, dist.allgather_object,
                   {"sharding": "each rank its own images", "input": "uint8 through hpccnn's tf.data pipeline",
                    "collective": "Horovod allreduce over MPI, hpccnn's MPI settings",
                    "steps_per_execution": exp.steps_per_execution}, fit_in_order, world.rank)


def horovod_recipe_trainer(exp, world, shape, batch) -> Trainer:
    """Horovod's own Keras recipe, as examples/tensorflow2/tensorflow2_keras_mnist.py writes it: hvd.init()
    and none of hpccnn's process set-up (TensorFlow's threads are its defaults); the images scaled to
    float32 up front, from_tensor_slices, repeat, shuffle(10000), batch; DistributedOptimizer; the broadcast
    and metric-average callbacks; one step per call. The model, optimizer and global batch are the other
    runners', split between the ranks as hpccnn splits it."""
    import horovod.tensorflow.keras as hvd
    import tensorflow as tf

    hvd.init()
    spec = get_model(exp.model)
    model = spec(shape, 10)
    model.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=spec.logits),
                  optimizer=hvd.DistributedOptimizer(tf.keras.optimizers.legacy.SGD(exp.learning_rate)), metrics=["accuracy"],
                  experimental_run_tf_function=False)
    per_rank = max(1, batch // hvd.size())

    def fit(steps, callbacks, seed):
        x, y = _images(shape, per_rank * steps, seed=(seed, hvd.rank()))
        ds = tf.data.Dataset.from_tensor_slices((tf.cast(x / 255.0, tf.float32), tf.cast(y, tf.int64)))
        ds = ds.repeat().shuffle(10000).batch(per_rank)
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0,
                  callbacks=[*callbacks, hvd.callbacks.MetricAverageCallback()])

    def fit_in_order(x, y):
        x, y = _my_part(x, y, batch, hvd.rank(), hvd.size())
        ds = tf.data.Dataset.from_tensor_slices((tf.cast(x / 255.0, tf.float32), tf.cast(y, tf.int64))).batch(per_rank)
        model.fit(ds, epochs=1, verbose=0, callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)])

    import horovod.tensorflow as hvd_tf

    return Trainer(model, fit, per_rank, 1, hvd.size(), hvd.rank() == 0,
                   (hvd.callbacks.BroadcastGlobalVariablesCallback(0),),
                   lambda value: hvd_tf.broadcast_object(value, root_rank=0), hvd_tf.allgather_object,
                   {"sharding": "each rank its own images", "input": "float32 from_tensor_slices, shuffle, batch",
                    "collective": "Horovod allreduce over MPI, Horovod's defaults"}, fit_in_order, hvd.rank())


def input_trainer(exp, world, shape, batch) -> Trainer:
    """hpccnn's way (hpccnn_trainer's model, optimizer and ranks) on real images of the folder
    HPCCNN_BENCH_DATA, read as HPCCNN_BENCH_INPUT says (INPUTS): the pack "bench" in its cache/ held in
    memory or streamed from its shards, or its jpeg/CLASS/*.jpg decoded on the fly. Each rank trains on
    its own share of the training images, epoch after epoch, for as many steps as asked."""
    import os

    from hpccnn.training import dist
    from hpccnn.training.train import compile_model

    kind, folder = os.environ["HPCCNN_BENCH_INPUT"], Path(os.environ["HPCCNN_BENCH_DATA"])
    if kind not in INPUTS:
        raise ValueError(f"HPCCNN_BENCH_INPUT={kind!r}: one of {', '.join(INPUTS)}")
    model, _ = compile_model(exp, world, get_model(exp.model), shape, 10)
    per_rank = max(1, batch // world.size)
    # the pack's own test set for validation: the training set is the pack's training split whole, the
    # images written to jpeg/
    exp = dataclasses.replace(exp, dataset="bench", input=kind, validation="test")
    dataset, facts = INPUTS[kind](exp, folder, world, per_rank, shape)

    def fit(steps, callbacks, seed):
        model.fit(dataset(steps, seed), steps_per_epoch=steps, epochs=1, verbose=0, callbacks=callbacks)

    return Trainer(model, fit, per_rank, exp.steps_per_execution, world.size, world.is_main,
                   (dist.hvd().callbacks.BroadcastGlobalVariablesCallback(0),),
                   dist.broadcast_object, dist.allgather_object,
                   {"sharding": "each rank its own images", "collective": "Horovod allreduce over MPI, hpccnn's MPI "
                    "settings", "steps_per_execution": exp.steps_per_execution, **facts}, rank=world.rank)


def _in_memory(exp, folder, world, per_rank, shape):
    """The pack loaded whole (hpccnn.data.datasets.load_split), this rank's share through hpccnn's in-memory pipeline."""
    from hpccnn.data import datasets as data

    splits = data.load_split(exp, folder / "cache")
    x, y = data.shard(splits.x_train, world.rank, world.size), data.shard(splits.y_train, world.rank, world.size)
    per_epoch = len(x) // per_rank

    def dataset(steps, seed):
        return data.train_pipeline(x, y, per_rank, per_epoch, splits.scale, 0, seed=(seed, world.rank),
                                   epochs=math.ceil(steps / per_epoch))

    return dataset, {"input": "the pack held in memory, hpccnn.data.datasets's pipeline", "train_images": len(splits.x_train),
                     "steps_per_epoch": per_epoch}


def _streamed(exp, folder, world, per_rank, shape):
    """The pack streamed from its shards (hpccnn.training.stream), each rank its own shards."""
    from hpccnn.training import stream

    streamed = stream.open_pack(exp, folder / "cache")
    per_epoch = stream.steps_per_epoch(streamed, world.size, per_rank)[0]

    def dataset(steps, seed):
        return stream.train_pipeline(streamed, world.rank, world.size, per_rank, per_epoch, 0, seed, 0,
                                     math.ceil(steps / per_epoch))

    return dataset, {"input": "the pack streamed from its shards, hpccnn.training.stream's pipeline",
                     "train_images": streamed.count("train"), "steps_per_epoch": per_epoch}


def _jpeg_files(exp, folder, world, per_rank, shape):
    """jpeg/CLASS/*.jpg decoded on the fly, as a user would write it in tf.data: this rank's files (every
    size-th of the sorted listing), shuffled each epoch, read and decoded in parallel, batched, scaled."""
    import tensorflow as tf

    classes = sorted(p.name for p in (folder / "jpeg").iterdir() if p.is_dir())
    files = sorted((str(f), k) for k, c in enumerate(classes) for f in (folder / "jpeg" / c).glob("*.jpg"))
    mine = files[world.rank::world.size]
    paths, labels = [f for f, _ in mine], [k for _, k in mine]

    def decode(path, label):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=shape[2])
        image.set_shape(shape)
        return image, label

    def dataset(steps, seed):
        ds = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int64)))
        ds = ds.shuffle(len(paths), seed=seed * 1000 + world.rank).repeat()
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(per_rank, drop_remainder=True)
        return ds.map(lambda x, y: (tf.cast(x, tf.float32) / 255, y)).prefetch(tf.data.AUTOTUNE)

    return dataset, {"input": "JPEG files decoded on the fly, a user's tf.data pipeline", "train_images": len(files),
                     "steps_per_epoch": len(paths) // per_rank}


# HPCCNN_BENCH_INPUT of the runner "input" (python -m hpccnn.bench --inputs): how it reads its images
INPUTS = {"memory": _in_memory, "stream": _streamed, "jpeg": _jpeg_files}


def _mwms_layout():
    """(this worker's index, workers, the most workers on a node) from the launcher: srun's SLURM_* variables,
    else Open MPI's (horovodrun, mpirun), else one worker alone."""
    import os

    env = os.environ
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:  # SLURM_STEP_TASKS_PER_NODE: "2", "2(x3)" or "2(x3),1"
        per_node = max(int(part.split("(")[0]) for part in env["SLURM_STEP_TASKS_PER_NODE"].split(","))
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), per_node
    if "OMPI_COMM_WORLD_RANK" in env:
        return (int(env["OMPI_COMM_WORLD_RANK"]), int(env["OMPI_COMM_WORLD_SIZE"]),
                int(env.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1")))
    return 0, 1, 1


def mwms_trainer(exp, world, shape, batch) -> Trainer:
    """TensorFlow's MultiWorkerMirroredStrategy, set up as its multi-worker tutorial does: TF_CONFIG naming
    every worker (ports on loopback from --mwms-ports under horovodrun's or mpirun's layout), or under srun
    SlurmClusterResolver's cluster (on CPU nodes without its GPU accounting: see below);
    collectives over gRPC, the ring implementation (the only one for CPUs). Each worker gets the same
    threads as an hpccnn rank, and the same images through hpccnn's input pipeline, batched by the
    strategy's per-replica batch of the global batch (distribute_datasets_from_function)."""
    import json
    import os

    import tensorflow as tf

    from hpccnn.data import datasets as data
    from hpccnn.training import dist

    index, workers, local = _mwms_layout()
    threads = dist.cores_for_this_rank(local)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    resolver = None
    if workers > 1 and "SLURM_STEP_ID" in os.environ:
        port = int(os.environ.get("HPCCNN_MWMS_PORT", "29500"))
        if tf.config.list_physical_devices("GPU"):
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=port)
        else:
            # On CPU nodes the resolver can't be used as it is: it pairs each task of a node with a slice of the
            # node's GPUs (zip of the tasks and range(0, gpus per node, gpus per task)), so with 0 GPUs it lists
            # no task, with 0 per task range() raises, and left alone it runs nvidia-smi. With one placeholder GPU
            # per task it lists every task, but then tells the strategy each worker has a GPU (its replicas
            # on a GPU:0 that isn't there: gradients reduced one by one, "Efficient batch_reduce is not
            # supported"). So: its cluster (hosts, ports, this task), and no accelerators.
            slurm = tf.distribute.cluster_resolver.SlurmClusterResolver(
                port_base=port, gpus_per_node=local, gpus_per_task=1, auto_set_gpu=False)
            spec = slurm.cluster_spec()
            resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
                spec, task_type=slurm.task_type, task_id=slurm.task_id, num_accelerators={}, rpc_layer="grpc")
    elif workers > 1:
        ports = os.environ["HPCCNN_MWMS_PORTS"].split(",")
        os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports[:workers]]},
                                              "task": {"type": "worker", "index": index}})
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    spec = get_model(exp.model)
    with strategy.scope():
        model = spec(shape, 10)
        model.compile(optimizer=tf.keras.optimizers.legacy.SGD(exp.learning_rate), metrics=["accuracy"],
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=spec.logits))
    per_worker = max(1, batch // workers)

    def fit(steps, callbacks, seed):
        def dataset(context):
            per = context.get_per_replica_batch_size(per_worker * workers)
            x, y = _images(shape, per * steps, seed=(seed, context.input_pipeline_id))
            return data.train_pipeline(x, y, per, steps, 1 / 255, 0, seed=(seed, context.input_pipeline_id), epochs=1)

        model.fit(strategy.distribute_datasets_from_function(dataset), steps_per_epoch=steps, epochs=1, verbose=0,
                  callbacks=callbacks)

    def fit_in_order(x, y):
        mine = _my_part(x, y, per_worker * workers, index, workers)

        def dataset(context):
            return data.pipeline(*mine, context.get_per_replica_batch_size(per_worker * workers), 1 / 255)

        model.fit(strategy.distribute_datasets_from_function(dataset), steps_per_epoch=len(x) // (per_worker * workers),
                  epochs=1, verbose=0)

    def gather(value):  # every worker's number, in worker order, by one cross-worker sum
        one_hot = [0.0] * workers
        one_hot[index] = float(value)
        summed = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(one_hot)), axis=None)
        return [float(v) for v in summed.numpy()]

    def share(value):
        return type(value)(gather(value)[0])

    return Trainer(model, fit, per_worker, 1, workers, index == 0, share=share,
                   gather=lambda value: [{"rss_mb": v} for v in gather(value["rss_mb"])],
                   setup={"sharding": "a pipeline per worker (distribute_datasets_from_function)",
                          "input": "uint8 through hpccnn's tf.data pipeline",
                          "collective": "TensorFlow collectives over gRPC, ring" if workers > 1 else "none"},
                   fit_in_order=fit_in_order, rank=index)


@dataclass(frozen=True)
class Runner:
    """A way of training that the benchmark times: one process alone, or (on_ranks) hpccnn's
    process set-up, Horovod included, on 1 rank and on each rank count under horovodrun."""
    trainer: Callable  # (experiment, hpccnn's world or None, input shape, global batch) -> Trainer
    title: str  # its rows' runner, followed by the rank count if on_ranks
    on_ranks: bool = False
    hpccnn_setup: bool = True  # on ranks: hpccnn's process set-up (Horovod, threads, MPI settings) first

    def label(self, ranks: int) -> str:
        return f"{self.title} {ranks} rank{'s' if ranks > 1 else ''}" if self.on_ranks else self.title


# By the name a measurement's process is started with; each model's rows in bench.csv follow this order.
RUNNERS = {
    "keras": Runner(keras_trainer, "plain keras"),
    "hpccnn": Runner(hpccnn_trainer, "hpccnn", on_ranks=True),
    "horovod": Runner(horovod_recipe_trainer, "horovod recipe", on_ranks=True, hpccnn_setup=False),
    "mwms": Runner(mwms_trainer, "tf mwms", on_ranks=True, hpccnn_setup=False),
    "input": Runner(input_trainer, "hpccnn", on_ranks=True),  # real images, read as HPCCNN_BENCH_INPUT says
}
KERAS, ONE_RANK = ("keras", 1), ("hpccnn", 1)  # the (runner, ranks) that vs_keras and vs_1_rank divide by


class _Timer:
    """Keras callback: wall time of the first finished step, and (step, time) from the end of step
    `untimed` to the last.

    With steps_per_execution > 1 Keras calls it once per execution, so the timed span runs from
    the first call at or past `untimed` to the last, whatever the steps in between."""

    def __init__(self, untimed):
        import tensorflow as tf

        class Callback(tf.keras.callbacks.Callback):
            def on_train_batch_end(cb, batch, logs=None):
                now = time.perf_counter()
                if self.first is None:
                    self.first = time.time()
                if batch + 1 >= untimed:
                    if self.start is None:
                        self.start = (batch + 1, now)
                    self.end = (batch + 1, now)

        self.first = self.start = self.end = None
        self.callback = Callback()

    def steps_per_second(self) -> float:
        return (self.end[0] - self.start[0]) / (self.end[1] - self.start[1])


class Timed:
    """A Trainer warmed up, then timed as often as asked: how both workers measure.

    The warm-up fit's second half gives the step rate; each timed fit is of the same compiled model,
    its first execution (a new iterator) untimed. Keras calls back once per execution of `every`
    steps, so every fit runs whole executions, at least three in the warm-up: two calls make the
    shortest span a rate can be timed over."""

    def __init__(self, trainer: Trainer, warmup: int):
        self.trainer = trainer
        warmup = max(2, warmup, 3 * trainer.every)
        warm = _Timer(warmup // 2)
        trainer.fit(warmup, [*trainer.first_callbacks, warm.callback], 0)
        self.first, self.rate = warm.first, warm.steps_per_second()

    def time(self, steps: int, seed: int) -> dict:
        """Trains steps (whole executions) after an untimed one: images/s over every process, the steps
        and the seconds timed."""
        timer = _Timer(self.trainer.every)
        self.trainer.fit(steps + self.trainer.every, [timer.callback], seed)
        return {"images_per_second": timer.steps_per_second() * self.trainer.batch * self.trainer.size,
                "timed_steps": timer.end[0] - timer.start[0], "timed_seconds": timer.end[1] - timer.start[1]}


def timed_steps(args, rate: float, every: int) -> int:
    """--steps, else as many as last --seconds at rate (at least 3), in whole executions of every steps."""
    steps = args.steps or max(3, math.ceil(args.seconds * rate))
    return math.ceil(steps / every) * every


def _setup(args, horovod: bool):
    """(experiment, hpccnn's world or None): started before TensorFlow (XLA's CPU flags) if horovod."""
    from hpccnn.models.experiments import get_experiment, parse_assignment, parse_value, with_overrides
    from hpccnn.training.train import start

    settings = dict(model=args.model, optimizer="sgd")
    settings.update((k, parse_value(k, v)) for k, v in (parse_assignment(item, "--set") for item in args.set))
    exp = with_overrides(get_experiment("digits_cnn"), settings)
    return exp, start(exp)[0] if horovod else None


def _trainer(key, exp, world, args) -> Trainer:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)  # every runner starts from the same weights
    return RUNNERS[key].trainer(exp, world, get_model(args.model).input_shape, args.batch)


def losses(trainer, shape, steps: int, classes=10) -> dict:
    """The loss on a fixed batch before and after one epoch of steps global batches in order (the same
    images and order for every runner), from the first process's weights: runners that compute the same
    training agree on it."""
    import numpy as np
    import tensorflow as tf

    x, y = _images(shape, trainer.batch * trainer.size * steps, seed=7)
    xe, ye = _images(shape, 64, seed=8)
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


def _images(shape, n, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


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


def input_chunks_worker(args):
    """Every input of HPCCNN_BENCH_INPUT (comma-separated, INPUTS) in this one process (each rank): one model
    trained on them in turn in one fit, args.chunks timed chunks of each after an untimed round, their order
    alternating, each about --seconds at the first input's warm-up rate. The inputs' pipelines go on between
    their chunks (tf.data's choose_from_datasets picks each batch's), epochs and blocks included, so their
    ratios are free of a shared machine's drift between processes. Prints a JSON line (rank 0 only)."""
    import os

    import numpy as np
    import tensorflow as tf

    from hpccnn.training import dist
    from hpccnn.training.train import compile_model

    exp, world = _setup(args, True)
    tf.keras.utils.set_random_seed(0)
    kinds, folder = os.environ["HPCCNN_BENCH_INPUT"].split(","), Path(os.environ["HPCCNN_BENCH_DATA"])
    shape = get_model(args.model).input_shape
    model, _ = compile_model(exp, world, get_model(exp.model), shape, 10)
    per_rank, every = max(1, args.batch // world.size), exp.steps_per_execution
    sources = {k: INPUTS[k](dataclasses.replace(exp, dataset="bench", input=k, validation="test"), folder, world,
                            per_rank, shape)[0] for k in kinds}
    warmup = math.ceil(max(2, args.warmup, 3 * every) / every) * every
    warm = _Timer(warmup // 2)
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


def _rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM, its own since it started. Not ru_maxrss, which a
    process started by vfork and exec inherits from its parent (Python's subprocess: every rank would show
    at least the benchmark's own peak); ru_maxrss only where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(n=4096, repeats=5) -> float:
    """GFLOP/s of a float32 n x n matmul on all cores: the practical peak for utilisation."""
    code = (f"import time, tensorflow as tf\n"
            f"a = tf.random.normal(({n}, {n})); b = tf.random.normal(({n}, {n}))\n"
            f"(a @ b).numpy()\n"
            f"t = time.perf_counter()\n"
            f"for _ in range({repeats}): c = (a @ b)\n"
            f"c.numpy(); print('PEAK', 2 * {n}**3 * {repeats} / (time.perf_counter() - t) / 1e9)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=mpi_env(), timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("PEAK"):
            return float(line.split()[1])
    raise RuntimeError(f"matmul peak measurement failed: {out.stderr[-1000:]}")


def measure(kind, model, ranks, plan: Plan, settings=None, env=None, extra=()) -> dict:
    """One measurement in its own process(es): runner kind (or interleaved) on ranks; settings are
    hpccnn.train settings, env extra variables, extra more worker options."""
    cmd = [*worker_command(kind, model, plan, settings), *extra]
    if ranks > 1:
        cmd = [*horovodrun_prefix(ranks), *cmd]
        cmd[cmd.index("--launched") + 1] = repr(time.time())
    if kind == "mwms" and ranks > 1:  # its workers' gRPC servers, on loopback
        env = {"HPCCNN_MWMS_PORTS": ",".join(map(str, free_ports(ranks))), **(env or {})}
    out = subprocess.run(cmd, capture_output=True, text=True, env={**mpi_env(), **(env or {})}, timeout=3600)
    try:
        return parse_result(out.stdout)
    except RuntimeError:
        raise RuntimeError(f"{kind} {model} on {ranks} rank(s) failed:\n{out.stdout[-1500:]}\n"
                           f"{out.stderr[-1500:]}") from None


def free_ports(n: int) -> list:
    """n TCP ports free on loopback now (held open together while chosen, so all differ)."""
    import socket

    held = [socket.socket() for _ in range(n)]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def worker_command(kind, model, plan: Plan, settings=None, allreduce=False) -> list:
    """The command of one measurement's process (each rank's, under a launcher)."""
    return [sys.executable, "-m", "hpccnn.benchmark.runners", kind, "--model", model, *plan.args(),
            "--launched", repr(time.time()), *(["--allreduce"] if allreduce else []),
            *(f"--set={k}={v}" for k, v in (settings or {}).items())]


def parse_result(output: str) -> dict:
    """The JSON a worker printed after 'BENCH ' (rank 0's)."""
    for line in output.splitlines():
        if "BENCH " in line:
            # horovodrun interleaves the ranks' output: take the first JSON value on the line
            return json.JSONDecoder().raw_decode(line.split("BENCH ", 1)[1])[0]
    raise RuntimeError(f"no measurement in the output:\n{output[-1500:]}")


@cli
def main(argv=None):
    """A measurement's process: python -m hpccnn.benchmark.runners RUNNER ..., as worker_command() writes it."""
    p = Parser(prog="python -m hpccnn.benchmark.runners", description=main.__doc__)
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
