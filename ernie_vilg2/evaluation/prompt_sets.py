"""Evaluation prompt sets with their categories: ViLG-300-style tables (columns Prompt, 文本,
类别, 来源) in one or both languages, or any prompt file tools/generate.py reads."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import List, Optional

from ..utils.prompts import DELIMITERS, PromptColumnError, read_prompts

LANG_COLUMNS = {"zh": "文本", "en": "Prompt"}  # ViLG-300's columns; "both" takes zh then en per row
CATEGORY_COLUMN = "类别"
LANGS = ("zh", "en", "both")


@dataclass(frozen=True)
class EvalPrompt:
    text: str
    category: str = ""  # "" when the file has no category column
    lang: Optional[str] = None  # "zh"/"en" when read from a language column


def read_prompt_set(path: str, lang: Optional[str] = None, column: Optional[str] = None,
                    limit: Optional[int] = None) -> List[EvalPrompt]:
    """Prompts of ``path`` with their category.

    A ``.csv``/``.tsv``/``.tab`` table (UTF-8, a BOM is accepted) gives the ``lang`` column
    (``zh``: 文本, ``en``: Prompt, ``both``: 文本 then Prompt of each row), or ``column``; by
    default 文本 if present, else Prompt, as tools/generate.py reads it. The category is the
    类别 column when there is one. Any other file is one prompt per line, without category
    or language. Blank cells and lines are skipped; ``limit`` keeps the first N rows (with
    ``both``, N rows give up to 2N prompts). A missing column is a
    :class:`~ernie_vilg2.utils.prompts.PromptColumnError` naming the file and the columns it
    has; a file without prompts a ValueError.
    """
    if lang is not None and lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    if lang is not None and column is not None:
        raise ValueError("give a language or a column, not both")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompt file not found: {path}")
    delimiter = DELIMITERS.get(os.path.splitext(path)[1].lower())
    if delimiter is None:
        if lang is not None or column is not None:
            raise PromptColumnError(f"{path} is not a table ({', '.join(DELIMITERS)}): it has one prompt per "
                                    "line, without language or columns")
        return [EvalPrompt(text) for text in read_prompts(path, limit=limit)]

    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        fields = list(reader.fieldnames or [])
        if not fields:
            raise ValueError(f"{path}: empty table (no header row)")
        columns = _columns(path, fields, lang, column)
        prompts: List[EvalPrompt] = []
        rows = 0
        for row in reader:
            found = [EvalPrompt(text, (row.get(CATEGORY_COLUMN) or "").strip(), col_lang)
                     for col, col_lang in columns for text in [(row.get(col) or "").strip()] if text]
            if found:
                prompts += found
                rows += 1
                if rows == limit:
                    break
    if not prompts:
        raise ValueError(f"no prompts in {path} (column {', '.join(c for c, _ in columns)})")
    return prompts


def _columns(path: str, fields: List[str], lang: Optional[str], column: Optional[str]):
    """[(column, its language or None)] to read, or a PromptColumnError naming what is missing."""
    if column is not None:
        wanted = [(column, None)]
    elif lang is None:
        default = next((c for c in (LANG_COLUMNS["zh"], LANG_COLUMNS["en"]) if c in fields), None)
        if default is None:
            raise PromptColumnError(f"{path}: no prompt column ({LANG_COLUMNS['zh']} or {LANG_COLUMNS['en']}); "
                                    f"choose one, available: {', '.join(fields)}")
        wanted = [(default, "zh" if default == LANG_COLUMNS["zh"] else "en")]
    else:
        wanted = [(LANG_COLUMNS[l], l) for l in (("zh", "en") if lang == "both" else (lang,))]
    missing = [c for c, _ in wanted if c not in fields]
    if missing:
        raise PromptColumnError(f"{path}: no column {', '.join(map(repr, missing))}; "
                                f"available columns: {', '.join(fields)}")
    return wanted
