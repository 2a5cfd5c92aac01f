"""The runners of python -m hpccnn.bench, the ways of training a model that it times.

A runner is one way of training a model: plain Keras written the seeds' way, or hpccnn's, on 1
rank or on N under horovodrun; or what users would pick instead (PEERS): Horovod's own recipe, and
TensorFlow's MultiWorkerMirroredStrategy (hpccnn.benchmark.mwms). Each builds a Trainer; the worker
(hpccnn.benchmark.worker) warms every Trainer up and times it the same way (hpccnn.benchmark.timing),
and prints what it measured as one JSON line, which hpccnn.benchmark.measure.measure() reads.
A new runner is a function that returns a Trainer, and its entry in RUNNERS.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np

from hpccnn.benchmark.input_runner import input_trainer
from hpccnn.benchmark.mwms import mwms_trainer
from hpccnn.benchmark.trainer import Trainer, my_part, random_images
from hpccnn.models.zoo import get_model
from hpccnn.training import dist, inputs
from hpccnn.training.inputs import Batches
from hpccnn.training.compute import compile_model


def keras_trainer(exp, world, shape, batch) -> Trainer:
    """The seeds' way: NumPy float arrays into model.fit, one process, all cores."""
    import tensorflow as tf

    spec = get_model(exp.model)
    model = spec(shape, 10)
    model.compile(optimizer=tf.keras.optimizers.legacy.SGD(exp.learning_rate), metrics=["accuracy"],
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=spec.logits))

    def fit(steps, callbacks, seed):
        x, y = random_images(shape, batch * steps, seed)
        x = x.astype(np.float32) / 255  # the seeds scale the whole array up front
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)

    def fit_in_order(x, y):
        model.fit(x.astype(np.float32) / 255, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)

    return Trainer(model, fit, batch, fit_in_order=fit_in_order, setup={"sharding": "one process, the whole batch",
                                             "collective": "none", "input": "float32 NumPy arrays into fit"})


def hpccnn_trainer(exp, world, shape, batch) -> Trainer:
    """hpccnn's way, as rank world.rank of world.size: uint8 images through its tf.data pipeline,
    Horovod's optimizer, the global batch split between the ranks."""
    model, _ = compile_model(exp, world, get_model(exp.model), shape, 10)
    per_rank = max(1, batch // world.size)

    def fit(steps, callbacks, seed):
        x, y = random_images(shape, per_rank * steps, seed=(seed, world.rank))
        ds = inputs.train_pipeline(x, y, Batches(per_rank, steps, seed=(seed, world.rank)), 1 / 255)
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=callbacks)

    def fit_in_order(x, y):
        mine = my_part(x, y, batch, world.rank, world.size)
        model.fit(inputs.pipeline(*mine, per_rank, 1 / 255), epochs=1, verbose=0,
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
    import horovod.tensorflow as hvd_tf
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
        x, y = random_images(shape, per_rank * steps, seed=(seed, hvd.rank()))
        ds = tf.data.Dataset.from_tensor_slices((tf.cast(x / 255.0, tf.float32), tf.cast(y, tf.int64)))
        ds = ds.repeat().shuffle(10000).batch(per_rank)
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0,
                  callbacks=[*callbacks, hvd.callbacks.MetricAverageCallback()])

    def fit_in_order(x, y):
        x, y = my_part(x, y, batch, hvd.rank(), hvd.size())
        ds = tf.data.Dataset.from_tensor_slices((tf.cast(x / 255.0, tf.float32), tf.cast(y, tf.int64))).batch(per_rank)
        model.fit(ds, epochs=1, verbose=0, callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)])

    return Trainer(model, fit, per_rank, 1, hvd.size(), hvd.rank() == 0,
                   (hvd.callbacks.BroadcastGlobalVariablesCallback(0),),
                   lambda value: hvd_tf.broadcast_object(value, root_rank=0), hvd_tf.allgather_object,
                   {"sharding": "each rank its own images", "input": "float32 from_tensor_slices, shuffle, batch",
                    "collective": "Horovod allreduce over MPI, Horovod's defaults"}, fit_in_order, hvd.rank())


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


PEERS = ("horovod", "mwms")  # what users would pick instead of hpccnn, measured beside it by default
