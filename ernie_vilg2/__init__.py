"""ERNIE-ViLG 2.0 in PaddlePaddle: knowledge-enhanced text-to-image diffusion with a
mixture of denoising experts.

Heavy submodules (paddle, ppdiffusers) load lazily so that data and knowledge tools
start fast; ``ernie_vilg2.MixtureOfDenoisingExperts`` etc. still resolve on access.
"""
import importlib

from ernie_vilg2.utils.malloc_tuning import keep_freed_memory
from ernie_vilg2.utils.mkl_dispatch import prefer_avx2

# Before any MKL call (Paddle's matmul): MKL's AVX2 path on AMD CPUs (see the module).
prefer_avx2()
# glibc keeps freed memory for Paddle's next tensors instead of page-faulting anew (see the module).
keep_freed_memory()

__version__ = "0.1.0"

_LAZY = {
    "MixtureOfDenoisingExperts": "ernie_vilg2.models.expert_bank",
    "TimestepRouter": "ernie_vilg2.models.expert_bank",
    "ErnieViLG2Pipeline": "ernie_vilg2.pipelines.pipeline_ernie_vilg2",
    "ConfigError": "ernie_vilg2.config",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ernie_vilg2' has no attribute {name!r}")
