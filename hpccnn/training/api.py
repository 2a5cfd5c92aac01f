"""hpccnn from a script or a notebook: ``hpccnn.fit(model_function, dataset=..., epochs=...)``.

The script runs the same under ``python train.py``, ``horovodrun -np 2 python train.py``, ``mpirun``,
``srun`` and an sbatch script, as Horovod's own examples do: every rank calls ``fit``, rank 0 writes the
run folder (checkpoints, history, predictions, confusion matrix, provenance), and a requeued SLURM job
resumes its own run folder. ``python -m hpccnn.train`` trains through the same ``run``.
"""

import dataclasses
import inspect
import sys
from pathlib import Path

from hpccnn.common.errors import UserError
from hpccnn.data import datasets
from hpccnn.models import usermodel, zoo
from hpccnn.models.catalog import get_experiment
from hpccnn.models.experiments import Experiment, check_type, with_overrides
from hpccnn.training import compute, dist, phases
from hpccnn.training.context import Options
from hpccnn.training.fitting import EXIT_DIVERGED, EXIT_INTERRUPTED, Diverged, Interrupted
from hpccnn.training.resuming import check_run_dir


@dataclasses.dataclass(frozen=True)
class Result:
    """How a run ended, on every rank: its run folder and test accuracy (both None off rank 0)."""

    folder: Path | None
    test_accuracy: float | None
    experiment: Experiment


def experiment(model, dataset=None, *, name=None, base=None, model_args=None, **settings) -> Experiment:
    """An Experiment: model (a function that returns a keras.Model, a keras.Model, a built-in model's name or
    a "path/file.py:function" reference) on dataset, with hpccnn.train's settings as keywords
    (epochs=5, learning_rate=1e-3, batch_size=64, ...), each checked as its command-line option is.

    base: a named experiment (built in or yours) to start from; name: the run folders' name (default: the
    model function's). model_args: the model function's own keyword arguments, as a dict.
    """
    model_args = usermodel.parse_args(model_args) if isinstance(model_args, str) else dict(model_args or {})
    ref = model if isinstance(model, str) else _register(model, model_args)
    args = usermodel.format_args(model_args)
    typed = {key: check_type(key, value) for key, value in settings.items()}
    if dataset is not None:
        typed["dataset"] = datasets.resolve(dataset)
    typed.update(model=ref, model_args=args)
    if base is not None:
        start = get_experiment(base)
    else:
        if dataset is None:
            raise UserError("hpccnn.fit needs dataset= (or base= an experiment that names one)")
        named_after = usermodel.split_reference(ref)[1] if usermodel.is_reference(ref) else ref
        start = Experiment(name or named_after, ref, dataset)
    if name is not None:
        start = dataclasses.replace(start, name=name)
    return with_overrides(start, typed)


def _register(model, model_args: dict) -> str:
    """A function or keras.Model of the script's, registered as a user model under a reference
    "file.py:function" (the file its source is in, kept in the run folder) and returned."""
    if callable(model) and not _is_keras_model(model):
        function, label = model, getattr(model, "__name__", "model")
    elif _is_keras_model(model):
        function, label = (lambda: model), model.name
    else:
        raise UserError(f"hpccnn.fit: model must be a function that returns a keras.Model, a keras.Model or a "
                        f"model's name, not a {type(model).__name__}")
    try:
        source = Path(inspect.getsourcefile(model if function is model else sys.modules["__main__"])).resolve()
    except (TypeError, KeyError, AttributeError):
        source = None
    label = "".join(c if c.isalnum() or c == "_" else "_" for c in label) or "model"
    label = label if label.isidentifier() else f"model_{label}"
    where = str(source) if source is not None and source.suffix == ".py" and source.is_file() else "__main__"
    ref = f"{where}:{label}"
    spec = usermodel.UserModel(ref, model_args, function=function,
                               source=source if where != "__main__" and not usermodel.installed(source) else None)
    spec.from_script = True  # built from this function, also when resumed (hpccnn.training.phases.model_spec)
    zoo._USER_MODELS[(ref, usermodel.format_args(model_args))] = spec
    return ref


def _is_keras_model(obj) -> bool:
    keras = sys.modules.get("tensorflow.keras") or sys.modules.get("keras")
    if keras is None:
        return False
    import tensorflow as tf

    return isinstance(obj, tf.keras.Model)


def run(exp: Experiment, *, results_dir="results", data_dir=None, run_dir=None, resume=None, save_model=True,
        argv=None) -> Result:
    """Trains exp on this process's rank: what fit does, raising hpccnn.train's Interrupted and Diverged
    instead of ending the process (compute.start and phases.run, as python -m hpccnn.train calls them)."""
    world, fast = compute.start(exp)
    argv = tuple(sys.argv if argv is None else argv)
    folder, accuracy = phases.run(exp, world, fast, Options(data_dir, results_dir, run_dir, resume, argv, save_model))
    return Result(Path(folder) if folder else None, accuracy, exp)


def fit(model, dataset=None, *, results_dir="results", data_dir=None, run_dir=None, resume=None, save_model=True,
        name=None, base=None, model_args=None, **settings) -> Result:
    """Trains model on dataset data-parallel over every rank this script was started with, as
    ``python -m hpccnn.train`` does, and returns a Result (the run folder and test accuracy on rank 0).

    model: a function that returns a keras.Model (it gets whichever of input_shape, classes or num_classes,
    and activation it declares, and model_args), a keras.Model, or a built-in model's name. The settings are
    hpccnn.train's (epochs=5, batch_size=64, learning_rate=1e-3, ...); resume= a run folder to continue.

    Bad input prints one line and ends the script with status 2; a run stopped by a signal (3) or whose
    loss diverged (5) ends it as python -m hpccnn.train does, after saving what it finished.
    """
    try:
        exp = experiment(model, dataset, name=name, base=base, model_args=model_args, **settings)
        if run_dir is not None:
            check_run_dir(run_dir)
        return run(exp, results_dir=results_dir, data_dir=data_dir, run_dir=run_dir, resume=resume,
                   save_model=save_model)
    except UserError as err:
        print(err if err.__class__.__name__ == "UserCodeError" else f"hpccnn: error: {err}", file=sys.stderr,
              flush=True)
        raise SystemExit(2) from None
    except (Interrupted, Diverged) as stop:
        if dist.init().is_main:
            print(f"hpccnn: {stop}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED if isinstance(stop, Interrupted) else EXIT_DIVERGED)
