"""python -m hpccnn.train: trains one experiment, data-parallel with Horovod.

The same command runs as one process, under ``horovodrun -np N``, ``mpirun -np N``,
``srun --mpi=pmix`` and submitit: the rank comes from Horovod, and every side effect
sits behind ``world.is_main`` (rank 0) in the results writer.

Callback order (Horovod's rule): broadcast the initial weights, average the metrics
across ranks, and only then anything that reads metrics or sets the learning rate.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from hpccnn import data, dist
from hpccnn.errors import Parser, UserError, cli
from hpccnn.experiments import EXPERIMENTS, add_setting_options, get_experiment, overrides, with_overrides
from hpccnn.models import get_model

OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adadelta": "Adadelta", "rmsprop": "RMSprop"}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m hpccnn.train", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--experiment", default="digits_cnn", help="a named experiment (see --list)")
    p.add_argument("--list", action="store_true", help="print the experiments and exit")
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
    lines = [f"{'experiment':30} {'model':24} {'dataset':9} {'epochs':>6}  reported in the seed"]
    for e in EXPERIMENTS.values():
        lines.append(f"{e.name:30} {e.model:24} {e.dataset:9} {e.epochs:>6}  {e.reported or '-'}")
    return "\n".join(lines)


def make_optimizer(name: str, learning_rate: float):
    import tensorflow as tf

    # Keras 2.15's legacy optimizers: the ones Horovod 0.28's DistributedOptimizer wraps.
    return getattr(tf.keras.optimizers.legacy, OPTIMIZERS[name])(learning_rate=learning_rate)


def cpu_xla(exp) -> bool:
    """Whether exp compiles with XLA on CPUs: only when asked (--xla on). Its effect there depends on
    the CPU, not only the model: alexnet_galaxy10 ran 1.34x faster with it on an AVX2 EPYC and 0.57x
    as fast on an AVX-512 one, so no model turns it on by itself (README, Performance)."""
    return exp.xla == "on"


def speed_settings(exp, gpus: int) -> dict:
    """What exp's speed settings come to on a node with this many GPUs. "auto" is on with a GPU and
    off on CPUs: float16 was measured 25x slower there, and XLA's effect depends on the CPU (cpu_xla);
    python -m hpccnn.bench --variants measures both on the node at hand. mixed_precision comes to the
    compute type: "float16", "bfloat16" (only when asked) or "off" (float32)."""
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


def compile_model(exp, world, input_shape, classes):
    """The seed's model and optimizer, wrapped by Horovod; the learning rate scaled if asked.

    Returns (model, spec, learning rate)."""
    import tensorflow as tf

    hvd = dist.hvd()
    spec = get_model(exp.model)
    model = spec(input_shape, classes, activation=exp.activation)
    lr = exp.learning_rate * (world.size if exp.scale_lr else 1)
    compression = hvd.Compression.fp16 if exp.fp16_allreduce else hvd.Compression.none
    # allreduce-averages gradients; Keras adds loss scaling on top under mixed precision
    optimizer = hvd.DistributedOptimizer(make_optimizer(exp.optimizer, lr), compression=compression)
    model.compile(optimizer=optimizer, metrics=["accuracy"],
                  steps_per_execution=exp.steps_per_execution,
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=spec.logits))
    return model, spec, lr


def fit_image_size(exp, splits, world):
    """exp, with its images resized to the model's seed size when the data set's are too small for it.

    Only when no --image-size was given: cnn_v3 (seed 001, 32x32 CIFAR-10) on 8x8 digits
    would shrink them to nothing, so digits are resized to 32x32 for it.
    """
    import dataclasses

    spec = get_model(exp.model)
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


def gather_predictions(model, splits, exp, world, batch, callbacks=()):
    """Each rank predicts its shard of the test set; rank 0 gets all of it, in test-set order."""
    index = data.shard(np.arange(len(splits.x_test)), world.rank, world.size)
    x, y = splits.x_test[index], splits.y_test[index]
    outputs = model.predict(data.pipeline(x, y, batch, splits.scale, exp.image_size), verbose=0,
                            callbacks=list(callbacks))
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
        writer.status("failed", reason=reason, diverged=what, wall_seconds=writer.wall_seconds(started))
        folder = str(writer.folder)
    folder = dist.broadcast_object(folder)
    return Diverged(f"{reason}; recorded as failed in {folder}")


def restart_count() -> int:
    value = os.environ.get("SLURM_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def find_resumable(results_dir, experiment: str, run_dir=None):
    """The run folder a requeued SLURM job should resume: its --run-dir, or the one with its job id."""
    from hpccnn.results import job_tag

    if run_dir is not None:
        return Path(run_dir).resolve() if Path(run_dir).is_dir() else None
    found = sorted(Path(results_dir).resolve().glob(f"*/{experiment}-*-{job_tag()}"))
    return found[-1] if found else None


def load_checkpoint(folder: Path):
    """(epoch, checkpoint folder, state) of a run's latest checkpoint, or (0, None, {}) before the first."""
    latest = folder / "checkpoint" / "latest.json"
    if not latest.exists():
        return 0, None, {}
    info = json.loads(latest.read_text())
    path = folder / "checkpoint" / info["folder"]
    return int(info["epoch"]), str(path), json.loads((path / "state.json").read_text())


