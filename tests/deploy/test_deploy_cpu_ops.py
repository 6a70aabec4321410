"""Exported programs with the project's C++ CPU operators: what the exporter writes, that they
compute the dynamic graph's function, and when the Python runner uses or falls back from them."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import numpy as np
import paddle
import pytest

from ernie_vilg2 import ops
from ernie_vilg2.deploy import InferencePipeline, export_pipeline, read_manifest
from ernie_vilg2.deploy.manifest import ManifestError
from ernie_vilg2.deploy.predictor import PredictorSettings, Program, program_inputs
from ernie_vilg2.utils.integrity import DamagedFileError

from helpers import deploy_exports
from helpers.cpu_ops import require_cpu_ops
from helpers.paths import REPO_ROOT, TOOL_ENV

PROMPTS = ["红苹果在猫脸的左边", "a blue heart"]


@pytest.fixture(autouse=True)
def _operators_built():
    require_cpu_ops()


def _operator_calls(folder, name):
    with open(os.path.join(folder, name), encoding="utf-8") as f:
        return set(re.findall(r"ernie_vilg2_cpu_[a-z0-9_]+", f.read()))


def test_export_writes_programs_with_the_operators_and_their_library(bank):
    _, _, folder, _ = bank
    manifest = read_manifest(folder)  # the new files are recorded and checked as every other
    entry = manifest["cpu_ops"]
    assert entry["library"] == "cpu_ops/ernie_vilg2_cpu_ops.so" and entry["library"] in manifest["files"]
    with open(os.path.join(folder, entry["library"]), "rb") as copy, open(ops.library_path(), "rb") as built:
        assert copy.read() == built.read()
    stamp = ops.build_stamp()
    assert (entry["paddle_version"], entry["paddle_commit"], entry["source_sha256"]) == (
        stamp["paddle"], stamp["paddle_commit"], stamp["source_sha256"])
    for i, expert in enumerate(manifest["programs"]["experts"]):
        assert expert["model_with_cpu_ops"] == f"unet/expert_{i:02d}/inference.cpu_ops.json"
        assert "params_with_cpu_ops" not in expert  # the plain program's parameters file serves both
        assert _operator_calls(folder, expert["model_with_cpu_ops"]) == set(ops.PROGRAM_OPERATORS)
        assert not _operator_calls(folder, expert["model"])
    vae = manifest["programs"]["vae_decoder"]
    assert _operator_calls(folder, vae["model_with_cpu_ops"]) == {ops.CONV_OP, ops.GROUP_NORM_OP}
    assert "model_with_cpu_ops" not in manifest["programs"]["text_encoder"]


def _program(folder, manifest, entry, kind):
    return Program(f"{folder}/{entry['model_with_cpu_ops']}", f"{folder}/{entry['params']}",
                   program_inputs(manifest)[kind], PredictorSettings(), kind)


@pytest.mark.slow
def test_programs_with_the_operators_match_the_dynamic_graph(bank, record_property):
    """The dynamic graph runs the same operators here: within 1e-5 of the output's magnitude."""
    pipe, _, folder, _ = bank
    manifest = read_manifest(folder, verify="size")
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((3, 4, 8, 8)).astype("float32")
    context = rng.standard_normal((3, 16, pipe.text_encoder.config.hidden_size)).astype("float32")
    diffs = {}
    for i in (0, 9):
        entry = manifest["programs"]["experts"][i]
        out = _program(folder, manifest, entry, "expert")(sample, np.array([100 * i + 37], "float32"), context)
        ref = pipe.unet.experts[i](paddle.to_tensor(sample), paddle.to_tensor(100 * i + 37),
                                   paddle.to_tensor(context)).sample.numpy()
        diffs[f"expert_{i:02d}"] = float(np.abs(out - ref).max() / np.abs(ref).max())
    latents = rng.standard_normal((2, 4, 8, 8)).astype("float32")
    out = _program(folder, manifest, manifest["programs"]["vae_decoder"], "vae_decoder")(latents)
    ref = pipe.vae.decode(paddle.to_tensor(latents)).sample.numpy()
    diffs["vae_decoder"] = float(np.abs(out - ref).max() / np.abs(ref).max())
    record_property("relative_diff", diffs)
    print("relative difference, programs with the operators vs dynamic:", diffs)
    assert max(diffs.values()) <= 1e-5, diffs


def _images(folder, **kwargs):
    pipe = InferencePipeline.from_export(folder, verify="size", **kwargs)
    return pipe, pipe(PROMPTS, num_inference_steps=4, guidance_scale=3.0, seed=0, output_type="np").images


