"""How a rank reads a data set held in memory: its own share of the arrays, through tf.data pipelines.

Images stay uint8 in memory (4x smaller than float32); scaling to 0..1 and resizing happen per batch inside
the tf.data graph, so there is no per-step Python work. A pack streamed from its shards is read by
hpccnn.training.stream instead, batched as Batches says and scaled by the same prepare.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batches:
    """Which training batches a rank takes: batch images per step, steps per epoch, in epochs
    first_epoch..epochs-1, each epoch's order a function of (seed, epoch) alone."""

    batch: int
    steps: int
    seed: object = 0  # an int, or a tuple such as (--seed, rank)
    first_epoch: int = 0
    epochs: int = 1


def shard(x, rank, size):
    """Rank's share of an array: every size-th element from rank on (disjoint, covers all)."""
    return x[rank::size]


def prepare(scale, image_size):
    """A batch's (images, labels) to float32 images scaled by scale to 0..1, resized to image_size x image_size
    where that differs from theirs (0: as they are)."""
    import tensorflow as tf

    def prepared(images, labels):
        images = tf.cast(images, tf.float32) * scale
        if image_size and image_size != images.shape[1]:
            images = tf.image.resize(images, (image_size, image_size), method="bilinear")
        return images, labels

    return prepared


def pipeline(x, y, batch, scale, image_size=0):
    """Evaluation batches, in order, scaled to 0..1 and resized inside tf.data, prefetched."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    return ds.map(prepare(scale, image_size), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def epoch_order(n: int, seed, epoch: int, count: int) -> np.ndarray:
    """The first count of n images, shuffled for this epoch: a function of (seed, epoch) alone."""
    return np.random.default_rng([*np.atleast_1d(seed), epoch]).permutation(n)[:count].astype(np.int64)


def train_pipeline(x, y, batches: Batches, scale, image_size=0):
    """Training batches for epochs batches.first_epoch..batches.epochs-1, batches.steps per epoch.

    Each epoch's order depends only on (seed, epoch), never on how many epochs this process
    has run, so a run resumed at epoch k sees exactly the batches it would have seen. Images
    stay uint8 in memory; each batch is gathered, scaled and resized inside the tf.data graph.
    """
    import tensorflow as tf

    batch = batches.batch
    orders = [epoch_order(len(x), batches.seed, e, batches.steps * batch)
              for e in range(batches.first_epoch, batches.epochs)]
    order = np.concatenate(orders) if orders else np.zeros(0, np.int64)
    images, labels = tf.constant(x), tf.constant(y)
    ds = tf.data.Dataset.from_tensor_slices(order).batch(batch, drop_remainder=True)
    ds = ds.map(lambda i: (tf.gather(images, i), tf.gather(labels, i)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(prepare(scale, image_size), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
