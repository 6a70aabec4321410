"""Custom C++ CPU operators, built with ``paddle.utils.cpp_extension`` at install time.

``make install`` (or ``python -m ernie_vilg2.ops.build``) compiles them into one library in
``ernie_vilg2/ops/_build``: softmax attention (``cpu_attention.cc``, MKL; heads of 8 floats over
128 keys or more in ``cpu_attention_narrow.cc``), 2-D convolution
(``cpu_conv.cc``, oneDNN), layer normalisation (``cpu_layer_norm.cc``), group normalisation
(``cpu_group_norm.cc``) and GEGLU's gate (``cpu_geglu.cc``), all with their backward. Where they
are not built (no compiler, a Paddle wheel without MKL or oneDNN, another Paddle than the one
they were built for), :func:`cpu_attention`, :func:`cpu_conv2d`, :func:`cpu_layer_norm`,
:func:`cpu_group_norm` and :func:`cpu_geglu` return None and the callers take their pure-Paddle
path, which computes the same function; ``ERNIE_VILG2_CPU_OPS=0`` in the environment makes them
take it too (to compare).

Their row loops are compiled for AVX-512, AVX2 + FMA and any CPU, and run the widest this
CPU has, or the one ``ERNIE_VILG2_CPU_ISA`` (generic, avx2, avx512) names: a path this CPU or
build lacks is refused with :class:`CpuIsaError` at the first call. Their blocks are sized from
the L2 cache read at run time. :func:`cpu_ops_config` says what this process uses.

Exported programs: inside :func:`into_programs` the callers trace the operators into the
static program being built (the exporter's programs with the operators); elsewhere a static
graph keeps the pure-Paddle path, which every inference engine and device runs.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import hashlib
import json
import os
import warnings
from typing import Optional

import paddle

from ..errors import ErnieViLG2Error
from ..utils.isa_caps import PATHS, VARIABLE

OPS_DIR = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.join(OPS_DIR, "_build")
LIBRARY = "ernie_vilg2_cpu_ops"
ATTENTION_OP = "ernie_vilg2_cpu_attention"
CONV_OP = "ernie_vilg2_cpu_conv2d"
LAYER_NORM_OP = "ernie_vilg2_cpu_layer_norm"
GROUP_NORM_OP = "ernie_vilg2_cpu_group_norm"
GEGLU_OP = "ernie_vilg2_cpu_geglu"
# What the callers trace into a program inside into_programs() (the layer norm is for training).
PROGRAM_OPERATORS = (ATTENTION_OP, CONV_OP, GROUP_NORM_OP, GEGLU_OP)
SOURCES = [os.path.join(OPS_DIR, name)
           for name in ("cpu_attention.cc", "cpu_attention_narrow.cc", "cpu_conv.cc", "cpu_layer_norm.cc",
                        "cpu_dispatch.cc", "cpu_group_norm.cc", "cpu_geglu.cc")]
HEADERS = [os.path.join(OPS_DIR, name)
           for name in ("cpu_dispatch.h", "cpu_attention.h", "cpu_thread_totals.h", "cpu_code_paths.inc",
                        "cpu_path_choice.inc", "cpu_row_loops.inc", "cpu_attention_narrow.inc",
                        "cpu_layer_norm_rows.inc", "cpu_group_norm_rows.inc", "cpu_geglu_rows.inc")]
STAMP_FILE = os.path.join(BUILD_DIR, "stamp.json")

CACHE_SOURCES = ("default", "sysconf", "sysfs")  # cpu_dispatch.h's CacheSource

# LIBRARY: whether the package's operators are usable; "path" and "stamp": the library file this
# process registered (the package's build or an export folder's copy); "ctypes": its C interface.
_loaded: dict = {}
_INTO_PROGRAMS = contextvars.ContextVar("ernie_vilg2_cpu_ops_into_programs", default=False)


class CpuIsaError(ErnieViLG2Error, ValueError):
    """ERNIE_VILG2_CPU_ISA names a code path this CPU or build of the operators lacks."""


class OperatorsUnavailableError(ErnieViLG2Error, RuntimeError):
    """The operators were asked for where they are not built (or are out of date)."""


def library_path() -> str:
    return os.path.join(BUILD_DIR, LIBRARY, f"{LIBRARY}.so")


def build_stamp() -> dict:
    """What a built library must match: the Paddle it links against and its sources."""
    import paddle

    digest = hashlib.sha256()
    for source in SOURCES + HEADERS:
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


@contextlib.contextmanager
def into_programs():
    """Within, the static graphs being traced call the operators (:func:`operators_apply`
    answers True for their values). Raises :class:`OperatorsUnavailableError` where the
    operators are not built."""
    if not _register():
        raise OperatorsUnavailableError(f"{library_path()} is not built or is out of date "
                                        "(python -m ernie_vilg2.ops.build)")
    token = _INTO_PROGRAMS.set(True)
    try:
        yield
    finally:
        _INTO_PROGRAMS.reset(token)


@paddle.jit.not_to_static  # run as written while a static graph is traced
def operators_apply(x) -> bool:
    """Whether the operators are for ``x``: a CPU tensor of the dynamic graph, or a value of a
    static graph traced inside :func:`into_programs`. (Built or not is the operator calls' own
    answer: they return None.)"""
    if paddle.in_dynamic_mode():
        return x.place.is_cpu_place()
    return _INTO_PROGRAMS.get()


def _register() -> bool:
    """Register the operators once; False where they are not built or out of date."""
    if LIBRARY not in _loaded:
        loaded = False
        if os.environ.get("ERNIE_VILG2_CPU_OPS", "1") != "0":
            if "path" in _loaded:  # an export folder's copy came first: the same operators?
                loaded = _loaded["stamp"] == build_stamp()
                if not loaded:
                    warnings.warn(f"{_loaded['path']}, another build of the operators, is registered in this "
                                  "process; the pure-Paddle operators are used")
            elif os.path.isfile(library_path()):
                if _stamp_matches():
                    _register_file(library_path(), build_stamp())
                    loaded = True
                else:
                    warnings.warn(f"{library_path()} was built for another Paddle or source; the pure-Paddle "
                                  "operators are used. Rebuild: python -m ernie_vilg2.ops.build")
        _loaded[LIBRARY] = loaded
    if _loaded[LIBRARY] and _library().ernie_vilg2_cpu_isa() < 0:
        raise CpuIsaError(_library().ernie_vilg2_cpu_isa_error().decode())
    return _loaded[LIBRARY]


def _register_file(path: str, stamp: dict) -> None:
    # One library per process: loading a second file with the same operators aborts it.
    with warnings.catch_warnings():  # the extension module's build-time warnings (ccache)
        warnings.simplefilter("ignore")
        from paddle.utils.cpp_extension import load_op_meta_info_and_register_op
    load_op_meta_info_and_register_op(path)
    _loaded["path"], _loaded["stamp"] = path, stamp


def register_copy(path: str, stamp: dict) -> Optional[str]:
    """Register the operators from ``path``, a copy of the library built as ``stamp`` says (an
    export folder's), unless this process has them: the package's own build where it is the
    same, else the copy. Returns why they cannot be, or None."""
    if "path" not in _loaded and os.path.isfile(library_path()) and _stamp_matches() and build_stamp() == stamp:
        _register()
    if "path" in _loaded:
        return None if _loaded["stamp"] == stamp else f"another build of them is registered ({_loaded['path']})"
    try:
        _register_file(path, stamp)
    except Exception as exc:  # dlopen or registration: Paddle's last line says which
        return f"{path} could not be loaded ({str(exc).strip().splitlines()[-1]})"
    return None


def _library() -> ctypes.CDLL:
    """The registered library's C interface (cpu_dispatch.cc): the same loaded copy."""
    if "ctypes" not in _loaded:
        lib = ctypes.CDLL(_loaded.get("path", library_path()))
        lib.ernie_vilg2_cpu_isa_error.restype = ctypes.c_char_p
        lib.ernie_vilg2_choose_cpu_isa.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                                   ctypes.c_int]
        lib.ernie_vilg2_read_cache_sizes.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int64)]
        lib.ernie_vilg2_attention_block_bytes.argtypes = [ctypes.c_int64]
        lib.ernie_vilg2_attention_block_bytes.restype = ctypes.c_int64
        _loaded["ctypes"] = lib
    return _loaded["ctypes"]


