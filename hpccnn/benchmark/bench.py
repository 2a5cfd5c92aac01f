"""python -m hpccnn.bench: training throughput of hpccnn against plain Keras, in one run.

For each model it measures, after warm-up, training images/second of
  keras   the seeds' way: NumPy float arrays into model.fit, one process, all cores;
  1 rank  hpccnn: uint8 images through hpccnn's tf.data pipeline, Horovod's optimizer;
  N ranks hpccnn under horovodrun -np N on the same cores (each rank gets cores/N threads);
and what users would pick instead (--peers), on 1 and N workers on the same cores:
  horovod recipe  Horovod's own Keras example (tensorflow2_keras_mnist.py), as it is written;
  tf mwms         TensorFlow's MultiWorkerMirroredStrategy (TF_CONFIG, collectives over gRPC);
then the ratios 1-rank/keras and N-ranks/1-rank, model FLOPs utilisation against a matmul
peak measured in the same run, the time from launch to the first finished step, and peak
memory (RSS) per rank. Each measurement runs in its own process. Writes bench.csv and bench.md.

--interleave N instead trains plain Keras and hpccnn's 1-rank path in one process, N alternating
chunks each: the cost per step of each path, without the drift of a shared machine between
processes (interleaved.csv, interleaved.md). --variants measures speed options (variants.csv).
--inputs trains each model on the same real images held in memory, streamed from a staged pack
(hpccnn.training.stream) and decoded from JPEG files (inputs.csv); --memory-check measures each rank's peak
memory streaming a pack of 60,000 images and one of 600,000 (memory.csv).
This module is the command line; each measurement's code is its own module: hpccnn.benchmark.compare (the
default, and --interleave), .variants, .inputs, .memory_check and .scaling (--nodes). Each measurement runs in
a process of its own (hpccnn.benchmark.measure starts it, hpccnn.benchmark.worker is it), training a model one
runner's way (hpccnn.benchmark.runners).
"""

import argparse
import datetime
import sys
from pathlib import Path

from hpccnn.benchmark import compare, scaling
from hpccnn.benchmark.inputs import INPUT_CHUNKS, INPUT_IMAGES, INPUT_MODELS, run_inputs
from hpccnn.benchmark.memory_check import MEMORY_STEPS, run_memory_check
from hpccnn.benchmark.plans import PLANS, SECONDS, Options, Plan, plan
from hpccnn.benchmark.runners import PEERS
from hpccnn.benchmark.variants import VARIANTS, run_variants
from hpccnn.common.errors import Parser, UserError, cli, command_prog
from hpccnn.models import usermodel
from hpccnn.models.zoo import get_model

# rounds per model where --repeats is not given, by measurement (the files it writes); 1 for the others
REPEATS = {"variants": 2, "inputs": 3}


def build_parser() -> Parser:
    p = Parser(prog=command_prog("bench"), description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="example: python -m hpccnn.bench --repeats 2\ndocs: docs/performance.md")
    p.add_argument("--models", default=None,
                   help=f"comma-separated, from: {', '.join(PLANS)}; or your own, path/to/file.py:function or "
                        f"package.module:function (32x32x3 images, batch 32 unless --batch) (default: all; with "
                        f"--inputs, {','.join(INPUT_MODELS)})")
    p.add_argument("--ranks", default="1,2", help="rank counts for hpccnn (horovodrun on this machine)")
    p.add_argument("--peers", default=",".join(PEERS), metavar="NAMES",
                   help="what to measure beside plain Keras and hpccnn, on the same rank counts (with --nodes, on "
                        "the same nodes and links): horovod (Horovod's own Keras recipe), mwms (TensorFlow's "
                        "MultiWorkerMirroredStrategy); comma-separated, or none [horovod,mwms]")
    p.add_argument("--seconds", type=float, default=SECONDS,
                   help="timed training per measurement: as many steps as last this long at the warm-up's rate")
    p.add_argument("--steps", type=int, default=0, help="timed training steps per measurement, instead of --seconds")
    p.add_argument("--warmup", type=int, default=0,
                   help="steps run before timing: graph tracing, allocation, the step rate (default: per model, 3-8)")
    p.add_argument("--batch", type=int, default=0, help="global batch for every model (default: each seed's)")
    p.add_argument("--variants", default=None, metavar="NAMES",
                   help="instead of the comparison with Keras, measure these speed options against hpccnn's "
                        f"defaults (comma-separated, or 'all'): {', '.join(VARIANTS)}")
    p.add_argument("--interleave", type=int, default=0, metavar="CHUNKS",
                   help="instead, train plain Keras and hpccnn's 1-rank path in one process, CHUNKS chunks of "
                        "about --seconds each in alternating order: their per-step cost without the drift "
                        f"between processes; with --inputs, chunks of each input in one process (default "
                        f"{INPUT_CHUNKS}), each about half --seconds")
    p.add_argument("--repeats", type=int, default=None,
                   help="rounds per model, in alternating order (default 1; with --variants, 2 pairs; with --inputs, "
                        "3)")
    p.add_argument("--inputs", action="store_true",
                   help="instead, the same model and images held in memory, streamed from a staged pack and decoded "
                        "from JPEG files, on each of --ranks (inputs.csv): streaming's cost")
    p.add_argument("--input-images", type=int, default=0,
                   help=f"with --inputs: training images per model (default {INPUT_IMAGES:,}); with --memory-check, "
                        f"of the smaller pack (default 60,000, Fashion-MNIST's)")
    p.add_argument("--memory-check", action="store_true",
                   help=f"instead, each rank's peak memory with mnist_cnn streamed on the most of --ranks from a pack "
                        f"of 60,000 images and from one of 600,000 (memory.csv), {MEMORY_STEPS} timed steps on "
                        f"each unless --steps")
    p.add_argument("--keep-data", action="store_true",
                   help="with --inputs or --memory-check: keep the images and packs they make (OUT/input-data)")
    p.add_argument("--out", type=Path, default=None, help="folder for bench.csv and bench.md "
                                                          "(default results/bench-<date>-<time>)")
    p.add_argument("--nodes", type=int, default=0,
                   help="instead, measure scaling over a network: this many namespace nodes on this machine "
                        "(root; one rank per node, each on its own cores), at each --link-gbit, against the "
                        "README's scaling model; --batch is then the batch per rank (default: each seed's)")
    p.add_argument("--link-gbit", default="0.2,0.5,1,2", metavar="SPEEDS",
                   help="with --nodes: the link speeds in Gbit/s, comma-separated (default 0.2,0.5,1,2)")
    p.add_argument("--fp16-allreduce", action="store_true",
                   help="with --nodes: send the gradients as float16 (Horovod's Compression.fp16)")
    return p


