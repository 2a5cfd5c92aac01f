"""How a measurement's process times every runner's Trainer alike: warmed up, then timed over whole
executions, as many steps as last the seconds asked for at the warm-up's rate."""

import math
import time

from hpccnn.benchmark.trainer import Trainer


class Timer:
    """Keras callback: wall time of the first finished step, and (step, time) from the end of step
    `untimed` to the last.

    With steps_per_execution > 1 Keras calls it once per execution, so the timed span runs from
    the first call at or past `untimed` to the last, whatever the steps in between."""

    def __init__(self, untimed):
        import tensorflow as tf

        class Callback(tf.keras.callbacks.Callback):
            def on_train_batch_end(cb, batch, logs=None):
                now = time.perf_counter()
                if self.first is None:
                    self.first = time.time()
                if batch + 1 >= untimed:
                    if self.start is None:
                        self.start = (batch + 1, now)
                    self.end = (batch + 1, now)

        self.first = self.start = self.end = None
        self.callback = Callback()

    def steps_per_second(self) -> float:
        return (self.end[0] - self.start[0]) / (self.end[1] - self.start[1])


class Timed:
    """A Trainer warmed up, then timed as often as asked: how both workers measure.

    The warm-up fit's second half gives the step rate; each timed fit is of the same compiled model,
    its first execution (a new iterator) untimed. Keras calls back once per execution of `every`
    steps, so every fit runs whole executions, at least three in the warm-up: two calls make the
    shortest span a rate can be timed over."""

    def __init__(self, trainer: Trainer, warmup: int):
        self.trainer = trainer
        warmup = max(2, warmup, 3 * trainer.every)
        warm = Timer(warmup // 2)
        trainer.fit(warmup, [*trainer.first_callbacks, warm.callback], 0)
        self.first, self.rate = warm.first, warm.steps_per_second()

    def time(self, steps: int, seed: int) -> dict:
        """Trains steps (whole executions) after an untimed one: images/s over every process, the steps
        and the seconds timed."""
        timer = Timer(self.trainer.every)
        self.trainer.fit(steps + self.trainer.every, [timer.callback], seed)
        return {"images_per_second": timer.steps_per_second() * self.trainer.batch * self.trainer.size,
                "timed_steps": timer.end[0] - timer.start[0], "timed_seconds": timer.end[1] - timer.start[1]}


def timed_steps(args, rate: float, every: int) -> int:
    """--steps, else as many as last --seconds at rate (at least 3), in whole executions of every steps."""
    steps = args.steps or max(3, math.ceil(args.seconds * rate))
    return math.ceil(steps / every) * every