def cache_sizes(sysfs_dir: Optional[str] = None, use_sysconf: bool = True) -> dict:
    """The operators' reading of the L1d and L2 caches per core: from sysconf, else the sysfs
    cache folder (``/sys/devices/system/cpu/cpu0/cache`` is the operators' own; None: none),
    else the defaults; with where each came from. Needs the built library."""
    out = (ctypes.c_int64 * 4)()
    _library().ernie_vilg2_read_cache_sizes(None if sysfs_dir is None else os.fsencode(sysfs_dir),
                                            int(use_sysconf), out)
    return {"l1d_bytes": out[0], "l2_bytes": out[1], "l1d_source": CACHE_SOURCES[out[2]],
            "l2_source": CACHE_SOURCES[out[3]]}


def cpu_ops_config() -> Optional[dict]:
    """What the operators run with in this process (None where they are not built or are
    switched off): ``isa``, the code path of their row loops; ``paths``, those this CPU and
    build have, widest first; ``requested``, ERNIE_VILG2_CPU_ISA (or "auto"); the L1d and L2
    sizes they read and from where; ``attention_block_bytes``, the scores of one block of query
    rows; ``mkl`` and ``onednn``, the code paths of the libraries they call."""
    if not _register():
        return None
    lib = _library()
    caches = (ctypes.c_int64 * 4)()
    lib.ernie_vilg2_cpu_caches(caches)
    paths = lib.ernie_vilg2_cpu_isa_paths()
    return {"isa": PATHS[lib.ernie_vilg2_cpu_isa()], "requested": os.environ.get(VARIABLE) or "auto",
            "paths": [name for bit, name in reversed(list(enumerate(PATHS))) if paths >> bit & 1],
            "l1d_bytes": caches[0], "l2_bytes": caches[1], "l1d_source": CACHE_SOURCES[caches[2]],
            "l2_source": CACHE_SOURCES[caches[3]], "attention_block_bytes": lib.ernie_vilg2_attention_block_bytes(0),
            "mkl": mkl_code_path(), "onednn": onednn_code_path()}