def checked(args) -> tuple:
    """(models, rank counts) of the command line, or a UserError for what is wrong in it."""
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in PLANS and not usermodel.is_reference(m)]
    if unknown:
        raise UserError(f"unknown model {unknown[0]!r} for the benchmark; choose from: {', '.join(PLANS)}, or give "
                        f"your own as path/to/file.py:function or package.module:function")
    models = [usermodel.absolute(m) if usermodel.is_reference(m) else m for m in models]
    for m in models:  # the user's code found and importable here, before any measurement starts
        if usermodel.is_reference(m):
            get_model(m)
    try:
        ranks = sorted({int(r) for r in args.ranks.split(",")})
    except ValueError:
        raise UserError(f"--ranks wants comma-separated integers, got {args.ranks!r}") from None
    if (min(args.steps, args.warmup, args.batch, args.interleave) < 0 or min(ranks) < 1 or (args.repeats or 1) < 1
            or args.seconds <= 0):
        raise UserError("--repeats, --ranks and --seconds must be positive, --steps, --warmup, --batch and "
                        "--interleave not negative")
    if args.interleave and args.variants:
        raise UserError("--interleave and --variants are two different measurements; give one of them")
    if 0 < args.warmup < 2:
        raise UserError("--warmup must be at least 2: the step rate is timed over the warm-up's second half")
    if args.nodes and (args.interleave or args.variants):
        raise UserError("--nodes is a measurement of its own; give it without --interleave or --variants")
    modes = [m for m, given in (("--nodes", args.nodes), ("--variants", args.variants), ("--interleave",
             args.interleave and not args.inputs), ("--inputs", args.inputs), ("--memory-check", args.memory_check))
             if given]
    if len(modes) > 1 and {"--inputs", "--memory-check"} & set(modes):
        raise UserError(f"{' and '.join(modes)} are different measurements; give one of them")
    if args.input_images < 0 or args.inputs and any(0 < args.input_images < plan(m, batch=args.batch).batch
                                                    for m in models):
        raise UserError(f"--input-images {args.input_images}: fewer than a model's global batch")
    return models, ranks


def checked_peers(text: str) -> tuple:
    names = () if text.strip() == "none" else tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise UserError(f"unknown peer {unknown[0]!r}; choose from: {', '.join(PEERS)} (comma-separated), or none")
    return names


def measurement(args) -> str:
    """The measurement the command line asks for, by the name of the files it writes."""
    return next(name for name, given in (("nodes", args.nodes), ("variants", args.variants), ("inputs", args.inputs),
                                         ("memory", args.memory_check), ("interleaved", args.interleave),
                                         ("bench", True)) if given)


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    args.models = args.models or ",".join(INPUT_MODELS if args.inputs else PLANS)
    models, ranks = checked(args)
    peers = checked_peers(args.peers)
    out = args.out or Path("results") / f"bench-{datetime.datetime.now():%Y-%m-%d-%H%M%S}"
    if out.exists():
        raise UserError(f"--out {out} already exists; hpccnn never overwrites results")
    name = measurement(args)
    options = Options(tuple(models), tuple(ranks), peers, Plan(args.batch, args.warmup, args.steps, args.seconds), out,
                      args.repeats or REPEATS.get(name, 1))
    if name == "nodes":
        _, md = scaling.run_nodes(options, args.nodes, scaling.parse_links(args.link_gbit), fp16=args.fp16_allreduce)
    elif name == "variants":
        names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown:
            raise UserError(f"unknown variant {unknown[0]!r}; choose from: {', '.join(VARIANTS)} (or all)")
        _, md = run_variants(options, names)
    elif name == "inputs":
        _, md = run_inputs(options, args.input_images or INPUT_IMAGES, args.interleave or INPUT_CHUNKS, args.keep_data)
    elif name == "memory":
        _, md = run_memory_check(options, args.input_images, args.keep_data)
    elif name == "interleaved":
        _, md = compare.run_interleaved(options, args.interleave)
    else:
        _, md = compare.run(options)
    print("\n" + md)
    print(f"hpccnn: {out / (name + '.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
