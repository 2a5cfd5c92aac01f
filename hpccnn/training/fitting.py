"""A run's training and how it ends: Keras' fit with hpccnn's callbacks in Horovod's order, then the test set
predicted by every rank and scored, the results written by rank 0; or the run stopped by a signal, its loss
diverged, or it failed, recorded as such.

Callback order (Horovod's rule): broadcast the initial weights, average the metrics
across ranks, and only then anything that reads metrics or sets the learning rate.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from hpccnn.common.errors import UserError
from hpccnn.common.runs import COMPLETED, FAILED, INTERRUPTED
from hpccnn.common.slurm import requeued_by_slurm
from hpccnn.training import checkpoint, dist, memory, stream
from hpccnn.training.callbacks import EpochStats, Progress, RankZeroRecorder, ReseedRandomLayers, Watchdog, lr_warmup
from hpccnn.training.inputs import pipeline, shard


def fit_and_record(context):
    """Trains from the last finished epoch (or the first) to exp.epochs; rank 0 records how it ended:
    completed with the test scores, interrupted by a signal, or failed and why."""
    exp, world, writer, stopper, inputs = context.exp, context.world, context.writer, context.stopper, context.inputs

    def record_stall(message):  # called by the watchdog's thread before it ends this rank
        if writer is not None:
            writer.failed(f"{message}; resume with --resume {writer.folder}", context.started)

    watchdog = Watchdog(context.stall_limit, record_stall)  # started with training, on every rank
    callbacks, recorder = assemble_callbacks(context, watchdog)
    context.started = time.time()
    watchdog.start()
    try:
        if context.first_epoch < exp.epochs:
            context.model.fit(inputs.train, steps_per_epoch=inputs.steps, epochs=exp.epochs,
                              initial_epoch=context.first_epoch, validation_data=inputs.val,
                              validation_steps=inputs.val_steps, callbacks=callbacks,
                              verbose=2 if world.is_main else 0)
        if stopper.diverged:
            raise diverged(stopper, exp, writer, context.started)
        if stopper.stopped:
            raise stopped(stopper, writer, context.started)
        outputs = gather_predictions(context.model, inputs, exp, world, [watchdog])
        memory_per_rank = dist.allgather_object({**memory.usage(), "data": inputs.held.facts()})
        watchdog.stop()
        if writer is not None:
            writer.memory(memory_per_rank)
        if not world.is_main:
            return None, None
        return record_results(context, outputs, recorder)
    except (Interrupted, Diverged):  # recorded already
        raise
    except BaseException as err:
        if writer is not None:
            writer.failed(f"{type(err).__name__}: {err}", context.started)
        raise
    finally:
        watchdog.stop()


def assemble_callbacks(context, watchdog):
    """(callbacks in Horovod's order, rank 0's recorder or None)."""
    import tensorflow as tf

    exp, world, inputs, writer, resume = context.exp, context.world, context.inputs, context.writer, context.resume
    hvd = dist.hvd()
    callbacks = [
        watchdog,
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),  # every rank starts from rank 0's weights
        # metrics averaged over ranks before anyone reads them; one rank's are its own (and each
        # allreduce would wait for Horovod's next cycle, slow for a process alone: hpccnn.training.dist)
        *([hvd.callbacks.MetricAverageCallback()] if world.size > 1 else []),
        context.stopper,  # before anything that records an epoch: a cut-short epoch is not one
        ReseedRandomLayers((exp.seed, world.rank)),
    ]
    if exp.warmup_epochs:  # ramps lr from lr/size up to lr: large effective batches diverge otherwise
        callbacks.append(lr_warmup(context.lr, exp.warmup_epochs, inputs.steps, exp.steps_per_execution))
    stateful = []
    if exp.reduce_lr_monitor:
        stateful.append(tf.keras.callbacks.ReduceLROnPlateau(
            monitor=exp.reduce_lr_monitor, factor=exp.reduce_lr_factor, patience=exp.reduce_lr_patience,
            min_delta=exp.reduce_lr_min_delta, verbose=int(world.is_main)))
        callbacks += stateful
        if resume is not None:
            callbacks += checkpoint.restore_callbacks(stateful, resume)
    callbacks.append(EpochStats(inputs.steps * inputs.batch * world.size))
    if writer is None:
        return callbacks, None
    recorder = RankZeroRecorder(writer, context.stopper, resume.history if resume is not None else [], stateful)
    board = tf.keras.callbacks.TensorBoard(log_dir=str(writer.path("tensorboard")), profile_batch=0)
    progress = Progress(inputs.steps, inputs.batch * world.size, exp.epochs, progress_interval())
    return [*callbacks, recorder, board, progress], recorder


def gather_predictions(model, inputs, exp, world, callbacks):
    """Each rank predicts its share of the test set; rank 0 gets all of it, in test-set order: (outputs, true
    labels, the test images) on rank 0, None on the others."""
    splits = inputs.splits
    if isinstance(splits, stream.Streamed):
        index, y = stream.test_labels(splits, world.rank, world.size)
        ds = stream.eval_pipeline(splits, "test", world.rank, world.size, inputs.batch, exp.image_size)
        images = stream.TestImages(splits)
    else:
        index = shard(np.arange(len(splits.x_test)), world.rank, world.size)
        x, y = splits.x_test[index], splits.y_test[index]
        ds, images = pipeline(x, y, inputs.batch, splits.scale, exp.image_size), splits.x_test
    outputs = model.predict(ds, verbose=0, callbacks=callbacks)
    parts = dist.allgather_object((index, y, outputs))
    if not world.is_main:
        return None
    index = np.concatenate([p[0] for p in parts])
    order = np.argsort(index, kind="stable")
    if not np.array_equal(index[order], np.arange(len(images))) or len(index) != sum(len(p[2]) for p in parts):
        raise RuntimeError(f"the ranks' predictions cover {len(np.unique(index))} distinct test images of "
                           f"{len(images)} in {len(index)} predictions; each should be predicted exactly once")
    return np.concatenate([p[2] for p in parts])[order], np.concatenate([p[1] for p in parts])[order], images


def score(outputs, y_true, logits: bool):
    """(accuracy, loss, predicted classes) of the model's outputs on the test set."""
    import tensorflow as tf

    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=logits)
    loss = float(loss_fn(y_true, outputs).numpy())
    y_pred = outputs.argmax(axis=1)
    return float((y_pred == y_true).mean()), loss, y_pred


