"""python -m hpccnn.train: trains one experiment, data-parallel with Horovod.

The same command runs as one process, under ``horovodrun -np N``, ``mpirun -np N``,
``srun --mpi=pmix`` and submitit: the rank comes from Horovod, and every side effect
sits behind ``world.is_main`` (rank 0) in the results writer.

Callback order (Horovod's rule): broadcast the initial weights, average the metrics
across ranks, and only then anything that reads metrics or sets the learning rate.
"""

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from hpccnn.training import checkpoint
from hpccnn.data import datasets as data
from hpccnn.training import dist, memory
from hpccnn.models import zoo as models
from hpccnn.training import shared, stream
from hpccnn.models import userconfig
from hpccnn.data import userdata
from hpccnn.models import usermodel
from hpccnn.common.errors import Parser, UserError, cli
from hpccnn.models.experiments import (EXPERIMENTS, OPTIMIZERS, Experiment, add_setting_options, flag, get_experiment,
                                overrides, with_overrides)
from hpccnn.models.zoo import get_model
from hpccnn.common.runs import COMPLETED, FAILED, INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m hpccnn.train", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--experiment", default=None,
                   help="a named experiment (see --list); without it, --model of your own with --dataset, "
                        "or else digits_cnn")
    p.add_argument("--list", action="store_true", help="print the experiments (built in, and yours) and exit")
    userconfig.add_option(p)
    p.add_argument("--data-dir", default=None, help="staged data cache (default $HPCCNN_DATA or ~/.cache/hpccnn/data)")
    p.add_argument("--results-dir", default="results", help="run folders go to RESULTS_DIR/<date>/<run>")
    p.add_argument("--run-dir", default=None,
                   help="create exactly this run folder instead (must not exist; hpccnn.submit sets it per grid point)")
    p.add_argument("--no-save-model", action="store_true", help="skip writing model.h5")
    p.add_argument("--resume", metavar="RUN_FOLDER", default=None,
                   help="continue a run from its last finished epoch (its own settings; --epochs may grow)")
    add_setting_options(p.add_argument_group("experiment settings (override the experiment's defaults)"))
    return p


def list_experiments() -> str:
    """The built-in experiments, then the user's (marked as theirs, with their file)."""
    lines = [f"{'experiment':30} {'model':24} {'dataset':13} {'epochs':>6}  reported in the seed"]
    for e in EXPERIMENTS.values():
        lines.append(f"{e.name:30} {e.model:24} {e.dataset:13} {e.epochs:>6}  {e.reported or '-'}")
    yours = userconfig.entries()
    for e in yours.experiments.values():
        lines.append(f"{e.name:30} {e.model.rpartition('/')[2]:24} {e.dataset:13} {e.epochs:>6}  "
                     f"yours ({yours.path}){': ' + e.description if e.description else ''}")
    return "\n".join(lines)


def make_optimizer(name: str, learning_rate: float):
    import tensorflow as tf

    # Keras 2.15's legacy optimizers: the ones Horovod 0.28's DistributedOptimizer wraps.
    return getattr(tf.keras.optimizers.legacy, OPTIMIZERS[name])(learning_rate=learning_rate)


def cpu_xla(exp) -> bool:
    """Whether exp compiles with XLA on CPUs: only when asked (--xla on). Its effect there depends on
    the CPU, not only the model: one model ran faster with it on one CPU and slower on another
    (README, Performance), so no model turns it on by itself."""
    return exp.xla == "on"


def speed_settings(exp, gpus: int) -> dict:
    """What exp's speed settings come to on a node with this many GPUs. "auto" is on with a GPU and
    off on CPUs: float16 is far slower there (README, Performance), and XLA's effect depends on the
    CPU (cpu_xla); python -m hpccnn.bench --variants measures both on the node at hand.
    mixed_precision comes to the compute type: "float16", "bfloat16" (only when asked) or "off" (float32)."""
    def on(value):
        return value == "on" or (value == "auto" and gpus > 0)

    precision = "bfloat16" if exp.mixed_precision == "bfloat16" else "float16" if on(exp.mixed_precision) else "off"
    return {"device": "GPU" if gpus else "CPU", "xla": on(exp.xla) or cpu_xla(exp),
            "mixed_precision": precision, "steps_per_execution": exp.steps_per_execution,
            "fp16_allreduce": exp.fp16_allreduce}


