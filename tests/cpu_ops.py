"""The C++ CPU operators in tests: present wherever a compiler is (``make install`` builds them)."""
import shutil

import pytest

from ernie_vilg2 import ops
from ernie_vilg2.ops.build import compiler


def require_cpu_attention_op():
    """Fail where the operator should have been built; skip only where it cannot be."""
    if ops.cpu_attention_available():
        return
    if shutil.which(compiler()) is None:
        pytest.skip(f"no C++ compiler ({compiler()}): the CPU attention operator cannot be built")
    pytest.fail("the CPU attention operator is not built: run `make install` or `python -m ernie_vilg2.ops.build`")