def record_results(context, predicted, recorder):
    """Rank 0, after training: the test set scored (gather_predictions), every result written, the run
    completed."""
    writer, world, inputs = context.writer, context.world, context.inputs
    outputs, y_true, images = predicted
    accuracy, loss, y_pred = score(outputs, y_true, context.spec.logits)
    writer.history(recorder.rows, curves=True)
    writer.evaluation(y_true, y_pred, inputs.splits.classes, images=images)
    if context.options.save_model:
        writer.model("model.h5", context.model)
    writer.status(COMPLETED, test_accuracy=accuracy, test_loss=loss, test_images=int(len(y_pred)),
                  wall_seconds=writer.wall_seconds(context.started), world_size=world.size)
    print(f"hpccnn: test accuracy {accuracy:.4f} (loss {loss:.4f}) on {len(y_pred)} test images", flush=True)
    print(f"hpccnn: results in {writer.folder}", flush=True)
    return writer.folder, accuracy


EXIT_INTERRUPTED = 3  # stopped by a signal after saving its last finished epoch
EXIT_DIVERGED = 5  # the loss became NaN or infinite (4 is the watchdog's: a rank stalled)


class Interrupted(Exception):
    """Training stopped on SIGUSR2/SIGTERM after saving its last finished epoch; resume from the folder."""

    def __init__(self, signal_name, folder, last_epoch, requeued):
        self.folder, self.last_epoch, self.requeued = folder, last_epoch, requeued
        then = ("SLURM will start the job again and it resumes from there by itself (a --resume by hand would "
                "train a second copy beside it)" if requeued else f"resume with --resume {folder}")
        super().__init__(f"stopped by {signal_name} after epoch {last_epoch}; {then}")


