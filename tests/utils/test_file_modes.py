"""Written files and folders get the modes of the umask (as open/mkdir and the C++ runner
give them), not the owner-only modes of temporary files: pipeline folders, checkpoints,
manifests, generated images and captions, the comparison sheet, FID statistics, detector
weights."""
import os
import stat

import numpy as np
import pytest
from PIL import Image

from ernie_vilg2.utils.io import apply_umask, atomic_directory, current_umask


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def assert_modes(path, mask):
    """``path`` (a file, or a folder and everything in it) has the modes of ``mask``."""
    path = str(path)
    found = {}
    if os.path.isdir(path):
        found[path] = stat.S_IMODE(os.stat(path).st_mode)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                found[os.path.join(root, name)] = stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
    else:
        found[path] = stat.S_IMODE(os.stat(path).st_mode)
    expected = {p: (0o777 if os.path.isdir(p) else 0o666) & ~mask for p in found}
    wrong = {os.path.relpath(p, os.path.dirname(path)): oct(m) for p, m in found.items() if m != expected[p]}
    assert not wrong, f"expected {oct(0o777 & ~mask)} folders, {oct(0o666 & ~mask)} files; got {wrong}"
    return found


def test_current_umask_reads_without_changing_it(umask):
    assert current_umask() == umask
    assert os.umask(umask) == umask  # unchanged


def test_saved_pipeline_folder(tiny_pipeline, tmp_path, umask):
    from ernie_vilg2.training.run_folder import save_atomically

    save_atomically(tiny_pipeline.save_pretrained, str(tmp_path / "pipeline"))
    found = assert_modes(tmp_path / "pipeline", umask)
    assert any(p.endswith(".safetensors") for p in found)  # the safetensors writer's files too


def test_checkpoint_and_its_pointer(tmp_path, umask):
    import paddle

    from ernie_vilg2.training.checkpoint import save_checkpoint

    save_checkpoint(str(tmp_path / "ckpt"), 1, {"w": paddle.ones([2, 2])}, {"m": paddle.zeros([2, 2])},
                    config={"a": 1})
    assert_modes(tmp_path / "ckpt", umask)


def test_generated_images_and_captions(tmp_path, umask):
    from ernie_vilg2.pipelines import save_generation

    written = save_generation([Image.new("RGB", (4, 4))] * 2, ["a", "b"], str(tmp_path / "out" / "g.png"))
    assert len(written["images"]) == 2
    assert_modes(tmp_path / "out", umask)


def test_manifest_sheet_statistics_and_detector_weights(tmp_path, umask):
    from ernie_vilg2.deploy.manifest import write_manifest
    from ernie_vilg2.evaluation.fid import save_statistics
    from ernie_vilg2.evaluation.sheet import SheetItem, write_sheet
    from ernie_vilg2.knowledge.visual.detector import _atomic_save_safetensors

    with atomic_directory(tmp_path / "export") as tmp:
        (tmp / "program").mkdir()
        (tmp / "program" / "inference.json").write_text("{}")
        write_manifest(str(tmp), {"router": {}})
    assert_modes(tmp_path / "export", umask)
    write_sheet([SheetItem("p", [np.zeros((4, 4, 3), np.uint8)], [np.ones((4, 4, 3), np.uint8)])],
                str(tmp_path / "sheet"))
    assert_modes(tmp_path / "sheet", umask)
    save_statistics(str(tmp_path / "stats" / "ref.npz"), np.zeros(3), np.eye(3))
    _atomic_save_safetensors({"w": np.ones(3, np.float32)}, str(tmp_path / "stats" / "det.safetensors"), {})
    assert_modes(tmp_path / "stats", umask)


def test_apply_umask_keeps_executables_executable(tmp_path, umask):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o700)
    apply_umask(script)
    assert stat.S_IMODE(script.stat().st_mode) == 0o777 & ~umask
