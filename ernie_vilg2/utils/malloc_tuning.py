"""Keep freed memory in the process's heap instead of handing it back to the OS at once.

Paddle's CPU kernels allocate every output afresh. With glibc's default thresholds a tensor
of a few MiB is mapped from the OS, and its first write page-faults each 4 KiB page, and
memory freed at the heap's top goes back to the OS, so the next such tensor faults again:
element-wise ops and linear layers of that size then cost much more than with the memory
kept (docs/performance.md has the figures).

:func:`keep_freed_memory` raises glibc's mmap threshold to its maximum (32 MiB) and its trim
threshold to 512 MiB with ``mallopt``; the entry points call it through
:func:`~ernie_vilg2.utils.cpu_tuning.tune_cpu_process`. Nothing changes outside glibc, where the
user set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``GLIBC_TUNABLES``, or with
``ERNIE_VILG2_MALLOC_TUNING=0``. The cost: up to 512 MiB of freed memory stays with the process
(reused by the next allocations), and the holes freed tensors leave in the heap count in the
peak. For the least memory, start the process with ``MALLOC_MMAP_THRESHOLD_=131072`` instead:
every tensor is then mapped and handed back, and every new one page-faults (slower).
"""
from __future__ import annotations

import ctypes
import os

OPT_OUT = "ERNIE_VILG2_MALLOC_TUNING"
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit
TRIM_THRESHOLD = 512 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def keep_freed_memory(environ=os.environ, libc_name: str = "libc.so.6") -> bool:
    """Set the thresholds where they apply; return whether they were set here."""
    if environ.get(OPT_OUT, "1") == "0" or any(name in environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(libc_name)
        libc.gnu_get_libc_version  # glibc only: mallopt's parameters differ elsewhere
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
