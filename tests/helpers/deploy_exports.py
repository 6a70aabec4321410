"""Exports shared by the deploy tests (tests/deploy/test_deploy_*.py).

Exporting a tiny pipeline takes seconds (the U-Net trace), so each export is made once per
test session and cached here; the test modules wrap these in fixtures. Treat the folders
and pipelines as read-only: copy an export before damaging it.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import weakref

from helpers.paths import REPO_ROOT


_CACHE: dict = {}


def load_tool(path: str):
    """A CLI script (tools/*.py, deploy/python/*.py) as a module, to call its main() in-process."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"_deploy_test_{name}", os.path.join(REPO_ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def n1_export(tiny_pipeline_dir: str, tmp_path_factory) -> str:
    """The single-expert ``tiny_pipeline`` exported by ``tools/export_model.py --overwrite``
    (in-process) over a stale folder; ``_CACHE["n1_stdout"]`` holds what the tool printed."""
    if "n1" not in _CACHE:
        out = tmp_path_factory.mktemp("deploy_n1") / "export"
        out.mkdir()
        (out / "stale.txt").write_text("from an older export")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = load_tool("tools/export_model.py").main(["--model", tiny_pipeline_dir, "--out", str(out),
                                                            "--overwrite"])
        assert code == 0
        _CACHE["n1"], _CACHE["n1_stdout"] = str(out), printed.getvalue()
    return _CACHE["n1"]


def n10(make_tiny_pipeline, tmp_path_factory):
    """``(pipeline, saved folder, export folder, expert reads)`` for a tiny bank of 10
    independently initialised experts. ``expert reads`` records, for each expert the exporter
    read, whether the previous expert's weights were still alive at that moment."""
    if "n10" not in _CACHE:
        from ernie_vilg2.deploy import export as export_module

        root = tmp_path_factory.mktemp("deploy_n10")
        pipe = make_tiny_pipeline(num_experts=10, seed=1)
        pipe.save_pretrained(str(root / "pipeline"))
        reads, alive = [], []
        original = export_module._read_expert

        def spy(owner, index):
            reads.append((index, sum(ref() is not None for ref in alive)))
            state = original(owner, index)
            alive[:] = [weakref.ref(array) for array in state.values()]
            return state

        export_module._read_expert = spy
        try:
            export_module.export_pipeline(str(root / "pipeline"), str(root / "export"), log=lambda message: None)
        finally:
            export_module._read_expert = original
        _CACHE["n10"] = (pipe, str(root / "pipeline"), str(root / "export"), reads)
    return _CACHE["n10"]


def copy_export(src: str, dst) -> str:
    import shutil

    shutil.copytree(src, dst)
    return os.fspath(dst)


def edited_copy(src: str, dst, edit) -> str:
    """A copy of the export ``src`` at ``dst`` whose manifest.json ``edit(manifest)`` changed in
    place (manifest.json is not in its own ``files`` record)."""
    import json

    folder = copy_export(src, dst)
    path = os.path.join(folder, "manifest.json")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    edit(manifest)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    return folder
