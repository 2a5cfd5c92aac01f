"""What each runner of python -m hpccnn.bench builds in a measurement's process: a Trainer; and the random
images, and a process's part of each global batch, that the runners train on."""

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


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


def my_part(x, y, batch, rank, size):
    """Of each global batch of x, y (in order), the part of process rank of size: what it trains on."""
    per = batch // size
    index = np.concatenate([np.arange(start + rank * per, start + (rank + 1) * per)
                            for start in range(0, len(x), batch)])
    return x[index], y[index]


def random_images(shape, n, seed=0):
    """n random uint8 images of shape and their labels (10 classes), the same for the same seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)