class Diverged(Exception):
    """The loss became NaN or infinite; the run was recorded failed, with the epochs before it."""


def diverged(stopper, exp, writer, started) -> Diverged:
    """After a non-finite loss, on every rank: rank 0 records the run failed with the reason, and the
    other ranks wait for it before leaving (as in stopped())."""
    what = stopper.diverged
    reason = (f"loss became {what['loss']} in epoch {what['epoch']} (step {what['step']}); "
              f"try a smaller --learning-rate than {exp.learning_rate:g}")
    folder = None
    if writer is not None:
        writer.status(FAILED, reason=reason, diverged=what, wall_seconds=writer.wall_seconds(started))
        folder = str(writer.folder)
    folder = dist.broadcast_object(folder)
    return Diverged(f"{reason}; recorded as failed in {folder}")


def stall_timeout() -> float:
    """HPCCNN_STALL_TIMEOUT: seconds without progress after which a rank gives up (0: never)."""
    return seconds_from_env("HPCCNN_STALL_TIMEOUT", 600, "0 turns the watchdog off")


def progress_interval() -> float:
    """HPCCNN_PROGRESS_SECONDS: seconds between rank 0's progress lines within an epoch in a log."""
    return seconds_from_env("HPCCNN_PROGRESS_SECONDS", 30, "0 writes a line after every step")


def seconds_from_env(name: str, default: float, zero: str) -> float:
    value = os.environ.get(name, str(default))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise UserError(f"{name}={value!r} must be a number of seconds ({zero})")
    return seconds


def stopped(stopper, writer, started) -> Interrupted:
    """After a stop signal, on every rank: rank 0 records it and, for SLURM's warning signal,
    requeues the job; the other ranks wait for rank 0 before leaving, because a rank that exits
    first makes srun (--kill-on-bad-exit) or mpirun kill rank 0 before it has done either."""
    name = signal.Signals(stopper.signal).name
    job = os.environ.get("SLURM_JOB_ID")
    requeue = stopper.signal == signal.SIGUSR2 and job is not None
    outcome = None
    if writer is not None:
        last = writer.metrics.get("last_epoch", 0)
        writer.status(INTERRUPTED, reason=f"stopped by {name}", last_epoch=last, requeued=requeue,
                      wall_seconds=writer.wall_seconds(started))  # first: SLURM may end this process any moment
        if not requeue and requeued_by_slurm(job, checkpoint.restart_count()):
            # SIGTERM from scontrol requeue or a preemption that requeues: SLURM starts the job again itself
            print(f"hpccnn: stopped by {name} after epoch {last}; SLURM is requeueing job {job}, which resumes "
                  f"from {writer.folder}", file=sys.stderr, flush=True)
            writer.status(INTERRUPTED, requeued=True)
            requeue = True
        elif requeue:  # SLURM stops every rank now; the requeued job finds this folder and resumes it
            # said first: once requeued, SLURM may end this process before it says anything more
            print(f"hpccnn: stopped by {name} after epoch {last}; requeueing job {os.environ['SLURM_JOB_ID']}, "
                  f"which resumes from {writer.folder}", file=sys.stderr, flush=True)
            done = subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], capture_output=True,
                                  text=True, timeout=60)
            requeue = done.returncode == 0
            if not requeue:
                writer.status(INTERRUPTED, requeued=False, reason=f"stopped by {name}; scontrol requeue "
                                                                    f"failed: {done.stderr.strip()[:200]}")
        outcome = (str(writer.folder), last, requeue)
    folder, last, requeue = dist.broadcast_object(outcome)  # the others wait here for rank 0
    return Interrupted(name, folder, last, requeue)
