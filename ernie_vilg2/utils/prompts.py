"""Read prompts from a text file (one per line) or a column of a CSV/TSV file."""
from __future__ import annotations

import csv
import os
from typing import List, Optional

from ..errors import ErnieViLG2Error

# Column preference for tabular prompt sets such as ViLG-300 (Prompt, 文本, 类别, 来源):
# the model's tokenizer is Chinese-first, so the Chinese text wins when present.
DEFAULT_COLUMNS = ("文本", "Prompt")

# Tabular files by extension (and only by extension: a .txt file whose first line looks
# like a header is still one prompt per line).
DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


class PromptColumnError(ErnieViLG2Error, ValueError):
    """The requested column is missing (the message lists the available ones)."""


def read_prompts(path: str, column: Optional[str] = None, limit: Optional[int] = None) -> List[str]:
    """Prompts from ``path``: a ``.csv`` or ``.tsv``/``.tab`` file with a header row
    (``column``, default 文本 else Prompt), or any other file as text with one prompt
    per line. Blank lines/cells are skipped; a UTF-8 BOM is accepted; ``limit`` keeps
    the first N prompts.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompt file not found: {path}")
    delimiter = DELIMITERS.get(os.path.splitext(path)[1].lower())
    if delimiter is not None:
        prompts = _read_column(path, column, delimiter)
    else:
        if column is not None:
            raise PromptColumnError(
                f"column {column!r} given but {path} is not a table ({', '.join(DELIMITERS)}): "
                "it is read as one prompt per line"
            )
        with open(path, encoding="utf-8-sig") as f:
            prompts = [line.strip() for line in f]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts[:limit] if limit else prompts


def _read_column(path: str, column: Optional[str], delimiter: str) -> List[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        fields = list(reader.fieldnames or [])
        if not fields:
            raise ValueError(f"{path}: empty table (no header row)")
        if column is None:
            column = next((c for c in DEFAULT_COLUMNS if c in fields), None)
            if column is None:
                raise PromptColumnError(
                    f"{path}: no default prompt column ({', '.join(DEFAULT_COLUMNS)}); "
                    f"choose a column, available: {', '.join(fields)}"
                )
        elif column not in fields:
            raise PromptColumnError(f"{path}: unknown column {column!r}; available columns: {', '.join(fields)}")
        return [(row.get(column) or "").strip() for row in reader]
