"""TensorFlow's start-up lines that aren't about the user's run, kept out of hpccnn's output.

TensorFlow 2.15 prints, on importing, INFO lines (oneDNN's notice, "Could not find cuda drivers",
"This TensorFlow binary is optimized to use available CPU instructions") and, on every machine,
three ERROR lines "Unable to register cuDNN/cuFFT/cuBLAS factory" (it registers CUDA's plugins
twice, tensorflow#62075) and a WARNING "TF-TRT Warning: Could not find TensorRT". Users read them as
failures. hpccnn, when imported, hides TensorFlow's INFO lines (TF_CPP_MIN_LOG_LEVEL=1: warnings
and errors still show) and drops those known lines while TensorFlow is imported; every other line
passes. A TF_CPP_MIN_LOG_LEVEL of the user's wins, and 0 (everything) turns the filter off too.

It has to happen inside hpccnn, before TensorFlow starts, to reach a run that `horovodrun` or
`mpirun` typed by hand started: nothing of hpccnn's runs before the ranks do.
"""

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys

NOISE = re.compile(rb"Unable to register cu(DNN|FFT|BLAS) factory: Attempting to register factory for plugin"
                   rb"|TF-TRT Warning: Could not find TensorRT")


@contextlib.contextmanager
def filtered_stderr(noise=NOISE):
    """File descriptor 2 (where TensorFlow's C++ logs go) through a filter that drops noise's lines.

    The filter is a forked process, not a thread, so that a crash inside (a CPU without the
    instructions TensorFlow needs aborts it) still shows its last words: the filter reads the pipe
    to its end once this process is gone.
    """
    sys.stderr.flush()
    read, write = os.pipe()
    saved = os.dup(2)
    child = os.fork()
    if child == 0:
        try:
            os.close(write)
            with os.fdopen(read, "rb") as lines, os.fdopen(saved, "wb", buffering=0) as stderr:
                for line in lines:
                    if not noise.search(line):
                        stderr.write(line)
        finally:
            os._exit(0)
    os.close(read)
    os.dup2(write, 2)
    os.close(write)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last end here: the filter forwards what is left and ends
        os.close(saved)
        os.waitpid(child, 0)


class _Loader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with filtered_stderr():
            self.loader.exec_module(module)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds tensorflow as Python would, once, and imports it through filtered_stderr."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec


def install(environ=os.environ) -> None:
    """Hides TensorFlow's start-up noise in this process, unless TensorFlow has started already."""
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if "tensorflow" in sys.modules or environ["TF_CPP_MIN_LOG_LEVEL"].strip() == "0" or not hasattr(os, "fork"):
        return
    if not any(isinstance(finder, _QuietTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())
