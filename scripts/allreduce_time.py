"""How long Horovod's allreduce of a model's gradient takes between the ranks it is started with,
on its own, with no training: what a step pays on top of its compute.

    horovodrun -np 2 -H localhost:2 python scripts/allreduce_time.py alexnet_galaxy10 alexnet227

Prints, from rank 0, one line per model: gradient size and the median of the timed allreduces
(after 2 untimed ones), as Horovod's DistributedOptimizer sends it (one fused float32 allreduce).
`python -m hpccnn.bench --nodes 2` times the same between namespace nodes over shaped links."""

import sys

from hpccnn.training import dist
from hpccnn.benchmark.plans import PLANS
from hpccnn.benchmark.scaling import ALLREDUCES, time_allreduce


def main(models) -> int:
    world = dist.init()
    from hpccnn.models.zoo import get_model

    for name in models:
        spec = get_model(name)
        model = spec(spec.input_shape, 10)
        seconds = time_allreduce(model)
        if world.is_main:
            mb = model.count_params() * 4 / 1e6
            print(f"{name}: {mb:.1f} MB of float32 gradient, allreduce over {world.size} ranks "
                  f"{seconds * 1000:.1f} ms (median of {ALLREDUCES})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(PLANS)))
