"""This process's own peak resident memory.

Linux's ``getrusage(RUSAGE_SELF).ru_maxrss`` keeps the peak of the image before ``exec``: a
process started by a large one (a pytest worker, a benchmark holding a model bank, a
launcher) reports at least its parent's peak. ``VmHWM`` in ``/proc/self/status`` is the
high-water mark of this process's own address space.
"""
from __future__ import annotations


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB (VmHWM; ``ru_maxrss`` where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
