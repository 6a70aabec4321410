"""The project's C++ CPU operators in exported programs: what the exporter writes, what a runner loads.

The exporter saves, beside each expert's and the VAE decoder's program, a second program of
the same layer traced with the operators (``inference.cpu_ops.json``; the same parameters
file), and copies the operator library into the folder (``cpu_ops/``), recording in the
manifest's ``cpu_ops`` entry the Paddle it was built for. A runner on the CPU (engines
``paddle`` and ``onednn``) registers that library before it creates its predictors (Paddle
Inference runs custom operators registered before) and runs those programs. It runs the plain
programs instead where the export has none, ``ERNIE_VILG2_CPU_OPS=0`` is set (as in the dynamic
graph), or, with a warning that says why, where the library is missing or was built for
another Paddle. The C++ runner follows the same rules (deploy/cpp/src/cpu_ops.cc).
"""
from __future__ import annotations

import filecmp
import os
import shutil
import warnings
from typing import Callable, Optional

from ..utils.integrity import verify_files

FOLDER = "cpu_ops"
PROGRAM_SUFFIX = ".cpu_ops"  # inference.cpu_ops.json beside inference.json
ENGINES = ("paddle", "onednn")  # OpenVINO and TensorRT convert the programs: plain ops only
DISABLE_VARIABLE = "ERNIE_VILG2_CPU_OPS"
# manifest field of the cpu_ops entry -> key of ernie_vilg2.ops.build_stamp()
STAMP_FIELDS = {"paddle_version": "paddle", "paddle_commit": "paddle_commit", "source_sha256": "source_sha256"}


def export_library(out_dir: str) -> dict:
    """Copy the built operator library into ``out_dir/cpu_ops``; return the manifest's entry."""
    from .. import ops  # imports Paddle: the runner's import stays light

    stamp = ops.build_stamp()
    name = os.path.basename(ops.library_path())
    os.makedirs(os.path.join(out_dir, FOLDER), exist_ok=True)
    shutil.copyfile(ops.library_path(), os.path.join(out_dir, FOLDER, name))
    return {"library": f"{FOLDER}/{name}", **{field: stamp[key] for field, key in STAMP_FIELDS.items()},
            "operators": list(ops.PROGRAM_OPERATORS)}


def save_with_operators(static_layer, root: str, folder: str, program: str, save: Callable) -> dict:
    """Trace ``static_layer`` with the operators and save it as ``root/folder/<program>.cpu_ops``
    with ``save(layer, path prefix)``; return the manifest fields to add to the plain program's
    entry ({} when the program calls none of them). The parameters file is the plain program's
    when the two are byte for byte the same (they are the same layer's)."""
    from .. import ops

    prefix = os.path.join(root, folder, program + PROGRAM_SUFFIX)
    with ops.into_programs():
        save(static_layer, prefix)
    with open(prefix + ".json", encoding="utf-8") as f:
        text = f.read()
    if not any(name in text for name in ops.PROGRAM_OPERATORS):
        for ext in (".json", ".pdiparams"):
            os.remove(prefix + ext)
        return {}
    entry = {"model_with_cpu_ops": f"{folder}/{program}{PROGRAM_SUFFIX}.json"}
    if filecmp.cmp(prefix + ".pdiparams", os.path.join(root, folder, program + ".pdiparams"), shallow=False):
        os.remove(prefix + ".pdiparams")
    else:
        entry["params_with_cpu_ops"] = f"{folder}/{program}{PROGRAM_SUFFIX}.pdiparams"
    return entry


def program_files(entry: dict, with_operators: bool):
    """(model, params) of a manifest program entry, the operators' program where asked and present."""
    if with_operators and "model_with_cpu_ops" in entry:
        return entry["model_with_cpu_ops"], entry.get("params_with_cpu_ops", entry["params"])
    return entry["model"], entry["params"]


def _mismatch(entry: dict) -> Optional[str]:
    import paddle

    built = (entry["paddle_version"], entry["paddle_commit"])
    if built != (paddle.__version__, paddle.version.commit):
        return f"built for Paddle {built[0]} ({built[1][:10]}), this is {paddle.__version__} ({paddle.version.commit[:10]})"
    return None


def use_operators(folder: str, manifest: dict, device: str, engine: str) -> bool:
    """Whether a runner with this device and engine runs the export's programs with the
    operators; registers their library when it does (warns when it cannot)."""
    entry = manifest.get("cpu_ops")
    if entry is None or device != "cpu" or engine not in ENGINES or os.environ.get(DISABLE_VARIABLE, "1") == "0":
        return False
    from .. import ops

    path = os.path.join(folder, entry["library"])
    if os.path.isfile(path):  # a damaged library is an error, as any other file of the export
        verify_files(folder, {entry["library"]: manifest["files"][entry["library"]]})
        stamp = {key: entry[field] for field, key in STAMP_FIELDS.items()}
        reason = _mismatch(entry) or ops.register_copy(path, stamp)
    else:
        reason = f"{path} is missing"
    if reason:
        warnings.warn(f"{folder}: C++ CPU operators: {reason}; running the programs without them "
                      "(Paddle's own CPU kernels)", stacklevel=3)
        return False
    return True
