"""The process-wide CPU settings of the project's entry points, in one call.

Importing ``ernie_vilg2`` changes nothing in the process; a program that owns its process
(the tools, the deployment runner, the benchmarks of our speed, the test suite) calls
:func:`tune_cpu_process` first, before Paddle's first MKL call (MKL reads its dispatch
variable then) and before the large allocations the malloc thresholds are for. Each setting
keeps its opt-out and never overrides the user's own: see :mod:`.mkl_dispatch`
(``ERNIE_VILG2_MKL_AVX2=0``), :mod:`.malloc_tuning` (``ERNIE_VILG2_MALLOC_TUNING=0``),
:mod:`.paddlenlp_import` (PaddleNLP without the unused part of its ``__init__``;
``ERNIE_VILG2_LEAN_IMPORT=0``) and :mod:`.executor_gc` (``FLAGS_eager_delete_tensor_gb=0``);
:mod:`.isa_caps` applies only where ``ERNIE_VILG2_CPU_ISA`` forces a code path.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from .executor_gc import batch_freed_tensors
from .isa_caps import cap_libraries
from .malloc_tuning import keep_freed_memory
from .mkl_dispatch import prefer_avx2
from .paddlenlp_import import defer_paddlenlp_init


class CpuTuning(NamedTuple):
    """What :func:`tune_cpu_process` set in this process."""

    mkl_avx2: bool
    malloc_thresholds: bool
    library_isa_caps: bool
    paddlenlp_deferred: bool
    executor_gc_batched: bool


def tune_cpu_process(environ=os.environ) -> CpuTuning:
    """MKL's AVX2 path on AMD CPUs, glibc keeping freed memory, the libraries' caps of a
    forced code path, PaddleNLP's lean import and the executor's batched frees, where they apply."""
    return CpuTuning(mkl_avx2=prefer_avx2(environ), malloc_thresholds=keep_freed_memory(environ),
                     library_isa_caps=cap_libraries(environ), paddlenlp_deferred=defer_paddlenlp_init(environ),
                     executor_gc_batched=batch_freed_tensors(environ))
