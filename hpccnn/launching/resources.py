"""What each point of a grid gets from SLURM: the resource options, their defaults by the model, their
checks, and how submitit and sbatch are told them."""

import shlex
import sys
from pathlib import Path

from hpccnn.common.errors import UserError
from hpccnn.data import datasets
from hpccnn.models import usermodel
from hpccnn.models.experiments import flag
from hpccnn.models.zoo import get_model
from hpccnn.training import memory

RESOURCES = {  # flag: (default, help). Defaults fit the seeds' CPU nodes: 8 cores, 56 GB.
    "partition": (None, "SLURM partition (default: the cluster's default)"),
    "account": (None, "SLURM account to charge"),
    "nodes": (1, "nodes per point"),
    "ntasks_per_node": (None, "Horovod ranks per node (default: by the model, see --cpus-per-task)"),
    "cpus_per_task": (None, "cores per rank, TensorFlow's intra-op threads (default: an 8-core node as 1 rank x 8 "
                            "for a model whose gradient is over 8 MB, the AlexNets; as 2 x 4 for a smaller one)"),
    "gpus_per_node": (0, "GPUs per node: one rank per GPU, so set --ntasks-per-node to the same"),
    "mem_gb": (56, "memory per node, GB"),
    "time_min": (480, "time limit per point, minutes"),
    "array_parallelism": (None, "at most this many points run at once (default: all)"),
}

CPU_NODE_CORES = 8  # the seeds' CPU nodes
LARGE_GRADIENT_MB = 8  # the seed models' gradients: 0.5-4.8 MB for the small CNNs, 12-233 MB for the AlexNets


def default_layout(args, exp) -> None:
    """Fills in --ntasks-per-node and --cpus-per-task where not given. The ranks of one node exchange
    gradients through memory, on the cores that compute: a model whose gradient is large beside its step
    (the AlexNets) trains faster as one rank with all the node's cores, and only a model too small to keep
    the cores busy in one process gains from a second rank (measured on two CPUs: README, Ranks per CPU node)."""
    spec = get_model(exp.model, exp.model_args)
    if usermodel.is_reference(exp.model):  # built for the data set's images
        height, _, channels = datasets.image_shape(exp, args.data_dir)
        parameters = memory.layers(spec, height, channels, datasets.class_count(exp, args.data_dir)).parameters
    else:
        parameters = memory.layers(spec, exp.image_size or spec.input_side, spec.input_channels, 10).parameters
    ranks = args.gpus_per_node or (1 if 4 * parameters > LARGE_GRADIENT_MB * 1e6 else 2)
    if args.ntasks_per_node is None:
        args.ntasks_per_node = ranks
    if args.cpus_per_task is None:
        args.cpus_per_task = max(1, CPU_NODE_CORES // max(1, args.ntasks_per_node))


def check_resources(args):
    for name in ("nodes", "ntasks_per_node", "cpus_per_task", "mem_gb", "time_min"):
        if getattr(args, name) <= 0:
            raise UserError(f"{flag(name)} must be a positive integer, got {getattr(args, name)}")
    if args.gpus_per_node < 0 or (args.array_parallelism is not None and args.array_parallelism <= 0):
        raise UserError("--gpus-per-node must not be negative and --array-parallelism must be positive")
    for name in ("partition", "account"):
        value = getattr(args, name)
        if value is not None and not value.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise UserError(f"--{name} {value!r} is not a SLURM {name} name (letters, digits, - _ . only)")


def slurm_parameters(args, name: str) -> dict:
    """submitit SlurmExecutor parameters (sbatch's own names) for one point's array task."""
    ranks_per_node = args.ntasks_per_node
    params = dict(job_name=f"hpccnn-{name}", nodes=args.nodes, ntasks_per_node=ranks_per_node,
                  cpus_per_task=args.cpus_per_task, mem=f"{args.mem_gb}GB", time=args.time_min,
                  # pmix: Open MPI inside each rank finds its peers through SLURM (Horovod's MPI);
                  # kill-on-bad-exit: a rank that dies ends the step instead of leaving the rest in allreduce.
                  stderr_to_stdout=True,  # one log per rank, tracebacks included
                  srun_args=["--mpi=pmix", "--kill-on-bad-exit=1", f"--cpus-per-task={args.cpus_per_task}"])
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    if args.partition:
        params["partition"] = args.partition
    if args.account:
        params["account"] = args.account
    if args.array_parallelism:
        params["array_parallelism"] = args.array_parallelism
    return params


def sbatch_script(params: dict, folder: Path, points: int) -> str:
    """The sbatch script submitit writes for these parameters (submitit's own template)."""
    # private to submitit, so requirements/constraints.txt holds submitit at the version it was read from
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=points if points > 1 else None, **params)
