"""The runner "mwms" of python -m hpccnn.bench: TensorFlow's MultiWorkerMirroredStrategy, what users would pick
instead of hpccnn and Horovod, set up as TensorFlow's multi-worker tutorial does."""

import json
import os

from hpccnn.benchmark.trainer import Trainer, my_part, random_images
from hpccnn.models.zoo import get_model
from hpccnn.training import dist, inputs
from hpccnn.training.inputs import Batches


def layout():
    """(this worker's index, workers, the most workers on a node) from the launcher: srun's SLURM_* variables,
    else Open MPI's (horovodrun, mpirun), else one worker alone."""
    env = os.environ
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:  # SLURM_STEP_TASKS_PER_NODE: "2", "2(x3)" or "2(x3),1"
        per_node = max(int(part.split("(")[0]) for part in env["SLURM_STEP_TASKS_PER_NODE"].split(","))
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), per_node
    if "OMPI_COMM_WORLD_RANK" in env:
        return (int(env["OMPI_COMM_WORLD_RANK"]), int(env["OMPI_COMM_WORLD_SIZE"]),
                int(env.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1")))
    return 0, 1, 1


def multi_worker_strategy(index: int, workers: int, local: int):
    """The strategy of worker index of workers (local of them on its node): TF_CONFIG naming every worker
    (ports on loopback from HPCCNN_MWMS_PORTS under horovodrun's or mpirun's layout), or under srun
    SlurmClusterResolver's cluster (on CPU nodes without its GPU accounting: see below);
    collectives over gRPC, the ring implementation (the only one for CPUs)."""
    import tensorflow as tf

    resolver = None
    if workers > 1 and "SLURM_STEP_ID" in os.environ:
        port = int(os.environ.get("HPCCNN_MWMS_PORT", "29500"))
        if tf.config.list_physical_devices("GPU"):
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=port)
        else:
            # On CPU nodes the resolver can't be used as it is: it pairs each task of a node with a slice of the
            # node's GPUs (zip of the tasks and range(0, gpus per node, gpus per task)), so with 0 GPUs it lists
            # no task, with 0 per task range() raises, and left alone it runs nvidia-smi. With one placeholder GPU
            # per task it lists every task, but then tells the strategy each worker has a GPU (its replicas
            # on a GPU:0 that isn't there: gradients reduced one by one, "Efficient batch_reduce is not
            # supported"). So: its cluster (hosts, ports, this task), and no accelerators.
            slurm = tf.distribute.cluster_resolver.SlurmClusterResolver(
                port_base=port, gpus_per_node=local, gpus_per_task=1, auto_set_gpu=False)
            spec = slurm.cluster_spec()
            resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
                spec, task_type=slurm.task_type, task_id=slurm.task_id, num_accelerators={}, rpc_layer="grpc")
    elif workers > 1:
        ports = os.environ["HPCCNN_MWMS_PORTS"].split(",")
        os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports[:workers]]},
                                              "task": {"type": "worker", "index": index}})
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)


def mwms_trainer(exp, world, shape, batch) -> Trainer:
    """TensorFlow's MultiWorkerMirroredStrategy, set up as its multi-worker tutorial does (multi_worker_strategy). Each
    worker gets the same threads as an hpccnn rank, and the same images through hpccnn's input pipeline,
    batched by the strategy's per-replica batch of the global batch (distribute_datasets_from_function)."""
    import tensorflow as tf

    index, workers, local = layout()
    threads = dist.cores_for_this_rank(local)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    strategy = multi_worker_strategy(index, workers, local)
    spec = get_model(exp.model)
    with strategy.scope():
        model = spec(shape, 10)
        model.compile(optimizer=tf.keras.optimizers.legacy.SGD(exp.learning_rate), metrics=["accuracy"],
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=spec.logits))
    per_worker = max(1, batch // workers)

    def fit(steps, callbacks, seed):
        def dataset(context):
            per = context.get_per_replica_batch_size(per_worker * workers)
            x, y = random_images(shape, per * steps, seed=(seed, context.input_pipeline_id))
            return inputs.train_pipeline(x, y, Batches(per, steps, seed=(seed, context.input_pipeline_id)), 1 / 255)

        model.fit(strategy.distribute_datasets_from_function(dataset), steps_per_epoch=steps, epochs=1, verbose=0,
                  callbacks=callbacks)

    def fit_in_order(x, y):
        mine = my_part(x, y, per_worker * workers, index, workers)

        def dataset(context):
            return inputs.pipeline(*mine, context.get_per_replica_batch_size(per_worker * workers), 1 / 255)

        model.fit(strategy.distribute_datasets_from_function(dataset), steps_per_epoch=len(x) // (per_worker * workers),
                  epochs=1, verbose=0)

    def gather(value):  # every worker's number, in worker order, by one cross-worker sum
        one_hot = [0.0] * workers
        one_hot[index] = float(value)
        summed = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(one_hot)), axis=None)
        return [float(v) for v in summed.numpy()]

    def share(value):
        return type(value)(gather(value)[0])

    return Trainer(model, fit, per_worker, 1, workers, index == 0, share=share,
                   gather=lambda value: [{"rss_mb": v} for v in gather(value["rss_mb"])],
                   setup={"sharding": "a pipeline per worker (distribute_datasets_from_function)",
                          "input": "uint8 through hpccnn's tf.data pipeline",
                          "collective": "TensorFlow collectives over gRPC, ring" if workers > 1 else "none"},
                   fit_in_order=fit_in_order, rank=index)
