"""hpccnn's Keras callbacks: per-epoch statistics, stopping on a signal, and the rank-0 recorder."""

import math
import os
import signal
import sys
import threading
import time

from hpccnn.common.runs import RUNNING
from hpccnn.common.tables import clock
from hpccnn.training import checkpoint

# SIGUSR2: SLURM's warning before a time limit or preemption (submitit's and the templates'
# --signal=USR2@...), so hpccnn requeues the job; SIGTERM: scancel (the job ends), or scontrol requeue or a
# preemption that requeues (SLURM starts the job again; hpccnn.common.slurm.requeued_by_slurm tells which).
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class KerasCallback:
    """The base of hpccnn's callbacks, which are tf.keras.callbacks.Callback's while this module loads without
    TensorFlow (every command imports hpccnn.training; only training needs TensorFlow, which takes seconds to
    start). Making one imports TensorFlow and makes it an instance of its class with Keras' Callback as a base
    too, a class made once per callback class."""

    _keras_classes = {}

    def __new__(cls, *args, **kwargs):
        import tensorflow as tf

        keras_class = KerasCallback._keras_classes.get(cls)
        if keras_class is None:
            keras_class = type(cls.__name__, (cls, tf.keras.callbacks.Callback),
                               {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
            KerasCallback._keras_classes[cls] = keras_class
        return super().__new__(keras_class)


class EpochStats(KerasCallback):
    """Adds learning rate, epoch seconds and training images/s to each epoch's logs."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
        self.train_seconds = None

    def on_test_begin(self, logs=None):
        if self.train_seconds is None:  # validation starts: training for this epoch is done
            self.train_seconds = time.perf_counter() - self.start

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        seconds = time.perf_counter() - self.start
        logs["lr"] = float(tf.keras.backend.get_value(self.model.optimizer.learning_rate))
        logs["epoch_seconds"] = seconds
        logs["images_per_second"] = self.images_per_epoch / (self.train_seconds or seconds)


class Progress(KerasCallback):
    """Rank 0: where training is within an epoch (step k of N, images/s, time left in the epoch).

    To a terminal a bar, redrawn at most twice a second and cleared before Keras' epoch line; to a
    file or a pipe (a SLURM log) a line every `interval` seconds, so a 25-minute epoch is not silent."""

    def __init__(self, steps: int, images_per_step: int, epochs: int, interval: float, stream=None):
        super().__init__()
        self.steps, self.images_per_step, self.epochs = steps, images_per_step, epochs
        self.stream = stream or sys.stdout
        self.terminal = self.stream.isatty()
        self.interval = 0.5 if self.terminal else interval
        self.drawn = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.start = epoch, time.perf_counter()
        self.last = self.start

    def on_train_batch_end(self, batch, logs=None):
        done, now = batch + 1, time.perf_counter()  # batch: the last step of this execution
        if done >= self.steps or now - self.last < self.interval:
            return  # the epoch's own line follows the last step
        self.last = now
        elapsed = now - self.start
        left = elapsed / done * (self.steps - done)
        text = (f"epoch {self.epoch + 1}/{self.epochs}: step {done:,}/{self.steps:,}, "
                f"{done * self.images_per_step / elapsed:,.0f} img/s, {clock(left)} left in this epoch")
        if self.terminal:
            filled = int(24 * done / self.steps)
            self.stream.write(f"\r[{'#' * filled}{'.' * (24 - filled)}] {text}\033[K")
            self.drawn = True
        else:
            self.stream.write(f"hpccnn: {text}\n")
        self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False


class ReseedRandomLayers(KerasCallback):
    """Dropout masks that depend only on (seed, epoch, step), so a resumed run repeats them exactly.

    Needs Keras' tf.random.Generator-backed layers (enable_tf_random_generator(), set before
    the model is built); each epoch restarts every random layer's generator from its own seed.
    """

    def __init__(self, seed):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        for index, layer in enumerate(self.model.layers):
            rng = getattr(layer, "_random_generator", None)
            if rng is None:
                continue
            rng._maybe_init()
            if getattr(rng, "_generator", None) is not None:
                rng._generator.reset_from_seed(hash((*self.seed, epoch, index)) % (2 ** 62))


class StopOnSignal(KerasCallback):
    """Stops training soon after SIGUSR2 or SIGTERM reaches any rank, or any rank's loss becomes NaN
    or infinite, with every rank agreeing when.

    The handler only notes the signal; each step's loss is looked at as Keras reports it. Every
    ``every`` steps (the same steps on every rank) the ranks take the maximum of their notes with an
    allreduce, so all of them stop after the same step and none is left waiting in a collective.
    (Averaged gradients make every rank's weights NaN at the same step, but a rank's own loss can
    overflow first.) An epoch cut short is not recorded: a run stopped by a signal resumes from the
    checkpoint of the last finished epoch, and one whose loss diverged keeps the epochs before.
    """

    _FIRST = 1 << 29  # a non-finite loss noted as 2 * (_FIRST - its step) + (1 for nan): the earliest wins

    def __init__(self, every: int = 0):
        super().__init__()
        self.every = every  # 0: a quarter epoch, at most 20 steps, from the steps Keras reports
        self.steps = None
        self.received = 0  # the signal number noted by this rank's handler
        self.signal = 0  # the signal all ranks agreed on (the largest number any rank received)
        self.partial_epoch = None  # the epoch cut short, if one was
        self.diverged = None  # the earliest non-finite loss on any rank: its value, epoch and step
        self._bad = 0  # this rank's first non-finite loss, as _FIRST notes it
        self.previous = {}

    def install(self):
        for sig in STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, self._note)
        return self

    def uninstall(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _note(self, signum, frame):
        self.received = signum

    def _agree(self) -> tuple:
        import horovod.tensorflow as hvd_tf
        import tensorflow as tf

        if hvd_tf.size() == 1:  # alone, nothing to agree on: no collective every few steps
            return self.received, self._bad
        notes = tf.constant([self.received, self._bad], tf.int32)
        signum, bad = hvd_tf.allreduce(notes, op=hvd_tf.Max, name="hpccnn_stop").numpy()
        return int(signum), int(bad)

    def _note_loss(self, batch, logs):
        loss = (logs or {}).get("loss")
        if self._bad or loss is None or math.isfinite(float(loss)):
            return
        step = self._epoch * self.steps + batch + 1  # counted over the whole run
        self._bad = 2 * (self._FIRST - step) + int(math.isnan(float(loss)))

    @property
    def stopped(self) -> bool:
        return bool(self.signal)

    def on_train_begin(self, logs=None):
        self.steps = self.params["steps"]
        self.every = self.every or max(1, min(20, self.steps // 4))

    def on_train_batch_end(self, batch, logs=None):
        self._note_loss(batch, logs)
        # at least `every` steps since the last check (Keras calls this once per execution, which
        # is several steps with steps_per_execution > 1), and always at the end of an epoch
        if batch + 1 - self._checked < self.every and batch + 1 != self.steps:
            return
        self._checked = batch + 1
        agreed, bad = self._agree()
        if bad:  # its epoch's weights are not worth a checkpoint, even at the epoch's last step
            step = self._FIRST - bad // 2
            self.diverged = {"loss": "nan" if bad % 2 else "inf", "epoch": (step - 1) // self.steps + 1,
                             "step": (step - 1) % self.steps + 1, "stopped_after_step": batch + 1}
            self.model.stop_training = True
            self.partial_epoch = self._epoch
        if agreed:
            self.signal = agreed
            self.model.stop_training = True
            if batch + 1 < self.steps:
                self.partial_epoch = self._epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._checked = epoch, 0

    def finished(self, epoch) -> bool:
        return epoch != self.partial_epoch


class RankZeroRecorder(KerasCallback):
    """Rank 0: after every finished epoch, history.csv and a checkpoint to resume from."""

    def __init__(self, writer, stopper, rows: list, stateful: list):
        super().__init__()
        self.writer, self.stopper = writer, stopper
        self.rows = list(rows)  # history so far (a resumed run's from its checkpoint)
        self.stateful = stateful  # callbacks whose state goes into the checkpoint (ReduceLROnPlateau)

    def on_epoch_end(self, epoch, logs=None):
        if not self.stopper.finished(epoch):
            return  # cut short by a signal: not an epoch
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
        self.writer.history(self.rows)
        checkpoint.save(self.writer.folder, self.model, epoch + 1, self.rows, self.stateful)
        self.writer.status(RUNNING, last_epoch=epoch + 1)


def lr_warmup(lr, warmup_epochs, steps_per_epoch, steps_per_execution):
    """Horovod's LearningRateWarmupCallback (lr/size up to lr over warmup_epochs), set once per call
    into the graph. Keras calls on_train_batch_begin once per execution of steps_per_execution
    steps, with the first step's index; Horovod's ramp would then give each call its first step's
    rate and end one call short of lr, where it would stay. Each call gets its last step's rate
    instead, so the warm-up ends at exactly lr whatever the steps per execution."""
    import horovod.tensorflow.keras as hvd

    class Warmup(hvd.callbacks.LearningRateWarmupCallback):
        def on_batch_begin(self, batch, logs=None):
            super().on_batch_begin(min(batch + steps_per_execution, steps_per_epoch) - 1, logs)

    return Warmup(initial_lr=lr, warmup_epochs=warmup_epochs, steps_per_epoch=steps_per_epoch, verbose=0)


class Watchdog(KerasCallback):
    """Ends this rank when training has made no progress for too long: a rank stuck in a collective.

    Open MPI has no collective timeout, and a rank whose peer's node vanished (its link down, no
    TCP reset) waits in the allreduce for ever, where neither srun nor mpirun reaches it: SLURM can
    mark the lost node DOWN and end the job, but a rank on a node cut off from the controller never
    hears of it. A thread on every rank notes each step, validation batch and prediction batch; with
    none for `limit` seconds (HPCCNN_STALL_TIMEOUT, default 600; 0 turns it off), and at least ten
    times the longest gap seen so far, it calls on_stall (rank 0 records the run as failed) and
    ends the process, which ends the job (srun --kill-on-bad-exit, mpirun) on every side.
    """

    EXIT_STALLED = 4

    def __init__(self, limit: float, on_stall=None, poll: float = 1.0):
        super().__init__()
        self.limit, self.on_stall, self.poll = limit, on_stall, poll
        self.last = time.monotonic()
        self.longest = 0.0
        self.first = True
        self.done = False
        self._thread = None

    def start(self):
        if self.limit > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="hpccnn-watchdog", daemon=True)
            self._thread.start()

    def stop(self):
        self.done = True

    def beat(self, *args, **kwargs):
        now = time.monotonic()
        if not self.first:  # a phase's first batch traces and compiles its function: not a step's gap
            self.longest = max(self.longest, now - self.last)
        self.first = False
        self.last = now

    def phase(self, *args, **kwargs):
        self.beat()
        self.first = True

    # the work between epochs (metric allreduce, checkpoint, results, plots) is not a step: counted in
    # the longest gap, a slow checkpoint on a loaded node raised the allowed silence to a minute
    on_train_batch_end = on_test_batch_end = on_predict_batch_end = beat
    on_train_begin = on_epoch_begin = on_epoch_end = on_test_begin = on_predict_begin = phase

    def allowed(self) -> float:
        return max(self.limit, 10 * self.longest)

    def _watch(self):
        while not self.done:
            time.sleep(self.poll)
            quiet = time.monotonic() - self.last
            if self.done or quiet < self.allowed():
                continue
            message = (f"no progress for {quiet:.0f} s (the longest gap before was {self.longest:.1f} s): "
                       f"a rank or its node was lost, or the network between them is down")
            try:
                if self.on_stall is not None:
                    self.on_stall(message)
            finally:
                print(f"hpccnn: {message}; ending this rank", file=sys.stderr, flush=True)
                os._exit(self.EXIT_STALLED)
