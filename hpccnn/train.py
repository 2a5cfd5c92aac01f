"""python -m hpccnn.train: trains one experiment, data-parallel with Horovod.

The same command runs as one process, under ``horovodrun -np N``, ``mpirun -np N``,
``srun --mpi=pmix`` and submitit: the rank comes from Horovod, and every side effect
sits behind ``world.is_main`` (rank 0) in the results writer.

Callback order (Horovod's rule): broadcast the initial weights, average the metrics
across ranks, and only then anything that reads metrics or sets the learning rate.
"""

import argparse
import sys
import time

import numpy as np

from hpccnn import data, dist
from hpccnn.errors import UserError, cli
from hpccnn.experiments import EXPERIMENTS, SETTABLE, get_experiment, parse_value, with_overrides
from hpccnn.models import get_model

OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adadelta": "Adadelta", "rmsprop": "RMSprop"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see python -m hpccnn.train --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m hpccnn.train", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--experiment", default="digits_cnn", help="a named experiment (see --list)")
    p.add_argument("--list", action="store_true", help="print the experiments and exit")
    p.add_argument("--data-dir", default=None, help="staged data cache (default $HPCCNN_DATA or ~/.cache/hpccnn/data)")
    p.add_argument("--results-dir", default="results", help="run folders go to RESULTS_DIR/<date>/<run>")
    p.add_argument("--no-save-model", action="store_true", help="skip writing model.h5")
    group = p.add_argument_group("experiment settings (override the experiment's defaults)")
    for name, field in SETTABLE.items():
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar=field.type.__name__.upper())
    return p


def list_experiments() -> str:
    lines = [f"{'experiment':30} {'model':24} {'dataset':9} {'epochs':>6}  reported in the seed"]
    for e in EXPERIMENTS.values():
        lines.append(f"{e.name:30} {e.model:24} {e.dataset:9} {e.epochs:>6}  {e.reported or '-'}")
    return "\n".join(lines)


def make_optimizer(name: str, learning_rate: float):
    import tensorflow as tf

    # Keras 2.15's legacy optimizers: the ones Horovod 0.28's DistributedOptimizer wraps.
    return getattr(tf.keras.optimizers.legacy, OPTIMIZERS[name])(learning_rate=learning_rate)


def compile_model(exp, world, input_shape, classes):
    """The seed's model and optimizer, wrapped by Horovod; the learning rate scaled if asked."""
    import tensorflow as tf

    hvd = dist.hvd()
    spec = get_model(exp.model)
    model = spec(input_shape, classes, activation=exp.activation)
    lr = exp.learning_rate * (world.size if exp.scale_lr else 1)
    optimizer = hvd.DistributedOptimizer(make_optimizer(exp.optimizer, lr))  # allreduce-averages gradients
    model.compile(optimizer=optimizer, metrics=["accuracy"],
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=spec.logits))
    return model, spec, lr


def per_rank_batch(exp, world) -> int:
    if exp.batch_per_rank:
        return exp.batch_size
    if exp.batch_size < world.size:
        raise UserError(f"--batch-size {exp.batch_size} is smaller than the {world.size} ranks; "
                        f"use at least {world.size} or --batch-per-rank true")
    return exp.batch_size // world.size


def gather_predictions(model, splits, exp, world, batch):
    """Each rank predicts its shard of the test set; rank 0 gets all of it, in test-set order."""
    index = data.shard(np.arange(len(splits.x_test)), world.rank, world.size)
    x, y = splits.x_test[index], splits.y_test[index]
    outputs = model.predict(data.pipeline(x, y, batch, splits.scale, exp.image_size), verbose=0)
    parts = dist.allgather_object((index, outputs))
    if not world.is_main:
        return None
    index = np.concatenate([p[0] for p in parts])
    outputs = np.concatenate([p[1] for p in parts])[np.argsort(index)]
    return outputs


def score(outputs, y_true, logits: bool):
    import tensorflow as tf

    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=logits)
    loss = float(loss_fn(y_true, outputs).numpy())
    y_pred = outputs.argmax(axis=1)
    return float((y_pred == y_true).mean()), loss, y_pred


