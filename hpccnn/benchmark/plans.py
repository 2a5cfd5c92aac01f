"""What one measurement of python -m hpccnn.bench runs (a Plan), each model's own, and what the command
line asks of a run's measurements (Options)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


# Timed training per measurement, in seconds at the warm-up's step rate rather than a step count,
# which lasts three times longer on one CPU than on another (README, Performance: what shorter and
# longer spans did to the ratios).
SECONDS = 5.0


@dataclass(frozen=True)
class Plan:
    """What one measurement of a model runs: the global batch, warm-up steps (graph tracing,
    allocation; they also give the step rate), then steps timed, or, if steps is 0, as many
    as last about seconds at the warm-up's rate."""
    batch: int
    warmup: int
    steps: int = 0
    seconds: float = SECONDS

    def args(self) -> list:
        return ["--batch", str(self.batch), "--warmup", str(self.warmup), "--steps", str(self.steps),
                "--seconds", repr(self.seconds)]


# The benchmark's models, each with its default Plan: the seed's batch and the warm-up steps.
# Their input images are the seeds' own (hpccnn.models.zoo: ModelSpec.input_shape).
PLANS = {
    "cnn_v3": Plan(32, 8),
    "mnist_cnn": Plan(128, 8),
    "alexnet64": Plan(32, 8),
    "alexnet_galaxy10": Plan(32, 8),
    "alexnet227": Plan(16, 3),  # the seed's batch is 64; 16 keeps the benchmark to minutes
}


USER_PLAN = Plan(32, 8)  # a model of the user's own (--models path/file.py:function): 32x32x3 images


def plan(model, batch=0, steps=0, warmup=0, seconds=SECONDS) -> Plan:
    """model's Plan: the options given, else the model's defaults."""
    default = PLANS.get(model, USER_PLAN)
    return Plan(batch or default.batch, warmup or default.warmup, steps, seconds)


@dataclass(frozen=True)
class Options:
    """What the command line asks of a run of python -m hpccnn.bench: the models, hpccnn's rank counts, the
    peers measured beside it (hpccnn.benchmark.runners.PEERS), the Plan given (0 where each model's own
    applies), the new folder the results go to, the rounds per model, and where progress is said."""
    models: tuple
    ranks: tuple
    peers: tuple
    given: Plan
    out: Path
    repeats: int = 1
    log: Callable = print

    def plan(self, model) -> Plan:
        """model's Plan: the options given, else the model's defaults."""
        return plan(model, self.given.batch, self.given.steps, self.given.warmup, self.given.seconds)
