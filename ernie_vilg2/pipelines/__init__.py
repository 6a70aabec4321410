"""Pipelines: text-to-image sampling, loading, stage-2 branching and batch generation."""
from .branching import branch_pipeline, branch_pipeline_folder
from .generation import generate_images, save_generation
from .loading import load_pipeline
from .pipeline_ernie_vilg2 import ErnieViLG2Pipeline

__all__ = [
    "ErnieViLG2Pipeline",
    "branch_pipeline",
    "branch_pipeline_folder",
    "generate_images",
    "load_pipeline",
    "save_generation",
]
