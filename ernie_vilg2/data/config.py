"""Data section of the config (placeholder: the data helper extends it)."""
from dataclasses import dataclass
from typing import Optional


@dataclass
class DataConfig:
    root: Optional[str] = None  # folder holding train.jsonl (+ images), or a .jsonl path
    resolution: int = 32
