"""python -m hpccnn.bench: hpccnn against plain Keras, Horovod's recipe and MultiWorkerMirroredStrategy, the speed options, the inputs, and several nodes. Nothing imports it."""
