"""Small helpers shared by tools and training: image grids, prompt files, atomic writes.

Nothing here imports paddle, so data and knowledge tools can use it cheaply.
"""
from .images import make_grid, to_pil
from .io import atomic_directory, atomic_save_image, atomic_write_text
from .prompts import PromptColumnError, read_prompts

__all__ = [
    "atomic_directory",
    "atomic_save_image",
    "atomic_write_text",
    "make_grid",
    "PromptColumnError",
    "read_prompts",
    "to_pil",
]
