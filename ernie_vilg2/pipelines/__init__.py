"""Pipelines: text-to-image sampling, building, loading, stage-2 branching (and merging LoRA experts) and batch
generation.

Names load lazily: ``generation`` (batches, grids and single PNGs) needs neither paddle
nor ppdiffusers, so the deployment runner (``ernie_vilg2.deploy``) reuses it without
importing the training stack.
"""
from ..utils.lazy import lazy_getattr

_LAZY = {
    "ErnieViLG2Pipeline": ".pipeline_ernie_vilg2",
    "branch_pipeline": ".branching",
    "branch_pipeline_folder": ".branching",
    "build_pipeline": ".building",
    "generate_images": ".generation",
    "iter_images": ".generation",
    "load_pipeline": ".loading",
    "merge_lora_folder": ".branching",
    "merge_lora_pipeline": ".branching",
    "save_generation": ".generation",
}

__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
