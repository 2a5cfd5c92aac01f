"""A training run's context: what its phases (hpccnn.training.phases.run) hand each other, in one object."""

import dataclasses

from hpccnn.data.datasets import Splits
from hpccnn.models.experiments import Experiment
from hpccnn.training.callbacks import StopOnSignal
from hpccnn.training.checkpoint import Resume
from hpccnn.training.dist import World
from hpccnn.training.results import RunWriter
from hpccnn.training.shared import Held


@dataclasses.dataclass(frozen=True)
class Options:
    """Where a run reads and writes, and what it keeps: hpccnn.train's options, or hpccnn.run's keywords."""

    data_dir: str | None = None  # the staged data cache (None: $HPCCNN_DATA or ~/.cache/hpccnn/data)
    results_dir: str = "results"  # run folders go to RESULTS_DIR/<date>/<run>
    run_dir: str | None = None  # exactly this run folder instead (it must not exist)
    resume: str | None = None  # a run folder to continue from its latest checkpoint
    argv: tuple = ()  # the command line, as provenance.json records it
    save_model: bool = True  # whether model.h5 is written


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The data as this rank trains on it."""

    splits: Splits  # the whole data set, split the same way on every rank
    held: Held  # how this rank holds it: in its node's shared window, or a copy of its own
    batch: int  # images per rank per step
    steps: int  # steps per epoch: the same on every rank, as allreduce needs
    val_steps: int | None  # validation batches per epoch (None: all of this rank's shard)
    train: object  # tf.data pipelines of this rank's shard
    val: object
    read: dict | None = None  # a pack's: held in memory or streamed, and why (hpccnn.training.stream.choose)


@dataclasses.dataclass
class RunContext:
    """One training run on this rank, filled in phase by phase: what it trains and where (set at its start),
    then where it resumes from, its model's spec, its inputs, its compiled model and rank 0's writer."""

    exp: Experiment  # with the image size the model needs, once the data is prepared
    world: World
    fast: dict  # the speed settings as applied on this node (hpccnn.training.compute.start)
    options: Options
    stopper: StopOnSignal  # installed for the whole run: a signal is noted from the start, acted on in training
    stall_limit: float  # seconds without progress after which a rank gives up (0: never)
    resume: Resume | None = None  # where it resumes from, the same on every rank (None: a new run)
    spec: object = None  # its model: a built-in's ModelSpec or the user's (hpccnn.training.phases.model_spec)
    inputs: Inputs | None = None
    model: object = None  # compiled, with Horovod's optimizer
    lr: float = 0.0  # its learning rate, scaled as asked
    writer: RunWriter | None = None  # rank 0's; None on the other ranks
    started: float = 0.0  # time.time() once training starts: the wall seconds recorded count from it

    @property
    def first_epoch(self) -> int:
        """The epoch training starts from: 0, or a resumed run's last finished one."""
        return self.resume.epoch if self.resume is not None else 0