POLICIES = {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16", "off": "float32"}


def cpu_has_bfloat16(cpuinfo="/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX), which oneDNN uses."""
    return bool(dist.cpu_model_and_flags(cpuinfo)[1] & {"avx512_bf16", "amx_bf16"})


XLA_CPU_FLAGS = ("--tf_xla_auto_jit=2", "--tf_xla_cpu_global_jit")


def use_xla(exp, environ=os.environ) -> None:
    """XLA on CPUs, set up before TensorFlow starts (it reads TF_XLA_FLAGS once, on import).

    XLA here is TensorFlow's auto-clustering: it compiles the parts of each step XLA supports and
    runs the rest (Horovod's allreduce has no XLA kernel on CPUs) as usual; Keras' jit_compile=True
    would compile the whole step and fails on HorovodAllreduce. CPU clusters need these flags at
    import; GPU clusters are turned on later, by start(), once TensorFlow has seen the GPUs.
    Where XLA is not wanted on CPUs, nothing is set.
    """
    if not cpu_xla(exp):
        return
    flags = environ.get("TF_XLA_FLAGS", "").split()
    missing = [f for f in XLA_CPU_FLAGS if f not in flags]
    if missing and "tensorflow" in sys.modules:
        print("hpccnn: XLA can't be turned on in a process that has already started TensorFlow "
              "(--cluster debug runs every point in one process)", file=sys.stderr, flush=True)
    environ["TF_XLA_FLAGS"] = " ".join([*flags, *missing])


def start(exp):
    """This process's set-up for exp, in the order TensorFlow needs: XLA's CPU flags before it starts,
    then Horovod and the threads per rank, then the dtype policy and GPU auto-clustering once the
    GPUs are visible. Settings that are global to the process live here, not in compile_model; under
    --cluster debug every point runs train() again, so each one sets them for itself.

    Returns (world, speed settings as applied)."""
    use_xla(exp)
    world = dist.init()
    import tensorflow as tf

    fast = speed_settings(exp, len(tf.config.get_visible_devices("GPU")))
    tf.keras.mixed_precision.set_global_policy(POLICIES[fast["mixed_precision"]])
    if fast["mixed_precision"] == "bfloat16" and fast["device"] == "CPU" and not cpu_has_bfloat16() and world.is_main:
        print("hpccnn: this CPU has neither AVX-512 BF16 nor AMX, so bfloat16 is computed in software and is "
              "likely slower than float32; measure it with python -m hpccnn.bench --variants bfloat16",
              file=sys.stderr, flush=True)
    # GPU operations; CPU ones were set up by use_xla before TensorFlow started
    tf.config.optimizer.set_jit("autoclustering" if fast["xla"] else False)
    return world, fast


def compile_model(exp, world, spec, input_shape, classes):
    """The model (spec: a seed's from hpccnn.models.zoo, or the user's) and optimizer, wrapped by Horovod; the
    learning rate scaled if asked. Returns (model, learning rate).

    A model the user's function compiled keeps its loss and metrics (accuracy added when missing: the
    reports and halving read it) and its optimizer, wrapped by Horovod's as in Horovod's Keras examples;
    any other is compiled as the seeds' are, the loss from logits or probabilities as its outputs are."""
    import tensorflow as tf

    hvd = dist.hvd()
    model = spec(input_shape, classes, activation=exp.activation)
    compression = hvd.Compression.fp16 if exp.fp16_allreduce else hvd.Compression.none
    if getattr(model, "optimizer", None) is not None:  # compiled by the user's function
        own = usermodel.legacy_optimizer(model.optimizer)
        schedule = isinstance(own._get_hyper("learning_rate"), tf.keras.optimizers.schedules.LearningRateSchedule)
        if schedule:  # the user's schedule runs as it is (neither scaled nor warmed up)
            lr = float(own._get_hyper("learning_rate")(0))
        else:
            lr = float(tf.keras.backend.get_value(own.learning_rate)) * (world.size if exp.scale_lr else 1)
            tf.keras.backend.set_value(own.learning_rate, lr)
        loss, metrics = model.loss, usermodel.metrics_with_accuracy(model)
        if world.is_main:
            rate = "its own learning-rate schedule" if schedule else f"learning rate {lr:g}"
            print(f"hpccnn: {exp.model} came compiled: its loss and metrics kept, its {type(own).__name__} "
                  f"({rate}) wrapped by Horovod's DistributedOptimizer", flush=True)
    else:
        lr = exp.learning_rate * (world.size if exp.scale_lr else 1)
        own = make_optimizer(exp.optimizer, lr)
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=spec.logits)
        metrics = ["accuracy"]
    # allreduce-averages gradients; Keras adds loss scaling on top under mixed precision
    optimizer = dist.distributed_optimizer(own, compression, world.size)
    model.compile(optimizer=optimizer, metrics=metrics, steps_per_execution=exp.steps_per_execution, loss=loss)
    return model, lr


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


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The data as this rank trains on it."""

    splits: data.Splits  # the whole data set, split the same way on every rank
    held: shared.Held  # how this rank holds it: in its node's shared window, or a copy of its own
    batch: int  # images per rank per step
    steps: int  # steps per epoch: the same on every rank, as allreduce needs
    val_steps: int | None  # validation batches per epoch (None: all of this rank's shard)
    train: object  # tf.data pipelines of this rank's shard
    val: object
    read: dict | None = None  # a pack's: held in memory or streamed, and why (hpccnn.training.stream.choose)


def prepare_data(exp, spec, world, data_dir, first_epoch: int, resume=None):
    """(exp with the image size the model needs, Inputs): the data split (one copy per node), sharded and
    pipelined; or a pack streamed from its shards. Every rank calls it together (hpccnn.training.shared's window is made
    by the node's ranks together)."""
    batch = per_rank_batch(exp, world)
    read = stream.choose(exp, world, data_dir, read_at_start(resume))
    if read is not None and read["read"] == "stream":
        return streamed_data(exp, spec, world, data_dir, first_epoch, batch, read)
    splits, held = shared.load(exp, world, data_dir)
    exp = fit_image_size(exp, spec, splits, world)
    steps = (len(splits.x_train) // world.size) // batch
    if steps == 0:
        raise UserError(f"batch of {batch} per rank is larger than the {len(splits.x_train) // world.size} "
                        f"training images each of the {world.size} ranks has; use a smaller --batch-size")
    if exp.steps_per_epoch:
        steps = min(steps, exp.steps_per_epoch)

    def mine(array):
        part = data.shard(array, world.rank, world.size)
        # a shard of one image is contiguous, and TensorFlow could keep pointing into the window
        return part.copy() if part.flags.c_contiguous and held.window is not None else part

    x_train, y_train, x_val, y_val = (mine(a) for a in (splits.x_train, splits.y_train, splits.x_val, splits.y_val))
    held.shard_bytes = sum(a.nbytes for a in (x_train, y_train, x_val, y_val))  # what TensorFlow copies
    train_ds = data.train_pipeline(x_train, y_train, batch, steps, splits.scale, exp.image_size,
                                   seed=(exp.seed, world.rank), first_epoch=first_epoch, epochs=exp.epochs)
    val_ds = data.pipeline(x_val, y_val, batch, splits.scale, exp.image_size)
    val_steps = min(exp.steps_per_epoch, -(-len(x_val) // batch)) if exp.steps_per_epoch else None
    return exp, Inputs(splits, held, batch, steps, val_steps, train_ds, val_ds, read)


def read_at_start(resume) -> str:
    """How a resumed run read its pack when it started ("memory" or "stream"), so that it goes on alike; or ""."""
    if resume is None:
        return ""
    from hpccnn.common.files import read_json

    return ((read_json(Path(resume.folder) / "provenance.json") or {}).get("input") or {}).get("read", "")


def streamed_data(exp, spec, world, data_dir, first_epoch: int, batch: int, read: dict):
    """(exp, Inputs) of a pack streamed from its shards (hpccnn.training.stream): each rank reads its own."""
    streamed = stream.open_pack(exp, data_dir)
    exp = fit_image_size(exp, spec, streamed, world)
    steps, fewest, most = stream.steps_per_epoch(streamed, world.size, batch)
    if steps == 0:
        raise UserError(f"batch of {batch} per rank is larger than the {fewest} training images each of the "
                        f"{world.size} ranks reads; use a smaller --batch-size")
    if exp.steps_per_epoch:
        steps = min(steps, exp.steps_per_epoch)
    mine = stream.share(streamed.index, streamed.sets["train"], world.rank, world.size)
    train_ds = stream.train_pipeline(streamed, world.rank, world.size, batch, steps, exp.image_size, exp.seed,
                                     first_epoch, exp.epochs)
    val_ds = stream.eval_pipeline(streamed, "val", world.rank, world.size, batch, exp.image_size)
    val_count = len(stream.share(streamed.index, streamed.sets["val"], world.rank, world.size))
    val_steps = min(exp.steps_per_epoch, -(-val_count // batch)) if exp.steps_per_epoch else None
    block = stream.shuffle_buffer(streamed, len(mine), batch)
    reads = [f for name in ("train", "val", "test") for f, _, _ in
             stream.reads(streamed.index["splits"][streamed.sets[name][0]]["shards"], world.rank, world.size)]
    held = shared.Held(shared.STREAMED, own_bytes=block * stream.record_bytes(streamed), reads=sorted(set(reads)))
    read = {**read, "shuffle_buffer_images": block, "rank_images": {"fewest": fewest, "most": most}}
    return exp, Inputs(streamed, held, batch, steps, val_steps, train_ds, val_ds, read)


def build_model(exp, spec, world, splits, resume):
    """The compiled model and its learning rate; a resumed run's as they were after its last epoch."""
    shape = (exp.image_size, exp.image_size) if exp.image_size else splits.shape[:2]
    model, lr = compile_model(exp, world, spec, (*shape, splits.shape[2]), len(splits.classes))
    if resume is not None:
        checkpoint.restore(model, resume)
    return model, lr


def open_writer(exp, world, inputs, resume, results_dir, run_dir, argv, data_dir, fast):
    """Rank 0's RunWriter (None on the other ranks): a new run folder with its provenance, or the
    resumed one's, and the guard that marks it failed should this process die."""
    hosts = dist.allgather_object(dist.host_and_rank(world))  # every rank takes part
    if not world.is_main:
        return None
    from hpccnn.training.results import RunWriter

    if resume is not None:
        writer = RunWriter.reopen(resume.folder)
        writer.resumed(resume.epoch, list(argv), hosts)
        writer.json("config.json", dataclasses.asdict(exp))  # its --epochs, if the resume changed them
    else:
        writer = RunWriter.create(results_dir, exp.name, world, run_dir)
        try:
            writer.start(exp, world, hosts, list(argv), data.resolve_data_dir(data_dir), fast, inputs.read)
        except BaseException as err:
            writer.failed(f"{type(err).__name__}: {err}")
            raise
    writer.guard()
    print(f"hpccnn: {exp.name} on {world.size} rank(s), {inputs.batch} images per rank per step, "
          f"{inputs.steps} steps per epoch; results in {writer.folder}"
          + (f"; resuming after epoch {resume.epoch}" if resume is not None else ""), flush=True)
    return writer


def assemble_callbacks(exp, world, inputs, lr, watchdog, stopper, writer, resume):
    """(callbacks in Horovod's order, rank 0's recorder or None)."""
    import tensorflow as tf

    from hpccnn.training.callbacks import EpochStats, Progress, RankZeroRecorder, ReseedRandomLayers, lr_warmup

    hvd = dist.hvd()
    callbacks = [
        watchdog,
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),  # every rank starts from rank 0's weights
        # metrics averaged over ranks before anyone reads them; one rank's are its own (and each
        # allreduce would wait for Horovod's next cycle, slow for a process alone: hpccnn.training.dist)
        *([hvd.callbacks.MetricAverageCallback()] if world.size > 1 else []),
        stopper,  # before anything that records an epoch: a cut-short epoch is not one
        ReseedRandomLayers((exp.seed, world.rank)),
    ]
    if exp.warmup_epochs:  # ramps lr from lr/size up to lr: large effective batches diverge otherwise
        callbacks.append(lr_warmup(lr, exp.warmup_epochs, inputs.steps, exp.steps_per_execution))
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
    recorder = RankZeroRecorder(writer, stopper, resume.history if resume is not None else [], stateful)
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
        index = data.shard(np.arange(len(splits.x_test)), world.rank, world.size)
        x, y = splits.x_test[index], splits.y_test[index]
        ds, images = data.pipeline(x, y, inputs.batch, splits.scale, exp.image_size), splits.x_test
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


def record_results(writer, world, model, spec, inputs, predicted, recorder, save_model, started):
    """Rank 0, after training: the test set scored (gather_predictions), every result written, the run
    completed."""
    outputs, y_true, images = predicted
    accuracy, loss, y_pred = score(outputs, y_true, spec.logits)
    writer.history(recorder.rows, curves=True)
    writer.evaluation(y_true, y_pred, inputs.splits.classes, images=images)
    if save_model:
        writer.model("model.h5", model)
    writer.status(COMPLETED, test_accuracy=accuracy, test_loss=loss, test_images=int(len(y_pred)),
                  wall_seconds=writer.wall_seconds(started), world_size=world.size)
    print(f"hpccnn: test accuracy {accuracy:.4f} (loss {loss:.4f}) on {len(y_pred)} test images", flush=True)
    print(f"hpccnn: results in {writer.folder}", flush=True)
    return writer.folder, accuracy


class Interrupted(Exception):
    """Training stopped on SIGUSR2/SIGTERM after saving its last finished epoch; resume from the folder."""

    def __init__(self, signal_name, folder, last_epoch, requeued):
        self.folder, self.last_epoch, self.requeued = folder, last_epoch, requeued
        then = "the job was requeued and will resume" if requeued else f"resume with --resume {folder}"
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


def free_data(held, world) -> None:
    """Frees the node's window on every rank together, and no rank leaves before all have freed it.

    Horovod's thread ends MPI (MPI_Finalize) as soon as any rank of the job shuts down. Had the first rank
    to finish its free exited at once, another rank's free still under way (a 147 MB window's took longer
    than that exit) would meet MPI_Finalize freeing the same window again, waiting for ranks long gone."""
    held.free()
    if world.size > 1:
        dist.broadcast_object(None)


def run(exp, world, fast, data_dir=None, results_dir="results", argv=(), save_model=True, run_dir=None, resume=None):
    """Trains exp on this rank; returns (run folder or None on other ranks, test accuracy).

    resume: a run folder to continue from its latest checkpoint. A SLURM job that was requeued
    (SLURM_RESTART_COUNT > 0) resumes its own run folder by itself (hpccnn.training.checkpoint.to_resume).
    Rank 0 decides and every rank follows (broadcast), so all of them start from the same epoch.
    """
    import tensorflow as tf

    from hpccnn.training.callbacks import StopOnSignal

    stall_limit = stall_timeout()
    stopper = StopOnSignal().install()  # noted from now on; acted on once training runs
    try:
        tf.keras.utils.set_random_seed(exp.seed)
        tf.keras.backend.experimental.enable_tf_random_generator()  # dropout reseedable per epoch
        resuming = dist.broadcast_object(
            checkpoint.to_resume(resume, results_dir, exp.name, run_dir) if world.is_main else None)
        spec = model_spec(exp, resuming, world)
        same_data(resuming, exp, data_dir)
        exp, inputs = prepare_data(exp, spec, world, data_dir, resuming.epoch if resuming is not None else 0,
                                   resuming)
        memory.check(exp, inputs.splits, exp.image_size or inputs.splits.shape[0], inputs.batch, world,
                     inputs.held.per_rank_bytes, 4 if fast["mixed_precision"] == "off" else 2,
                     fast["device"] == "GPU", spec)  # before anything is built or written
        model, lr = build_model(exp, spec, world, inputs.splits, resuming)
        writer = open_writer(exp, world, inputs, resuming, results_dir, run_dir, argv, data_dir, fast)
        if writer is not None and resuming is None:
            writer.model_source(spec)
        try:
            done = fit_and_record(exp, world, model, spec, inputs, lr, stopper, stall_limit, writer, resuming,
                                  save_model)
        except (Interrupted, Diverged):  # every rank stops at the same point: they free the window together
            free_data(inputs.held, world)
            raise
        if world.size > 1:  # the others wait here, idle, while rank 0 writes the results: not spinning in Free
            dist.broadcast_object(None)
        free_data(inputs.held, world)  # (a rank that fails alone leaves it to the end of its process)
        return done
    finally:
        stopper.uninstall()


def same_data(resume, exp, data_dir) -> None:
    """A UserError, before anything is written, when a resumed run's pack was staged again since it started, or its
    folder or file of the user's own has changed."""
    if resume is None:
        return
    from hpccnn.common.files import read_json
    from hpccnn.training.results import pack_record

    started = (read_json(Path(resume.folder) / "provenance.json") or {}).get("pack")
    now = pack_record(exp.dataset, data_dir)
    if started and started != now:
        what = (f"pack {exp.dataset} was staged again since {resume.folder} started (its index.json differs)"
                if "name" in started else f"--dataset {exp.dataset} has changed since {resume.folder} started (its "
                f"files' names, sizes or times differ)")
        raise UserError(f"{what}; a resumed run must train on the data it started with: start a new run")


def model_spec(exp, resume, world):
    """exp's model: a built-in, or the user's function; a resumed run's from the copy of the user's file
    its run folder keeps (results.RunWriter.model_source), so an edit since can't change it (said in a line)."""
    registered = models._USER_MODELS.get((exp.model, exp.model_args))
    spec = registered if getattr(registered, "from_script", False) else None
    if resume is None:
        return spec or get_model(exp.model, exp.model_args)
    kept, changed = usermodel.kept_source(resume.folder)
    if kept is not None and changed and world.is_main:
        then = ("the script's own function builds it (the copy is kept in the run folder)" if spec is not None
                else f"the run goes on with the model from its own copy, {Path(resume.folder) / kept['copy']}")
        print(f"hpccnn: {kept['file']} has {changed} since this run started; {then}", flush=True)
    return spec or models.for_run_folder(exp, resume.folder)  # hpccnn.fit's function: not its script run again


def fit_and_record(exp, world, model, spec, inputs, lr, stopper, stall_limit, writer, resume, save_model):
    """Trains from the last finished epoch (or the first) to exp.epochs; rank 0 records how it ended:
    completed with the test scores, interrupted by a signal, or failed and why."""
    from hpccnn.training.callbacks import Watchdog

    def record_stall(message):  # called by the watchdog's thread before it ends this rank
        if writer is not None:
            writer.failed(f"{message}; resume with --resume {writer.folder}", started)

    watchdog = Watchdog(stall_limit, record_stall)  # started with training, on every rank
    callbacks, recorder = assemble_callbacks(exp, world, inputs, lr, watchdog, stopper, writer, resume)
    first_epoch = resume.epoch if resume is not None else 0
    started = time.time()
    watchdog.start()
    try:
        if first_epoch < exp.epochs:
            model.fit(inputs.train, steps_per_epoch=inputs.steps, epochs=exp.epochs, initial_epoch=first_epoch,
                      validation_data=inputs.val, validation_steps=inputs.val_steps, callbacks=callbacks,
                      verbose=2 if world.is_main else 0)
        if stopper.diverged:
            raise diverged(stopper, exp, writer, started)
        if stopper.stopped:
            raise stopped(stopper, writer, started)
        outputs = gather_predictions(model, inputs, exp, world, [watchdog])
        memory_per_rank = dist.allgather_object({**memory.usage(), "data": inputs.held.facts()})
        watchdog.stop()
        if writer is not None:
            writer.memory(memory_per_rank)
        if not world.is_main:
            return None, None
        return record_results(writer, world, model, spec, inputs, outputs, recorder, save_model, started)
    except (Interrupted, Diverged):  # recorded already
        raise
    except BaseException as err:
        if writer is not None:
            writer.failed(f"{type(err).__name__}: {err}", started)
        raise
    finally:
        watchdog.stop()


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
    import signal

    name = signal.Signals(stopper.signal).name
    requeue = stopper.signal == signal.SIGUSR2 and "SLURM_JOB_ID" in os.environ
    outcome = None
    if writer is not None:
        last = writer.metrics.get("last_epoch", 0)
        writer.status(INTERRUPTED, reason=f"stopped by {name}", last_epoch=last, requeued=requeue,
                      wall_seconds=writer.wall_seconds(started))
        if requeue:  # SLURM stops every rank now; the requeued job finds this folder and resumes it
            import subprocess

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


def parse(argv):
    """(options, Experiment) from hpccnn.train's command line; a UserError if anything is wrong."""
    args = build_parser().parse_args(argv)
    userconfig.use(args.config)
    stall_timeout(), progress_interval(), dist.malloc_choice()  # checked before anything starts
    changes = overrides(args)
    if args.resume is not None:
        return args, resumed_experiment(args, changes)
    exp = with_overrides(base_experiment(args.experiment, changes), changes)
    kept = requeued_experiment(args, exp, changes)
    if kept is not None:  # its model comes from the run folder's copy (model_spec): nothing to import here
        return args, kept
    # a path the ranks find wherever they start (a staged pack's name stays as it is)
    exp = dataclasses.replace(exp, dataset=userdata.resolve(exp.dataset, args.data_dir))
    if usermodel.is_reference(exp.model):
        exp = dataclasses.replace(exp, model=usermodel.absolute(exp.model))
        use_xla(exp)  # the user's module may import TensorFlow, which reads XLA's flags once
        get_model(exp.model, exp.model_args)  # imports the user's code: its errors before anything starts
    if args.run_dir is not None:
        check_run_dir(args.run_dir)
    check_writable(Path(args.run_dir).parent if args.run_dir else Path(args.results_dir), "--results-dir")
    return args, exp


def requeued_experiment(args, exp, changes):
    """In a SLURM job that was requeued, the experiment its run folder was started with (its config.json; only
    --epochs may differ, as on --resume): an edit of the user's hpccnn.toml or model file since the job was
    submitted must not change a running experiment. None in a job's first run, or before its folder exists."""
    from hpccnn.common.runs import this_jobs_folders

    if checkpoint.restart_count() == 0:
        return None
    if args.run_dir is not None:
        found = [Path(args.run_dir)] if Path(args.run_dir).is_dir() else []
    else:
        found = this_jobs_folders(args.results_dir, exp.name)
    config = found[-1] / "config.json" if found else None
    if config is None or not config.is_file():
        return None
    try:
        kept = Experiment(**json.loads(config.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return with_overrides(kept, {k: v for k, v in changes.items() if k == "epochs"})


def base_experiment(name, changes: dict) -> Experiment:
    """The experiment a command line starts from: the one named, or, for a --model of the user's own without
    one, an experiment of hpccnn's defaults named after the model function (it needs --dataset); else digits_cnn."""
    if name is not None:
        return get_experiment(name)
    model = changes.get("model", "")
    if not usermodel.is_reference(model):
        base = get_experiment("digits_cnn")
        dataset = changes.get("dataset", "")
        if dataset and dataset not in data.DATASETS:  # the user's data: the run named after model and data
            stem = Path(dataset.rstrip("/")).stem or "data"
            return dataclasses.replace(base, name=f"{changes.get('model', base.model)}_{stem}")
        return base
    if "dataset" not in changes:
        raise UserError(f"--model {model} needs --dataset (one of: {', '.join(data.DATASETS)}), or an --experiment "
                        f"that names one")
    return Experiment(usermodel.split_reference(model)[1], model, changes["dataset"])


def check_writable(folder: Path, option: str) -> None:
    """A UserError unless folder exists and is writable or can be made; leaves nothing behind."""
    import tempfile

    existing = folder.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {folder}: {existing} is a file, not a folder; choose another {option}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hpccnn-probe-", dir=existing))
    except OSError as err:
        raise UserError(f"{option} {folder} is not writable ({err.strerror}); choose another {option}") from None


def resumed_experiment(args, overrides):
    """The experiment a run folder was started with (only --epochs may change, to train longer)."""
    from hpccnn.models.experiments import Experiment

    folder = folder_option("--resume", args.resume)
    try:
        config = json.loads((folder / "config.json").read_text())
        json.loads((folder / "metrics.json").read_text())
        exp = Experiment(**config)
    except (OSError, ValueError, TypeError):
        raise UserError(f"--resume {args.resume}: not a run folder made by hpccnn.train (no readable config.json "
                        f"and metrics.json)") from None
    changed = sorted(set(overrides) - {"epochs"})
    if changed or args.run_dir:
        what = flag(changed[0]) if changed else "--run-dir"
        raise UserError(f"--resume continues a run with its own settings; only --epochs may change, not {what}")
    return with_overrides(exp, overrides)


def folder_option(option: str, value: str) -> Path:
    """A run folder given on the command line, refused if it climbs out with '..'."""
    path = Path(value)
    if ".." in path.parts:
        raise UserError(f"{option} {value!r} contains '..'; give the run folder's path without it")
    return path


def check_run_dir(run_dir) -> None:
    path = folder_option("--run-dir", run_dir)
    if path.exists() and checkpoint.restart_count() == 0:  # a requeued job resumes its own folder
        raise UserError(f"--run-dir {run_dir} already exists; hpccnn never writes into an existing run folder "
                        f"(to continue that run: --resume {run_dir})")


def train(argv):
    """Everything python -m hpccnn.train does, in this process: (run folder or None off rank 0, accuracy)."""
    args, exp = parse(argv)
    # start and run, as hpccnn.fit's (api.run) are: called here, in this module, because under python -m this
    # module is __main__, and the Interrupted and Diverged that main() catches must be this module's own
    world, fast = start(exp)
    return run(exp, world, fast, args.data_dir, args.results_dir, ["-m", "hpccnn.train", *argv],
               not args.no_save_model, args.run_dir, args.resume)


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.list:
        userconfig.use(args.config)
        print(list_experiments())
        return 0
    try:
        train(argv)
    except Interrupted as stop:
        if dist.init().is_main:
            print(f"hpccnn: {stop}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Diverged as failure:
        if dist.init().is_main:
            print(f"hpccnn: {failure}", file=sys.stderr, flush=True)
        return EXIT_DIVERGED
    return 0


EXIT_INTERRUPTED = 3  # stopped by a signal after saving its last finished epoch
EXIT_DIVERGED = 5  # the loss became NaN or infinite (4 is the watchdog's: a rank stalled)


if __name__ == "__main__":
    sys.exit(main())