def restore(model, checkpoint: str, state: dict):
    """Weights, optimizer slots and iteration count, and learning rate as they were after that epoch."""
    import tensorflow as tf

    model.load_weights(str(Path(checkpoint) / "weights.h5"))
    with np.load(Path(checkpoint) / "optimizer.npz") as saved:
        weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    optimizer = model.optimizer  # under mixed precision, a LossScaleOptimizer around Horovod's
    getattr(optimizer, "inner_optimizer", optimizer)._create_all_weights(model.trainable_variables)  # slots exist only after the first step otherwise
    optimizer.set_weights(weights)
    tf.keras.backend.set_value(optimizer.learning_rate, state["learning_rate"])


def run(exp, world, fast, data_dir=None, results_dir="results", argv=(), save_model=True, run_dir=None, resume=None):
    """Trains exp on this rank; returns (run folder or None on other ranks, test accuracy).

    resume: a run folder to continue from its latest checkpoint. A SLURM job that was requeued
    (SLURM_RESTART_COUNT > 0) resumes its own run folder by itself. Rank 0 decides and every
    rank follows (broadcast), so all of them start from the same epoch.
    """
    import tensorflow as tf

    from hpccnn.callbacks import (EpochStats, RankZeroRecorder, ReseedRandomLayers, StopOnSignal, Watchdog,
                                  lr_warmup, restore_callback_state)

    hvd = dist.hvd()
    stall_limit = stall_timeout()
    stopper = StopOnSignal().install()  # noted from now on; acted on once training runs
    tf.keras.utils.set_random_seed(exp.seed)
    tf.keras.backend.experimental.enable_tf_random_generator()  # dropout reseedable per epoch
    decision = None
    if world.is_main:
        target = Path(resume).resolve() if resume else (
            find_resumable(results_dir, exp.name, run_dir) if restart_count() > 0 else None)
        decision = (str(target), *load_checkpoint(target)) if target else None
    decision = dist.broadcast_object(decision)
    first_epoch, checkpoint, state = (decision[1], decision[2], decision[3]) if decision else (0, None, {})

    batch = per_rank_batch(exp, world)
    splits = data.split(data.load(exp.dataset, data_dir), exp.validation, exp.val_fraction,
                        exp.test_fraction, exp.seed)
    exp = fit_image_size(exp, splits, world)
    x_train = data.shard(splits.x_train, world.rank, world.size)
    y_train = data.shard(splits.y_train, world.rank, world.size)
    steps = (len(splits.x_train) // world.size) // batch  # the same on every rank: allreduce needs it
    if steps == 0:
        raise UserError(f"batch of {batch} per rank is larger than the {len(splits.x_train) // world.size} "
                        f"training images each of the {world.size} ranks has; use a smaller --batch-size")
    train_ds = data.train_pipeline(x_train, y_train, batch, steps, splits.scale, exp.image_size,
                                   seed=(exp.seed, world.rank), first_epoch=first_epoch, epochs=exp.epochs)
    val_ds = data.pipeline(data.shard(splits.x_val, world.rank, world.size),
                           data.shard(splits.y_val, world.rank, world.size), batch, splits.scale, exp.image_size)
    side = exp.image_size or splits.shape[0]
    from hpccnn import memory  # refuses a setting that can't fit before the model is built or a folder written

    memory.check(exp, splits, side, batch, world, 4 if fast["mixed_precision"] == "off" else 2, fast["device"] == "GPU")
    model, spec, lr = compile_model(exp, world, (side, side, splits.shape[2]), len(splits.classes))
    if checkpoint:
        restore(model, checkpoint, state)

    hosts = dist.allgather_object(dist.host_and_rank(world))
    writer = None
    if world.is_main:
        from hpccnn.results import RunWriter

        if decision:
            writer = RunWriter.reopen(decision[0])
            writer.resumed(first_epoch, list(argv), hosts)
        else:
            writer = RunWriter.create(results_dir, exp.name, world, run_dir)
            try:
                writer.start(exp, world, hosts, list(argv), data.resolve_data_dir(data_dir), fast)
            except BaseException as err:
                writer.status("failed", reason=f"{type(err).__name__}: {err}")
                raise
        writer.guard()
        print(f"hpccnn: {exp.name} on {world.size} rank(s), {batch} images per rank per step, "
              f"{steps} steps per epoch; results in {writer.folder}"
              + (f"; resuming after epoch {first_epoch}" if decision else ""), flush=True)

    def record_stall(message):
        if writer is not None:
            writer.status("failed", reason=f"{message}; resume with --resume {writer.folder}",
                          wall_seconds=writer.wall_seconds(started))

    watchdog = Watchdog(stall_limit, record_stall)  # started with training, on every rank
    callbacks = [
        watchdog,
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),  # every rank starts from rank 0's weights
        # metrics averaged over ranks before anyone reads them; one rank's are its own (and each
        # allreduce would wait for Horovod's next cycle, 20 ms for a process alone: hpccnn.dist)
        *([hvd.callbacks.MetricAverageCallback()] if world.size > 1 else []),
        stopper,  # before anything that records an epoch: a cut-short epoch is not one
        ReseedRandomLayers((exp.seed, world.rank)),
    ]
    if exp.warmup_epochs:  # ramps lr from lr/size up to lr: large effective batches diverge otherwise
        callbacks.append(lr_warmup(lr, exp.warmup_epochs, steps, exp.steps_per_execution))
    stateful = []
    if exp.reduce_lr_monitor:
        plateau = tf.keras.callbacks.ReduceLROnPlateau(
            monitor=exp.reduce_lr_monitor, factor=exp.reduce_lr_factor, patience=exp.reduce_lr_patience,
            min_delta=exp.reduce_lr_min_delta, verbose=int(world.is_main))
        callbacks.append(plateau)
        stateful.append(plateau)
        if state.get("callbacks"):  # after its on_train_begin, which resets it
            callbacks.append(tf.keras.callbacks.LambdaCallback(
                on_train_begin=lambda logs: restore_callback_state(plateau, state["callbacks"][0])))
    callbacks.append(EpochStats(steps * batch * world.size))
    if world.is_main:
        recorder = RankZeroRecorder(writer, stopper, rows=state.get("history"), stateful=stateful)
        callbacks += [recorder,
                      tf.keras.callbacks.TensorBoard(log_dir=str(writer.path("tensorboard")), profile_batch=0)]

    started = time.time()
    watchdog.start()
    try:
        if first_epoch < exp.epochs:
            model.fit(train_ds, steps_per_epoch=steps, epochs=exp.epochs, initial_epoch=first_epoch,
                      validation_data=val_ds, callbacks=callbacks, verbose=2 if world.is_main else 0)
        if stopper.diverged:
            raise diverged(stopper, exp, writer, started)
        if stopper.stopped:
            raise stopped(stopper, writer, started)
        outputs = gather_predictions(model, splits, exp, world, batch, callbacks=[watchdog])
        watchdog.stop()
        if not world.is_main:
            return None, None
        accuracy, loss, y_pred = score(outputs, splits.y_test, spec.logits)
        writer.history(recorder.rows, curves=True)
        writer.evaluation(splits.y_test, y_pred, splits.classes, images=splits.x_test)
        if save_model:
            writer.model("model.h5", model)
        writer.status("completed", test_accuracy=accuracy, test_loss=loss, test_images=int(len(y_pred)),
                      wall_seconds=writer.wall_seconds(started),
                      world_size=world.size)
        print(f"hpccnn: test accuracy {accuracy:.4f} (loss {loss:.4f}) on {len(y_pred)} test images", flush=True)
        print(f"hpccnn: results in {writer.folder}", flush=True)
        return writer.folder, accuracy
    except (Interrupted, Diverged):  # recorded already
        raise
    except BaseException as err:
        if writer is not None:
            writer.status("failed", reason=f"{type(err).__name__}: {err}", wall_seconds=writer.wall_seconds(started))
        raise
    finally:
        watchdog.stop()
        stopper.uninstall()