def test_runner_uses_the_operators_unless_switched_off(bank, monkeypatch):
    _, _, folder, _ = bank
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither run warns
        pipe, with_operators = _images(folder)
        assert pipe.cpu_ops
        monkeypatch.setenv("ERNIE_VILG2_CPU_OPS", "0")
        pipe, plain = _images(folder)
        assert not pipe.cpu_ops
    assert 0 < np.abs(with_operators - plain).max() < 1e-5  # other kernels, the same function


def test_runner_falls_back_with_a_warning_when_the_library_is_for_another_paddle(bank, tmp_path):
    _, _, folder, _ = bank
    copy = deploy_exports.edited_copy(folder, tmp_path / "export",
                                      lambda m: m["cpu_ops"].update(paddle_version="9.9.9", paddle_commit="f" * 40))
    with pytest.warns(UserWarning, match=r"C\+\+ CPU operators: built for Paddle 9\.9\.9 .*running the programs "
                                         r"without them"):
        pipe, images = _images(copy)
    assert not pipe.cpu_ops
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()


def test_runner_falls_back_with_a_warning_when_the_library_is_missing(bank, tmp_path):
    _, _, folder, _ = bank
    copy = deploy_exports.copy_export(folder, tmp_path / "export")
    os.remove(os.path.join(copy, "cpu_ops", "ernie_vilg2_cpu_ops.so"))
    with pytest.warns(UserWarning, match=r"C\+\+ CPU operators: .*ernie_vilg2_cpu_ops\.so is missing; running "):
        pipe, images = _images(copy)
    assert not pipe.cpu_ops and images.shape == (2, 32, 32, 3)


def test_a_damaged_library_is_an_error_as_any_file(bank, tmp_path):
    _, _, folder, _ = bank
    copy = deploy_exports.copy_export(folder, tmp_path / "export")
    with open(os.path.join(copy, "cpu_ops", "ernie_vilg2_cpu_ops.so"), "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DamagedFileError, match=r"ernie_vilg2_cpu_ops\.so: wrong size"):
        InferencePipeline.from_export(copy, verify="size")


def test_other_engines_run_the_plain_programs(bank):
    _, _, folder, _ = bank
    pipe = InferencePipeline.from_export(folder, verify="size", engine="openvino")
    assert not pipe.cpu_ops


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["cpu_ops"].update(library=3), r"field 'cpu_ops.library' is missing or not a string"),
    (lambda m: m["cpu_ops"].pop("paddle_commit"), r"field 'cpu_ops.paddle_commit' is missing"),
    (lambda m: m["programs"]["vae_decoder"].update(model_with_cpu_ops="vae_decoder/other.json"),
     r"field 'files' has no record of vae_decoder/other.json"),
])
def test_bad_cpu_ops_fields_are_named(bank, tmp_path, edit, match):
    _, _, folder, _ = bank
    copy = deploy_exports.edited_copy(folder, tmp_path / "export", edit)
    with pytest.raises(ManifestError, match=match):
        read_manifest(copy, verify="size")


def test_export_without_the_operators(tiny_pipeline_dir, tmp_path):
    manifest = export_pipeline(tiny_pipeline_dir, str(tmp_path / "export"), cpu_ops=False, log=lambda message: None)
    assert "cpu_ops" not in manifest and not any("cpu_ops" in name for name in manifest["files"])
    assert not InferencePipeline.from_export(str(tmp_path / "export"), verify="size").cpu_ops


# A fresh process where the runner registers the export's copy of the library (the package's
# build hidden, as on a machine without it), then the package's operators are called: they take
# the registered copy (loading a second copy of the same operators would abort the process).
_COPY_THEN_PACKAGE = """
import sys, numpy as np, paddle
from ernie_vilg2 import ops
from ernie_vilg2.deploy import InferencePipeline
built = ops.library_path
ops.library_path = lambda: "/nonexistent/ernie_vilg2_cpu_ops.so"
pipe = InferencePipeline.from_export(sys.argv[1], verify="size")
ops.library_path = built
q = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 64, 2, 8)).astype("float32"))
out = ops.cpu_attention(q, q, q, 0.5)
print(pipe.cpu_ops, ops.cpu_ops_config()["isa"] in ("avx512", "avx2", "generic"), tuple(out.shape))
"""


def test_the_package_takes_the_copy_a_runner_registered(bank, tmp_path):
    _, _, folder, _ = bank
    copy = deploy_exports.copy_export(folder, tmp_path / "export")
    done = subprocess.run([sys.executable, "-c", _COPY_THEN_PACKAGE, copy], capture_output=True, text=True,
                          timeout=300, env=TOOL_ENV, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "True True (1, 64, 2, 8)"