# MKL's code branches (mkl_cbwr_get_auto_branch: MKL_CBWR_* of mkl_service.h).
MKL_BRANCHES = {4: "SSE2", 6: "SSSE3", 7: "SSE4.1", 8: "SSE4.2", 9: "AVX", 10: "AVX2", 12: "AVX-512",
                14: "AVX-512 (E1)"}


def _paddle_library(name: str) -> Optional[ctypes.CDLL]:
    import paddle

    path = os.path.join(os.path.dirname(paddle.__file__), "libs", name)
    return ctypes.CDLL(path) if os.path.isfile(path) else None


def mkl_code_path() -> str:
    """The code branch the MKL of Paddle's wheel runs on this CPU (after MKL_ENABLE_INSTRUCTIONS
    and MKL_DEBUG_CPU_TYPE), or "unknown"."""
    lib = _paddle_library("libmklml_intel.so")
    if lib is None or not hasattr(lib, "mkl_serv_cbwr_get_auto_branch"):
        return "unknown"
    branch = lib.mkl_serv_cbwr_get_auto_branch()
    return MKL_BRANCHES.get(branch, f"branch {branch}")


def onednn_code_path() -> str:
    """oneDNN's widest instruction set in this process (after ONEDNN_MAX_CPU_ISA), or "unknown"."""
    lib = _paddle_library("libdnnl.so.3")
    if lib is None or not hasattr(lib, "dnnl_get_effective_cpu_isa"):
        return "unknown"
    isa = lib.dnnl_get_effective_cpu_isa()
    if hasattr(lib, "dnnl_cpu_isa2str"):
        lib.dnnl_cpu_isa2str.restype = ctypes.c_char_p
        return lib.dnnl_cpu_isa2str(isa).decode().removeprefix("cpu_isa_")
    return f"isa {isa:#x}"


def _dense(x):
    # The operators read their inputs' memory in row-major order; a static graph's values are.
    return x.contiguous() if paddle.in_dynamic_mode() else x


@paddle.jit.not_to_static  # run as written while a static graph is traced
def cpu_attention(q, k, v, scale: float = 1.0):
    """softmax(scale * q k^T) v per head of float32 CPU tensors [B, tokens, heads,
    dim] (out: [B, N, heads, dim of v]), with its backward; None when the operators are not built."""
    if not _register():
        return None
    from paddle import _C_ops

    out, _ = _C_ops._run_custom_op(ATTENTION_OP, _dense(q), _dense(k), _dense(v), float(scale))
    return out


@paddle.jit.not_to_static  # run as written while a static graph is traced
def cpu_conv2d(x, weight, bias, stride, padding, dilation):
    """``F.conv2d(x, weight, bias, stride, padding, dilation)`` (groups 1, NCHW) of float32 CPU
    tensors (weight and bias contiguous), with its backward; stride, padding, dilation: pairs of
    ints (padding on both sides). None when the operators are not built."""
    if not _register():
        return None
    from paddle import _C_ops

    (out,) = _C_ops._run_custom_op(CONV_OP, _dense(x), weight, bias, list(stride), list(padding), list(dilation))
    return out


def cpu_layer_norm(x, weight, bias, epsilon: float):
    """``F.layer_norm(x, x.shape[-1:], weight, bias, epsilon)`` of float32 CPU tensors (weight
    and bias: contiguous, [C]), with its backward; None when the operators are not built."""
    if not _register():
        return None
    from paddle import _C_ops

    out, _, _ = _C_ops._run_custom_op(LAYER_NORM_OP, _dense(x), weight, bias, float(epsilon))
    return out


@paddle.jit.not_to_static  # run as written while a static graph is traced
def cpu_group_norm(x, weight, bias, groups: int, epsilon: float):
    """``F.group_norm(x, groups, epsilon, weight, bias)`` of a float32 CPU tensor [N, C, *]
    (NCHW; weight and bias: contiguous, [C]), with its backward; None when the operators are not built."""
    if not _register():
        return None
    from paddle import _C_ops

    out, _, _ = _C_ops._run_custom_op(GROUP_NORM_OP, _dense(x), weight, bias, int(groups), float(epsilon))
    return out


@paddle.jit.not_to_static  # run as written while a static graph is traced
def cpu_geglu(hidden, gate, bias):
    """``(hidden + bias[:D]) * F.gelu(gate + bias[D:])`` (the exact GELU) of float32 CPU tensors
    hidden and gate [..., D] and bias [2D] (contiguous: a GEGLU projection's bias), with its
    backward; None when the operators are not built."""
    if not _register():
        return None
    from paddle import _C_ops

    (out,) = _C_ops._run_custom_op(GEGLU_OP, _dense(hidden), _dense(gate), bias)
    return out
