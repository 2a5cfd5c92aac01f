"""python -m hpccnn.bench --variants: speed options, each against hpccnn's defaults on the same rank count,
measured back to back in pairs (variants.csv, variants.md)."""

import itertools
import statistics

from hpccnn.benchmark.measure import measure, setting_args
from hpccnn.benchmark.plans import Options
from hpccnn.benchmark.results import document, write
from hpccnn.common import tables


# What --variants tries, each against hpccnn's defaults on the same rank count, measured back to back:
# name: (ranks, hpccnn.train settings, environment variables)
VARIANTS = {
    "none (A/A)": (1, {}, {}),  # the defaults against themselves: how far noise alone moves a ratio
    "xla": (1, {"xla": "on"}, {}),
    "xla off": (1, {"xla": "off"}, {}),  # not even GPU auto-clustering's flag
    "mixed precision": (1, {"mixed_precision": "on"}, {}),  # float16
    "bfloat16": (1, {"mixed_precision": "bfloat16"}, {}),
    # hpccnn's default is 8 (hpccnn.models.experiments): this measures what it gains over Keras' 1
    "steps_per_execution 1": (1, {"steps_per_execution": 1}, {}),
    "oneDNN off": (1, {}, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
    # Horovod's own cycle for one rank, where hpccnn sets 20 ms (hpccnn.training.dist: SINGLE_RANK_CYCLE_MS)
    "Horovod cycle 1 ms 1 rank": (1, {}, {"HOROVOD_CYCLE_TIME": "1"}),
    # hpccnn keeps freed memory for the next step (hpccnn.training.dist.keep_freed_memory): glibc's own behaviour
    "glibc malloc": (1, {}, {"HPCCNN_MALLOC": "glibc"}),
    "none (A/A) 2 ranks": (2, {}, {}),
    "glibc malloc 2 ranks": (2, {}, {"HPCCNN_MALLOC": "glibc"}),
    "fp16 allreduce": (2, {"fp16_allreduce": "true"}, {}),
    "Horovod cycle 10 ms": (2, {}, {"HOROVOD_CYCLE_TIME": "10"}),
    "Horovod fusion 256 MB": (2, {}, {"HOROVOD_FUSION_THRESHOLD": str(256 * 2 ** 20)}),
    "no MPI yield": (2, {}, {"OMPI_MCA_mpi_yield_when_idle": "0"}),
}


def _variant(model, name, how, log):
    """Variant name's images/s, or None (said in the log) if it does not run."""
    ranks, settings, env = VARIANTS[name]
    try:
        return measure("hpccnn", model, ranks, how, env, setting_args(settings))["images_per_second"]
    except RuntimeError as err:
        log(f"{model:17} {name:22} failed: {str(err).strip().splitlines()[-1][:200]}")
        return None


def run_variants(options: Options, variants):
    """Each variant against the defaults on the same ranks, in pairs whose order alternates (default
    first, then variant first), so neither a slow drift of a shared machine nor a bias for the first
    or second process of a pair favours either side; the ratio is the median of the pairs' ratios."""
    repeats, log = options.repeats, options.log
    rows = []
    for model, name in itertools.product(options.models, variants):
        how, ranks = options.plan(model), VARIANTS[name][0]
        sides = {"default": lambda: measure("hpccnn", model, ranks, how)["images_per_second"],
                 "variant": lambda: _variant(model, name, how, log)}
        pairs = []  # {"default": images/s, "variant": images/s or None if it failed}
        for repeat in range(repeats):
            pairs.append({side: sides[side]() for side in (sides if repeat % 2 == 0 else reversed(sides))})
            if pairs[-1]["variant"] is None:
                break
        failed = pairs[-1]["variant"] is None
        r = {"model": model, "batch": how.batch, "ranks": ranks, "variant": name,
             "default_images_per_second": round(statistics.median(p["default"] for p in pairs), 1),
             "variant_images_per_second": None if failed else round(statistics.median(p["variant"] for p in pairs), 1),
             "ratio": None if failed else round(statistics.median(p["variant"] / p["default"] for p in pairs), 3),
             "pairs": len(pairs)}
        rows.append(r)
        log(f"{model:17} {name:22} {ranks} rank(s)  default {r['default_images_per_second']:8.1f} img/s  "
            + ("failed" if failed else f"variant {r['variant_images_per_second']:8.1f} img/s  x{r['ratio']:.2f}"))
    return rows, write(options.out, "variants", rows, document(
        f": each variant against hpccnn's defaults on the same ranks, {repeats} pairs in alternating order, "
        f"median ratio.", VARIANT_COLUMNS, rows))


VARIANT_COLUMNS = {
    "model": tables.key("model"), "batch": tables.key("batch"), "ranks": tables.key("ranks"),
    "variant": tables.key("variant"), "default images/s": tables.key("default_images_per_second", ",.1f"),
    "variant images/s": lambda r: "failed" if r["ratio"] is None else f"{r['variant_images_per_second']:,.1f}",
    "variant / default": lambda r: "" if r["ratio"] is None else f"{r['ratio']:.2f}×",
}
