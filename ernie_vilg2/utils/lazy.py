"""A package's names that import their module on first access (PEP 562 ``__getattr__``).

Packages export names this way so that importing one part (the deployment runner, the data
tools) does not load the heavy libraries (paddle, PPDiffusers) of another.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict


def lazy_getattr(package: str, exports: Dict[str, str]) -> Callable[[str], object]:
    """The module ``__getattr__`` of ``package``: ``exports`` maps each name to the module that
    defines it (relative to ``package`` when it starts with a dot)."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
