"""The C++ CPU operators in tests: present wherever a compiler is (``make install`` builds them)."""
import ctypes
import os
import shutil

import paddle
import pytest

from ernie_vilg2 import ops
from ernie_vilg2.ops.build import compiler


def require_cpu_ops():
    """Fail where the operators should have been built; skip only where they cannot be."""
    if ops.cpu_ops_available():
        return
    if shutil.which(compiler()) is None:
        pytest.skip(f"no C++ compiler ({compiler()}): the CPU operators cannot be built")
    pytest.fail("the CPU operators are not built: run `make install` or `python -m ernie_vilg2.ops.build`")


class OmpThreads:
    """The OpenMP thread count of the operators' runtime (MKL's libiomp5) for this thread."""

    def __init__(self, threads):
        self.lib = ctypes.CDLL(os.path.join(os.path.dirname(paddle.__file__), "libs", "libiomp5.so"))
        self.threads, self.previous = threads, self.lib.omp_get_max_threads()

    def __enter__(self):
        self.lib.omp_set_num_threads(self.threads)

    def __exit__(self, *exc):
        self.lib.omp_set_num_threads(self.previous)
