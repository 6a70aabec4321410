"""PaddleNLP's package ``__init__`` in two parts: its header at import, the rest when first needed.

The project needs PaddleNLP for ERNIE (``paddlenlp.transformers``), and PPDiffusers imports it
too. Python runs a package's ``__init__`` before any of its modules, and PaddleNLP's imports
its taskflow, server and datasets modules and through them SciPy, pyarrow, pandas,
scikit-learn, Hugging Face ``datasets``, FastAPI and aiohttp: resident memory that training
and sampling never use (benchmarks/import_memory.py; the figures in docs/performance.md).

:func:`defer_paddlenlp_init` puts a finder first on ``sys.meta_path``; nothing is imported
until something imports ``paddlenlp``. Then the package module runs the statements of its
``__init__`` before the first relative import (version, checks, ``import paddle``), imports
``paddlenlp.data`` as the full ``__init__`` does first, and ends as it does
(``paddle.disable_signal_handler()``). Its modules import as usual. The first access to a
package attribute that is not there yet (``paddlenlp.Taskflow``, ``from paddlenlp import
SimpleServer``) runs the rest of the ``__init__`` in the same module, so every name of the
real package stays reachable. Nothing in PaddleNLP's files changes. Entry points opt in
through ``tune_cpu_process``; ``ERNIE_VILG2_LEAN_IMPORT=0`` keeps the full import.
"""
from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.util
import os
import sys
import threading
import warnings

ENV = "ERNIE_VILG2_LEAN_IMPORT"
PACKAGE = "paddlenlp"
# Imported right after the header, as the full __init__ does first: paddlenlp.data imports
# paddlenlp.transformers, whose modules import paddlenlp.data back (a cycle Python resolves
# only in this order).
FIRST_MODULE = "paddlenlp.data"


def defer_paddlenlp_init(environ=os.environ) -> bool:
    """Have the next ``import paddlenlp`` run only the header of its ``__init__``. False
    (nothing done) where PaddleNLP is imported already or ``ERNIE_VILG2_LEAN_IMPORT=0``."""
    if environ.get(ENV, "1") == "0" or PACKAGE in sys.modules:
        return False
    if not any(isinstance(finder, _DeferredInitFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DeferredInitFinder())
    return True


class _DeferredInitFinder(importlib.abc.MetaPathFinder):
    """Finds ``paddlenlp`` once (then leaves ``sys.meta_path``) with a deferring loader."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != PACKAGE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.origin or not spec.submodule_search_locations:
            return spec
        with open(spec.origin, encoding="utf-8") as f:
            body = ast.parse(f.read(), spec.origin).body
        split = next((i for i, node in enumerate(body) if isinstance(node, ast.ImportFrom) and node.level), None)
        if split is not None:  # else not the __init__ this was written for: import it whole
            spec.loader = _DeferredInitLoader(spec.loader, body[:split], body[split:])
        return spec


class _DeferredInitLoader(importlib.abc.Loader):
    def __init__(self, original, header, rest):
        self.original, self.header, self.rest = original, header, rest

    def __getattr__(self, name):  # resource readers and the like: the original loader's
        return getattr(self.original, name)

    def exec_module(self, module) -> None:
        try:
            _run(self.header, module)
            importlib.import_module(FIRST_MODULE)
            import paddle

            paddle.disable_signal_handler()  # what the full __init__ ends with
        except Exception as exc:  # another PaddleNLP than this was written for: the whole __init__
            for name in [n for n in sys.modules if n.startswith(PACKAGE + ".")]:
                del sys.modules[name]
            warnings.warn(f"{ENV}: PaddleNLP imported whole ({type(exc).__name__}: {exc})", stacklevel=2)
            _run(self.header + self.rest, module)
            return
        module.__getattr__ = _completion(self.rest, module)


def _run(statements, module) -> None:
    code = compile(ast.Module(body=list(statements), type_ignores=[]), module.__spec__.origin, "exec")
    exec(code, module.__dict__)  # noqa: S102 - the installed package's own __init__


def _completion(rest, module):
    """The package's ``__getattr__``: the first unknown name runs the rest of the ``__init__``."""
    lock = threading.Lock()

    def __getattr__(name: str):
        if name.startswith("__"):  # dunder probes (copy, pickle, inspect) must not import the rest
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")
        with lock:
            if module.__dict__.get("__getattr__") is __getattr__:
                del module.__dict__["__getattr__"]
                _run(rest, module)
        try:
            return module.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}") from None

    return __getattr__
