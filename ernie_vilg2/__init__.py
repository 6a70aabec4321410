"""ERNIE-ViLG 2.0 in PaddlePaddle: knowledge-enhanced text-to-image diffusion with a
mixture of denoising experts.

Heavy submodules (paddle, ppdiffusers) load lazily so that data and knowledge tools
start fast; ``ernie_vilg2.MixtureOfDenoisingExperts`` etc. still resolve on access.
Importing the package changes nothing process-wide: the entry points that own the process
apply the CPU settings (:func:`ernie_vilg2.utils.cpu_tuning.tune_cpu_process`).
"""
from .utils.lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "MixtureOfDenoisingExperts": ".models.expert_bank",
    "TimestepRouter": ".models.routing",
    "ErnieViLG2Pipeline": ".pipelines.pipeline_ernie_vilg2",
    "ConfigError": ".config",
}

__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
