"""How long Horovod's allreduce of a model's gradient takes between the ranks it is started with,
on its own, with no training: what a step pays on top of its compute.

    horovodrun -np 2 -H localhost:2 python scripts/allreduce_time.py alexnet_galaxy10 alexnet227

Prints, from rank 0, one line per model: gradient size and the median of 20 timed allreduces
(after 3 untimed ones), as Horovod's DistributedOptimizer sends it (one fused float32 allreduce)."""

import statistics
import sys
import time

from hpccnn import dist
from hpccnn.bench import MODELS


def main(models) -> int:
    world = dist.init()
    import tensorflow as tf
    import horovod.tensorflow as hvd_tf

    from hpccnn.models import get_model

    for name in models:
        side, channels = MODELS[name][:2]
        model = get_model(name)((side, side, channels), 10)
        grads = [tf.ones_like(v) for v in model.trainable_variables]
        mb = sum(g.shape.num_elements() for g in grads) * 4 / 1e6
        times = []
        for i in range(23):
            start = time.perf_counter()
            out = hvd_tf.grouped_allreduce(grads, op=hvd_tf.Average, name=f"{name}_{i}")
            _ = [o.numpy() for o in out]
            if i >= 3:
                times.append(time.perf_counter() - start)
        if world.is_main:
            print(f"{name}: {mb:.1f} MB of float32 gradient, allreduce over {world.size} ranks "
                  f"{statistics.median(times) * 1000:.1f} ms (median of {len(times)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(MODELS)))
