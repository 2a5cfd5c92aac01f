"""hpccnn: Keras CNNs (the seeds' and your own), trained data-parallel with Horovod on HPC clusters.

From a script or a notebook (the same under python, horovodrun, mpirun, srun and sbatch)::

    import hpccnn

    def build(input_shape, classes):  # returns a keras.Model, compiled or not
        ...

    result = hpccnn.fit(build, dataset="digits", epochs=5, learning_rate=1e-3)
    print(result.folder, result.test_accuracy)  # on rank 0; None on the others
"""

# Imports sit at the top of every module, except these, imported inside the functions that use them: TensorFlow
# (with Keras), Horovod and mpi4py take seconds to start and mpi4py starts MPI, and scikit-learn, pandas,
# matplotlib, h5py, PIL, astroNN and submitit are heavy; so python -m hpccnn.submit --status, stage, report and
# --help start in a fraction of a second, and only a rank that trains starts TensorFlow and MPI
# (tests/test_architecture.py holds the list).
from hpccnn.common import quiet

__version__ = "0.1.0"
quiet.install()  # before anything imports TensorFlow: its start-up noise stays out of every command's output

from hpccnn.training.api import Result, experiment, fit, run  # noqa: E402  (after quiet.install)
from hpccnn.common.errors import UserError  # noqa: E402
from hpccnn.models.experiments import Experiment  # noqa: E402

__all__ = ["fit", "experiment", "run", "Result", "Experiment", "UserError"]
