"""Let MKL take its AVX2 code path on AMD CPUs that have AVX2 and FMA.

The MKL inside Paddle's CPU wheel (libmklml_intel.so, the BLAS and vector maths behind
Paddle's matmul and our C++ attention operator) picks its code path by CPU vendor and runs
its SSE path on AMD processors. ``MKL_DEBUG_CPU_TYPE=5`` selects the AVX2 path, which these
CPUs execute, and faster (docs/performance.md has the figures). MKL reads the
variable at its first call, so the entry points set it first thing, through
:func:`~ernie_vilg2.utils.cpu_tuning.tune_cpu_process`, before any op runs.

Nothing changes where the variable is already set, on Intel CPUs (MKL already dispatches
well there), on CPUs without AVX2/FMA, or with ``ERNIE_VILG2_MKL_AVX2=0``.
"""
from __future__ import annotations

import os

VARIABLE = "MKL_DEBUG_CPU_TYPE"
AVX2 = "5"
OPT_OUT = "ERNIE_VILG2_MKL_AVX2"


def amd_with_avx2(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo text describes an AMD (or Hygon) CPU with AVX2 and FMA."""
    vendor = flags = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = value
        if vendor and flags:
            break
    return vendor in ("AuthenticAMD", "HygonGenuine") and {"avx2", "fma"} <= set(flags.split())


def prefer_avx2(environ=os.environ, cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """Set MKL_DEBUG_CPU_TYPE=5 where it helps; return whether it was set here."""
    if VARIABLE in environ or environ.get(OPT_OUT, "1") == "0":
        return False
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            cpuinfo = f.read()
    except OSError:
        return False
    if not amd_with_avx2(cpuinfo):
        return False
    environ[VARIABLE] = AVX2
    return True
