"""The C++ CPU operators in tests: present wherever a compiler is (``make install`` builds them)."""
import shutil

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
