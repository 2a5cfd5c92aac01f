"""A training run on this rank, phase by phase: its resume point and model, its data, a check that it fits in
memory, the compiled model, rank 0's run folder, then training and its results (hpccnn.training.fitting). The
phases hand each other one RunContext.

The same command runs as one process, under ``horovodrun -np N``, ``mpirun -np N``,
``srun --mpi=pmix`` and submitit: the rank comes from Horovod, and every side effect
sits behind ``world.is_main`` (rank 0) in the results writer.
"""

import dataclasses
from pathlib import Path

from hpccnn.models import usermodel, zoo
from hpccnn.training import checkpoint, dist, memory
from hpccnn.training.callbacks import StopOnSignal
from hpccnn.training.compute import build_model
from hpccnn.training.context import Options, RunContext
from hpccnn.training.fitting import Diverged, Interrupted, fit_and_record, stall_timeout
from hpccnn.training.prepare import prepare_data
from hpccnn.training.results import RunWriter
from hpccnn.training.resuming import same_data


def run(exp, world, fast, options: Options = Options()):
    """Trains exp on this rank; returns (run folder or None on other ranks, test accuracy).

    options.resume: a run folder to continue from its latest checkpoint. A SLURM job that was requeued
    (SLURM_RESTART_COUNT > 0) resumes its own run folder by itself (hpccnn.training.checkpoint.to_resume).
    Rank 0 decides and every rank follows (broadcast), so all of them start from the same epoch.
    """
    import tensorflow as tf

    stall_limit = stall_timeout()
    stopper = StopOnSignal().install()  # noted from now on; acted on once training runs
    try:
        tf.keras.utils.set_random_seed(exp.seed)
        tf.keras.backend.experimental.enable_tf_random_generator()  # dropout reseedable per epoch
        context = RunContext(exp, world, fast, options, stopper, stall_limit)
        context.resume = resume_point(context)
        context.spec = model_spec(exp, context.resume, world)
        same_data(context.resume, exp, options.data_dir)
        context.exp, context.inputs = prepare_data(context)
        check_memory(context)  # before anything is built or written
        context.model, context.lr = build_model(context.exp, context.spec, world, context.inputs.splits,
                                                context.resume)
        context.writer = open_writer(context)
        if context.writer is not None and context.resume is None:
            context.writer.model_source(context.spec)
        return fit_and_free(context)
    finally:
        stopper.uninstall()


def resume_point(context):
    """Where the run resumes from (a checkpoint.Resume), or None for a new run: rank 0 decides and every rank
    follows (broadcast), so all of them start from the same epoch."""
    options, world = context.options, context.world
    return dist.broadcast_object(
        checkpoint.to_resume(options.resume, options.results_dir, context.exp.name, options.run_dir)
        if world.is_main else None)


def model_spec(exp, resume, world):
    """exp's model: a built-in, or the user's function; a resumed run's from the copy of the user's file
    its run folder keeps (results.RunWriter.model_source), so an edit since can't change it (said in a line)."""
    registered = zoo._USER_MODELS.get((exp.model, exp.model_args))
    spec = registered if getattr(registered, "from_script", False) else None
    if resume is None:
        return spec or zoo.get_model(exp.model, exp.model_args)
    kept, changed = usermodel.kept_source(resume.folder)
    if kept is not None and changed and world.is_main:
        then = ("the script's own function builds it (the copy is kept in the run folder)" if spec is not None
                else f"the run goes on with the model from its own copy, {Path(resume.folder) / kept['copy']}")
        print(f"hpccnn: {kept['file']} has {changed} since this run started; {then}", flush=True)
    return spec or zoo.for_run_folder(exp, resume.folder)  # hpccnn.fit's function: not its script run again


def check_memory(context) -> memory.Estimate:
    """A UserError on every rank, before anything is built or written, if a rank can't fit in the memory it has
    (hpccnn.training.memory.check)."""
    inputs, fast, exp = context.inputs, context.fast, context.exp
    step = memory.Step(inputs.batch, exp.image_size or inputs.splits.shape[0], inputs.splits.shape[2],
                       4 if fast["mixed_precision"] == "off" else 2, fast["device"] == "GPU")
    return memory.check(exp, step, len(inputs.splits.classes), context.world, inputs.held.per_rank_bytes,
                        context.spec)


def open_writer(context):
    """Rank 0's RunWriter (None on the other ranks): a new run folder with its provenance, or the
    resumed one's, and the guard that marks it failed should this process die."""
    exp, world, inputs, resume, options = context.exp, context.world, context.inputs, context.resume, context.options
    hosts = dist.allgather_object(dist.host_and_rank(world))  # every rank takes part
    if not world.is_main:
        return None
    if resume is not None:
        writer = RunWriter.reopen(resume.folder)
        writer.resumed(resume.epoch, list(options.argv), hosts)
        writer.json("config.json", dataclasses.asdict(exp))  # its --epochs, if the resume changed them
    else:
        writer = RunWriter.create(options.results_dir, exp.name, world, options.run_dir)
        try:
            writer.start(context, hosts)
        except BaseException as err:
            writer.failed(f"{type(err).__name__}: {err}")
            raise
    writer.guard()
    print(f"hpccnn: {exp.name} on {world.size} rank(s), {inputs.batch} images per rank per step, "
          f"{inputs.steps} steps per epoch; results in {writer.folder}"
          + (f"; resuming after epoch {resume.epoch}" if resume is not None else ""), flush=True)
    return writer


def fit_and_free(context):
    """(run folder or None, test accuracy) of fitting.fit_and_record, the node's data window freed after it by
    every rank together."""
    world, held = context.world, context.inputs.held
    try:
        done = fit_and_record(context)
    except (Interrupted, Diverged):  # every rank stops at the same point: they free the window together
        free_data(held, world)
        raise
    if world.size > 1:  # the others wait here, idle, while rank 0 writes the results: not spinning in Free
        dist.broadcast_object(None)
    free_data(held, world)  # (a rank that fails alone leaves it to the end of its process)
    return done


def free_data(held, world) -> None:
    """Frees the node's window on every rank together, and no rank leaves before all have freed it.

    Horovod's thread ends MPI (MPI_Finalize) as soon as any rank of the job shuts down. Had the first rank
    to finish its free exited at once, another rank's free still under way (a 147 MB window's took longer
    than that exit) would meet MPI_Finalize freeing the same window again, waiting for ranks long gone."""
    held.free()
    if world.size > 1:
        dist.broadcast_object(None)
