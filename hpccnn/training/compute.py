"""This process's compute: XLA, the dtype policy and Horovod set up before anything is built, and the model
compiled with Horovod's optimizer. The same for python -m hpccnn.train, hpccnn.fit and the benchmark."""

import os
import sys

from hpccnn.models import usermodel
from hpccnn.models.experiments import OPTIMIZERS
from hpccnn.training import checkpoint, dist


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


def build_model(exp, spec, world, splits, resume):
    """The compiled model and its learning rate; a resumed run's as they were after its last epoch."""
    shape = (exp.image_size, exp.image_size) if exp.image_size else splits.shape[:2]
    model, lr = compile_model(exp, world, spec, (*shape, splits.shape[2]), len(splits.classes))
    if resume is not None:
        checkpoint.restore(model, resume)
    return model, lr
