"""One training step through hpccnn's distributed optimizer; rank 0 saves the weights.

Run as one process it takes the whole batch; under horovodrun -np 2 each rank takes
half of it (hpccnn's own sharding) and Horovod averages the gradients. With
ONE_STEP_OPTIMIZER=horovod_average the optimizer is Horovod's own DistributedOptimizer, averaging as
Horovod does, instead of hpccnn's (hpccnn.training.dist.distributed_optimizer).
"""

import os
import sys

import numpy as np
import tensorflow as tf

from hpccnn.data import datasets as data
from hpccnn.training import dist, inputs
from hpccnn.models.catalog import get_experiment
from hpccnn.models.experiments import parse_assignment, parse_value, with_overrides
from hpccnn.models.zoo import get_model
from hpccnn.training.compute import compile_model, make_optimizer, start

out, batch = sys.argv[1], 64
settings = dict(parse_assignment(item, "one_step.py") for item in sys.argv[2:])  # e.g. fp16_allreduce=true
# cnn_v3 has neither dropout nor batch norm, so one step is a deterministic function of the batch.
exp = with_overrides(get_experiment("digits_cnn"), dict(model="cnn_v3", image_size=32, optimizer="sgd",
                                                        learning_rate=0.5,
                                                        **{k: parse_value(k, v) for k, v in settings.items()}))
world, _ = start(exp)
tf.keras.utils.set_random_seed(0)
model, _ = compile_model(exp, world, get_model(exp.model), (32, 32, 1), 10)
if os.environ.get("ONE_STEP_OPTIMIZER") == "horovod_average":  # Horovod's own average, to compare with
    hvd = dist.hvd()
    model.compile(optimizer=hvd.DistributedOptimizer(make_optimizer(exp.optimizer, exp.learning_rate), op=hvd.Average),
                  loss=model.loss, metrics=["accuracy"], steps_per_execution=exp.steps_per_execution)
raw = data.load("digits")
x, y = inputs.shard(raw.x_train[:batch], world.rank, world.size), inputs.shard(raw.y_train[:batch], world.rank, world.size)
ds = inputs.pipeline(x, y, batch // world.size, raw.scale, image_size=32)
before = [w.copy() for w in model.get_weights()]
model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0,
          callbacks=[dist.hvd().callbacks.BroadcastGlobalVariablesCallback(0)])
if world.is_main:
    np.savez(out, *model.get_weights(), *before)
