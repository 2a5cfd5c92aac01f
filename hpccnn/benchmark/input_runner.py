"""The runner "input" of python -m hpccnn.bench --inputs and --memory-check: hpccnn's way of training on real
images, held in memory, streamed from a staged pack, or decoded from JPEG files (INPUTS)."""

import dataclasses
import math
import os
from pathlib import Path

from hpccnn.benchmark.trainer import Trainer
from hpccnn.data import datasets
from hpccnn.models.zoo import get_model
from hpccnn.training import dist, inputs, stream
from hpccnn.training.inputs import Batches
from hpccnn.training.compute import compile_model


def input_trainer(exp, world, shape, batch) -> Trainer:
    """hpccnn's way (hpccnn_trainer's model, optimizer and ranks) on real images of the folder
    HPCCNN_BENCH_DATA, read as HPCCNN_BENCH_INPUT says (INPUTS): the pack "bench" in its cache/ held in
    memory or streamed from its shards, or its jpeg/CLASS/*.jpg decoded on the fly. Each rank trains on
    its own share of the training images, epoch after epoch, for as many steps as asked."""
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
    splits = datasets.load_split(exp, folder / "cache")
    x, y = inputs.shard(splits.x_train, world.rank, world.size), inputs.shard(splits.y_train, world.rank, world.size)
    per_epoch = len(x) // per_rank

    def dataset(steps, seed):
        return inputs.train_pipeline(x, y, Batches(per_rank, per_epoch, seed=(seed, world.rank),
                                                   epochs=math.ceil(steps / per_epoch)), splits.scale)

    return dataset, {"input": "the pack held in memory, hpccnn.data.datasets's pipeline", "train_images": len(splits.x_train),
                     "steps_per_epoch": per_epoch}


def _streamed(exp, folder, world, per_rank, shape):
    """The pack streamed from its shards (hpccnn.training.stream), each rank its own shards."""
    streamed = stream.open_pack(exp, folder / "cache")
    per_epoch = stream.steps_per_epoch(streamed, world.size, per_rank)[0]

    def dataset(steps, seed):
        return stream.train_pipeline(streamed, world.rank, world.size,
                                     Batches(per_rank, per_epoch, seed, epochs=math.ceil(steps / per_epoch)), 0)

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
