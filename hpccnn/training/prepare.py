"""A run's data as this rank trains on it (Inputs): the data set split (one copy per node) and this rank's shard
pipelined, or a staged pack streamed from its shards, each rank reading its own."""

import dataclasses

from hpccnn.common.errors import UserError
from hpccnn.training import inputs, shared, stream
from hpccnn.training.context import Inputs
from hpccnn.training.resuming import read_at_start


def fit_image_size(exp, spec, splits, world):
    """exp, with its images resized to the model's seed size when the data set's are too small for it.

    Only when no --image-size was given: cnn_v3 (seed 001, 32x32 CIFAR-10) on 8x8 digits
    would shrink them to nothing, so digits are resized to 32x32 for it.
    """
    if exp.image_size or spec.output_side(splits.shape[0]) > 0:
        return exp
    if world.is_main:
        print(f"hpccnn: {exp.dataset}'s {splits.shape[0]}x{splits.shape[1]} images are too small for {exp.model}; "
              f"resized to its {spec.input_side}x{spec.input_side} (set --image-size to choose)", flush=True)
    return dataclasses.replace(exp, image_size=spec.input_side)


def per_rank_batch(exp, world) -> int:
    if exp.batch_per_rank:
        return exp.batch_size
    if exp.batch_size < world.size:
        raise UserError(f"--batch-size {exp.batch_size} is smaller than the {world.size} ranks; "
                        f"use at least {world.size} or --batch-per-rank true")
    return exp.batch_size // world.size


def prepare_data(context):
    """(exp with the image size the model needs, Inputs): the data split (one copy per node), sharded and
    pipelined; or a pack streamed from its shards. Every rank calls it together (hpccnn.training.shared's window is
    made by the node's ranks together)."""
    exp, world, data_dir = context.exp, context.world, context.options.data_dir
    batch = per_rank_batch(exp, world)
    read = stream.choose(exp, world, data_dir, read_at_start(context.resume))
    if read is not None and read["read"] == "stream":
        return streamed_data(context, batch, read)
    splits, held = shared.load(exp, world, data_dir)
    exp = fit_image_size(exp, context.spec, splits, world)
    steps = (len(splits.x_train) // world.size) // batch
    if steps == 0:
        raise UserError(f"batch of {batch} per rank is larger than the {len(splits.x_train) // world.size} "
                        f"training images each of the {world.size} ranks has; use a smaller --batch-size")
    if exp.steps_per_epoch:
        steps = min(steps, exp.steps_per_epoch)

    def mine(array):
        part = inputs.shard(array, world.rank, world.size)
        # a shard of one image is contiguous, and TensorFlow could keep pointing into the window
        return part.copy() if part.flags.c_contiguous and held.window is not None else part

    x_train, y_train, x_val, y_val = (mine(a) for a in (splits.x_train, splits.y_train, splits.x_val, splits.y_val))
    held.shard_bytes = sum(a.nbytes for a in (x_train, y_train, x_val, y_val))  # what TensorFlow copies
    batches = inputs.Batches(batch, steps, seed=(exp.seed, world.rank), first_epoch=context.first_epoch,
                             epochs=exp.epochs)
    train_ds = inputs.train_pipeline(x_train, y_train, batches, splits.scale, exp.image_size)
    val_ds = inputs.pipeline(x_val, y_val, batch, splits.scale, exp.image_size)
    val_steps = min(exp.steps_per_epoch, -(-len(x_val) // batch)) if exp.steps_per_epoch else None
    return exp, Inputs(splits, held, batch, steps, val_steps, train_ds, val_ds, read)


def streamed_data(context, batch: int, read: dict):
    """(exp, Inputs) of a pack streamed from its shards (hpccnn.training.stream): each rank reads its own."""
    world = context.world
    streamed = stream.open_pack(context.exp, context.options.data_dir)
    exp = fit_image_size(context.exp, context.spec, streamed, world)
    steps, fewest, most = stream.steps_per_epoch(streamed, world.size, batch)
    if steps == 0:
        raise UserError(f"batch of {batch} per rank is larger than the {fewest} training images each of the "
                        f"{world.size} ranks reads; use a smaller --batch-size")
    if exp.steps_per_epoch:
        steps = min(steps, exp.steps_per_epoch)
    mine = stream.share(streamed.index, streamed.sets["train"], world.rank, world.size)
    batches = inputs.Batches(batch, steps, exp.seed, context.first_epoch, exp.epochs)
    train_ds = stream.train_pipeline(streamed, world.rank, world.size, batches, exp.image_size)
    val_ds = stream.eval_pipeline(streamed, "val", world.rank, world.size, batch, exp.image_size)
    val_count = len(stream.share(streamed.index, streamed.sets["val"], world.rank, world.size))
    val_steps = min(exp.steps_per_epoch, -(-val_count // batch)) if exp.steps_per_epoch else None
    block = stream.shuffle_buffer(streamed, len(mine), batch)
    reads = [f for name in ("train", "val", "test") for f, _, _ in
             stream.reads(streamed.index["splits"][streamed.sets[name][0]]["shards"], world.rank, world.size)]
    held = shared.Held(shared.STREAMED, own_bytes=block * stream.record_bytes(streamed), reads=sorted(set(reads)))
    read = {**read, "shuffle_buffer_images": block, "rank_images": {"fewest": fewest, "most": most}}
    return exp, Inputs(streamed, held, batch, steps, val_steps, train_ds, val_ds, read)