def run(exp, world, data_dir=None, results_dir="results", argv=(), save_model=True):
    """Trains exp on this rank; returns (run folder or None on other ranks, test accuracy)."""
    import tensorflow as tf

    from hpccnn.callbacks import EpochStats, RankZeroRecorder

    hvd = dist.hvd()
    tf.keras.utils.set_random_seed(exp.seed)
    batch = per_rank_batch(exp, world)
    splits = data.split(data.load(exp.dataset, data_dir), exp.validation, exp.val_fraction,
                        exp.test_fraction, exp.seed)
    x_train = data.shard(splits.x_train, world.rank, world.size)
    y_train = data.shard(splits.y_train, world.rank, world.size)
    steps = (len(splits.x_train) // world.size) // batch  # the same on every rank: allreduce needs it
    if steps == 0:
        raise UserError(f"batch of {batch} per rank is larger than the {len(splits.x_train) // world.size} "
                        f"training images each of the {world.size} ranks has; use a smaller --batch-size")
    train_ds = data.pipeline(x_train, y_train, batch, splits.scale, exp.image_size, training=True,
                             seed=exp.seed + world.rank)
    val_ds = data.pipeline(data.shard(splits.x_val, world.rank, world.size),
                           data.shard(splits.y_val, world.rank, world.size), batch, splits.scale, exp.image_size)
    side = exp.image_size or splits.shape[0]
    model, spec, lr = compile_model(exp, world, (side, side, splits.shape[2]), len(splits.classes))

    hosts = dist.allgather_object(dist.host_and_rank(world))
    writer = None
    if world.is_main:
        from hpccnn.results import RunWriter

        writer = RunWriter.create(results_dir, exp.name, world)
        writer.start(exp, world, hosts, list(argv))
        print(f"hpccnn: {exp.name} on {world.size} rank(s), {batch} images per rank per step, "
              f"{steps} steps per epoch; results in {writer.folder}", flush=True)

    callbacks = [
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),  # every rank starts from rank 0's weights
        hvd.callbacks.MetricAverageCallback(),  # metrics averaged over ranks before anyone reads them
    ]
    if exp.warmup_epochs:  # ramps lr from lr/size up to lr: large effective batches diverge otherwise
        callbacks.append(hvd.callbacks.LearningRateWarmupCallback(
            initial_lr=lr, warmup_epochs=exp.warmup_epochs, steps_per_epoch=steps, verbose=0))
    if exp.reduce_lr_monitor:
        callbacks.append(tf.keras.callbacks.ReduceLROnPlateau(
            monitor=exp.reduce_lr_monitor, factor=exp.reduce_lr_factor, patience=exp.reduce_lr_patience,
            min_delta=exp.reduce_lr_min_delta, verbose=int(world.is_main)))
    callbacks.append(EpochStats(steps * batch * world.size))
    if world.is_main:
        recorder = RankZeroRecorder(writer)
        callbacks += [recorder,
                      tf.keras.callbacks.TensorBoard(log_dir=str(writer.path("tensorboard")), profile_batch=0)]

    started = time.time()
    try:
        model.fit(train_ds, steps_per_epoch=steps, epochs=exp.epochs, validation_data=val_ds,
                  callbacks=callbacks, verbose=2 if world.is_main else 0)  # a line per epoch, rank 0
        outputs = gather_predictions(model, splits, exp, world, batch)
        if not world.is_main:
            return None, None
        accuracy, loss, y_pred = score(outputs, splits.y_test, spec.logits)
        writer.history(recorder.rows, curves=True)
        writer.evaluation(splits.y_test, y_pred, splits.classes)
        if save_model:
            writer.model("model.h5", model)
        writer.status("completed", test_accuracy=accuracy, test_loss=loss, test_images=int(len(y_pred)),
                      wall_seconds=round(time.time() - started, 3), world_size=world.size)
        print(f"hpccnn: test accuracy {accuracy:.4f} (loss {loss:.4f}) on {len(y_pred)} test images", flush=True)
        print(f"hpccnn: results in {writer.folder}", flush=True)
        return writer.folder, accuracy
    except BaseException as err:
        if writer is not None:
            writer.status("failed", reason=f"{type(err).__name__}: {err}",
                          wall_seconds=round(time.time() - started, 3))
        raise


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.list:
        print(list_experiments())
        return 0
    overrides = {k: parse_value(k, getattr(args, k)) for k in SETTABLE if getattr(args, k) is not None}
    exp = with_overrides(get_experiment(args.experiment), overrides)
    world = dist.init()
    run(exp, world, args.data_dir, args.results_dir, ["-m", "hpccnn.train", *argv], not args.no_save_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