def stall_timeout(environ=os.environ) -> float:
    """HPCCNN_STALL_TIMEOUT: seconds without progress after which a rank gives up (0: never)."""
    value = environ.get("HPCCNN_STALL_TIMEOUT", "600")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise UserError(f"HPCCNN_STALL_TIMEOUT={value!r} must be a number of seconds (0 turns the watchdog off)")
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
        writer.status("interrupted", reason=f"stopped by {name}", last_epoch=last, requeued=requeue,
                      wall_seconds=writer.wall_seconds(started))
        if requeue:  # SLURM stops every rank now; the requeued job finds this folder and resumes it
            import subprocess

            done = subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], capture_output=True,
                                  text=True, timeout=60)
            requeue = done.returncode == 0
            if not requeue:
                writer.status("interrupted", requeued=False, reason=f"stopped by {name}; scontrol requeue "
                                                                    f"failed: {done.stderr.strip()[:200]}")
        outcome = (str(writer.folder), last, requeue)
    folder, last, requeue = dist.broadcast_object(outcome)  # the others wait here for rank 0
    return Interrupted(name, folder, last, requeue)


def parse(argv):
    """(options, Experiment) from hpccnn.train's command line; a UserError if anything is wrong."""
    args = build_parser().parse_args(argv)
    stall_timeout()  # checked before anything starts
    changes = overrides(args)
    if args.resume is not None:
        return args, resumed_experiment(args, changes)
    exp = with_overrides(get_experiment(args.experiment), changes)
    if args.run_dir is not None:
        check_run_dir(args.run_dir)
    check_writable(Path(args.run_dir).parent if args.run_dir else Path(args.results_dir), "--results-dir")
    return args, exp


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
    from hpccnn.experiments import Experiment

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
        what = f"--{changed[0].replace('_', '-')}" if changed else "--run-dir"
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
    if path.exists() and restart_count() == 0:  # a requeued job resumes its own folder
        raise UserError(f"--run-dir {run_dir} already exists; hpccnn never writes into an existing run folder "
                        f"(to continue that run: --resume {run_dir})")


def train(argv):
    """Everything python -m hpccnn.train does, in this process: (run folder or None off rank 0, accuracy)."""
    args, exp = parse(argv)
    world, fast = start(exp)
    return run(exp, world, fast, args.data_dir, args.results_dir, ["-m", "hpccnn.train", *argv],
               not args.no_save_model, args.run_dir, args.resume)


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if build_parser().parse_args(argv).list:
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
