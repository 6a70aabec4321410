"""Cap MKL's and oneDNN's instruction sets at the code path ``ERNIE_VILG2_CPU_ISA`` forces.

The C++ CPU operators (:mod:`ernie_vilg2.ops`) run their own row loops on the widest path this
CPU has (avx512, avx2, generic), or on the one ``ERNIE_VILG2_CPU_ISA`` names, and call MKL and
oneDNN, which pick their own kernels by CPU. So that a forced path runs as on a CPU that has
no more (the tests run each path, the benchmarks time them), ``generic`` and ``avx2`` also cap
those libraries through their own variables, which they read at their first call:
``MKL_ENABLE_INSTRUCTIONS`` (SSE4_2, AVX2) and ``ONEDNN_MAX_CPU_ISA`` (SSE41, AVX2).
``avx512`` caps nothing: it names the widest of our loops, and the libraries may use more
(AMX). Applied by :func:`~ernie_vilg2.utils.cpu_tuning.tune_cpu_process`, never over a value
the user set.
"""
from __future__ import annotations

import os

VARIABLE = "ERNIE_VILG2_CPU_ISA"
PATHS = ("generic", "avx2", "avx512")  # narrowest first
CAPS = {"generic": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
        "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
# oneDNN also reads its variable under the library's former name.
SAME_AS = {"ONEDNN_MAX_CPU_ISA": "DNNL_MAX_CPU_ISA"}


def cap_libraries(environ=os.environ) -> bool:
    """Set the libraries' caps of the forced path; return whether any was set here."""
    caps = {name: value for name, value in CAPS.get(environ.get(VARIABLE, ""), {}).items()
            if name not in environ and SAME_AS.get(name, name) not in environ}
    environ.update(caps)
    return bool(caps)
