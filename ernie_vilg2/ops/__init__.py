"""Custom C++ CPU operators, built with ``paddle.utils.cpp_extension`` at install time.

``make install`` (or ``python -m ernie_vilg2.ops.build``) compiles them into
``ernie_vilg2/ops/_build``. Where they are not built (no compiler, a Paddle wheel without
MKL, another Paddle than the one they were built for), :func:`cpu_attention` returns None
and the callers take their pure-Paddle path, which computes the same function;
``ERNIE_VILG2_CPU_OPS=0`` in the environment makes them take it too (to compare).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings

OPS_DIR = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.join(OPS_DIR, "_build")
ATTENTION_OP = "ernie_vilg2_cpu_attention"
ATTENTION_SOURCE = os.path.join(OPS_DIR, "cpu_attention.cc")
STAMP_FILE = os.path.join(BUILD_DIR, "stamp.json")

_loaded: dict = {}


def library_path(name: str = ATTENTION_OP) -> str:
    return os.path.join(BUILD_DIR, name, f"{name}.so")


def build_stamp() -> dict:
    """What a built library must match: the Paddle it links against and its source."""
    import paddle

    with open(ATTENTION_SOURCE, "rb") as f:
        source = hashlib.sha256(f.read()).hexdigest()
    return {"paddle": paddle.__version__, "paddle_commit": paddle.version.commit, "source_sha256": source}


def _stamp_matches() -> bool:
    try:
        with open(STAMP_FILE, encoding="utf-8") as f:
            return json.load(f) == build_stamp()
    except (OSError, ValueError):
        return False


def cpu_attention_available() -> bool:
    return _register() is not None


def _register():
    """Register the attention operator once; None where it is not built or out of date."""
    if ATTENTION_OP not in _loaded:
        op = None
        if os.environ.get("ERNIE_VILG2_CPU_OPS", "1") != "0" and os.path.isfile(library_path()):
            if _stamp_matches():
                with warnings.catch_warnings():  # the extension module's build-time warnings (ccache)
                    warnings.simplefilter("ignore")
                    from paddle.utils.cpp_extension import load_op_meta_info_and_register_op
                load_op_meta_info_and_register_op(library_path())
                op = ATTENTION_OP
            else:
                warnings.warn(f"{library_path()} was built for another Paddle or source; the pure-Paddle "
                              "attention is used. Rebuild: python -m ernie_vilg2.ops.build")
        _loaded[ATTENTION_OP] = op
    return _loaded[ATTENTION_OP]


def cpu_attention(q, k, v, scale: float = 1.0):
    """softmax(scale * q k^T) v of contiguous float32 CPU tensors [B, heads, tokens, dim],
    with its backward; None when the operator is not built."""
    if _register() is None:
        return None
    from paddle import _C_ops

    out, _ = _C_ops._run_custom_op(ATTENTION_OP, q, k, v, float(scale))
    return out
