"""Pipelines: text-to-image sampling, loading, stage-2 branching and batch generation.

Names load lazily: ``generation`` (batches, grids and single PNGs) needs neither paddle
nor ppdiffusers, so the deployment runner (``ernie_vilg2.deploy``) reuses it without
importing the training stack.
"""
import importlib

_LAZY = {
    "ErnieViLG2Pipeline": "pipeline_ernie_vilg2",
    "branch_pipeline": "branching",
    "branch_pipeline_folder": "branching",
    "generate_images": "generation",
    "iter_images": "generation",
    "load_pipeline": "loading",
    "save_generation": "generation",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
