"""Custom C++ CPU operators, built with ``paddle.utils.cpp_extension`` at install time.

``make install`` (or ``python -m ernie_vilg2.ops.build``) compiles them into one library in
``ernie_vilg2/ops/_build``: softmax attention (``cpu_attention.cc``, MKL) and 2-D convolution
(``cpu_conv.cc``, oneDNN), both with their backward. Where they are not built (no compiler, a
Paddle wheel without MKL or oneDNN, another Paddle than the one they were built for),
:func:`cpu_attention` and :func:`cpu_conv2d` return None and the callers take their
pure-Paddle path, which computes the same function; ``ERNIE_VILG2_CPU_OPS=0`` in the
environment makes them take it too (to compare).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings

OPS_DIR = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.join(OPS_DIR, "_build")
LIBRARY = "ernie_vilg2_cpu_ops"
ATTENTION_OP = "ernie_vilg2_cpu_attention"
CONV_OP = "ernie_vilg2_cpu_conv2d"
SOURCES = [os.path.join(OPS_DIR, name) for name in ("cpu_attention.cc", "cpu_conv.cc")]
STAMP_FILE = os.path.join(BUILD_DIR, "stamp.json")

_loaded: dict = {}


def library_path() -> str:
    return os.path.join(BUILD_DIR, LIBRARY, f"{LIBRARY}.so")


def build_stamp() -> dict:
    """What a built library must match: the Paddle it links against and its sources."""
    import paddle

    digest = hashlib.sha256()
    for source in SOURCES:
        with open(source, "rb") as f:
            digest.update(f.read())
    return {"paddle": paddle.__version__, "paddle_commit": paddle.version.commit, "source_sha256": digest.hexdigest()}


def _stamp_matches() -> bool:
    try:
        with open(STAMP_FILE, encoding="utf-8") as f:
            return json.load(f) == build_stamp()
    except (OSError, ValueError):
        return False


def cpu_ops_available() -> bool:
    return _register()


def _register() -> bool:
    """Register the operators once; False where they are not built or out of date."""
    if LIBRARY not in _loaded:
        loaded = False
        if os.environ.get("ERNIE_VILG2_CPU_OPS", "1") != "0" and os.path.isfile(library_path()):
            if _stamp_matches():
                with warnings.catch_warnings():  # the extension module's build-time warnings (ccache)
                    warnings.simplefilter("ignore")
                    from paddle.utils.cpp_extension import load_op_meta_info_and_register_op
                load_op_meta_info_and_register_op(library_path())
                loaded = True
            else:
                warnings.warn(f"{library_path()} was built for another Paddle or source; the pure-Paddle "
                              "operators are used. Rebuild: python -m ernie_vilg2.ops.build")
        _loaded[LIBRARY] = loaded
    return _loaded[LIBRARY]


def cpu_attention(q, k, v, scale: float = 1.0):
    """softmax(scale * q k^T) v per head of contiguous float32 CPU tensors [B, tokens, heads,
    dim] (out: [B, N, heads, dim of v]), with its backward; None when the operators are not built."""
    if not _register():
        return None
    from paddle import _C_ops

    out, _ = _C_ops._run_custom_op(ATTENTION_OP, q, k, v, float(scale))
    return out


def cpu_conv2d(x, weight, bias, stride, padding, dilation):
    """``F.conv2d(x, weight, bias, stride, padding, dilation)`` (groups 1, NCHW) of contiguous
    float32 CPU tensors, with its backward; stride, padding, dilation: pairs of ints (padding
    on both sides). None when the operators are not built."""
    if not _register():
        return None
    from paddle import _C_ops

    (out,) = _C_ops._run_custom_op(CONV_OP, x, weight, bias, list(stride), list(padding), list(dilation))
    return out
