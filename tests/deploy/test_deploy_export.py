"""tools/export_model.py / ernie_vilg2.deploy.export: the export folder, its manifest, the
programs against the dynamic graph, atomic writes and clear errors on bad input."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest

import ernie_vilg2.models.attention_processor as attention_processor
import ernie_vilg2.models.fast_layers as fast_layers
from ernie_vilg2.deploy import ExportError, export_pipeline, read_manifest
from ernie_vilg2.deploy.predictor import PredictorSettings, Program, program_inputs
from ernie_vilg2.deploy.sampler_export import resolve_samplers
from ernie_vilg2.deploy.tokenizer import WordPieceTokenizer
from ernie_vilg2.utils.integrity import DamagedFileError

from helpers import deploy_exports
from helpers.paths import REPO_ROOT

EXPORT_TOOL = os.path.join(REPO_ROOT, "tools", "export_model.py")
PROMPTS = ["红苹果在猫脸的左边", "a blue heart", ""]


def _program(folder, manifest, entry, kind, engine="paddle"):
    return Program(f"{folder}/{entry['model']}", f"{folder}/{entry['params']}", program_inputs(manifest)[kind],
                   PredictorSettings(engine=engine), kind)


def test_export_folder_follows_the_contract(bank):
    _, saved, folder, _ = bank
    manifest = read_manifest(folder)  # every file's size and SHA-256 checked
    names = set(manifest["files"])
    assert {"text_encoder/inference.json", "text_encoder/inference.pdiparams", "vae_decoder/inference.json",
            "vae_decoder/inference.pdiparams", "tokenizer/vocab.txt"} <= names
    assert all(f"unet/expert_{i:02d}/inference.{ext}" in names for i in range(10) for ext in ("json", "pdiparams"))
    assert manifest["format"] == "ernie-vilg2-inference" and manifest["format_version"] == 2
    assert manifest["image"] == {"height": 32, "width": 32}
    assert manifest["latent"]["channels"] == 4 and (manifest["latent"]["height"], manifest["latent"]["width"]) == (8, 8)
    assert manifest["latent"]["scaling_factor"] > 0
    assert manifest["router"] == {"num_experts": 10, "num_train_timesteps": 1000,
                                  "boundaries": [100 * i for i in range(1, 10)]}
    assert [e["timesteps"] for e in manifest["programs"]["experts"]] == [[100 * i, 100 * i + 100] for i in range(10)]
    # each sampler as build_sampler builds it from the saved scheduler config; the saved one's the default
    with open(os.path.join(saved, "scheduler", "scheduler_config.json"), encoding="utf-8") as f:
        assert manifest["samplers"] == resolve_samplers(json.load(f), log=print)
    assert manifest["samplers"]["default"] == "ddim" and "scheduler" not in manifest
    assert manifest["tokenizer"]["max_length"] == 16 and "[n]" in manifest["tokenizer"]["never_split"]
    assert manifest["tokenizer"]["normalization"]["\u2019"] == "'"
    assert not [p for p in os.listdir(os.path.dirname(folder)) if p.startswith(".")]  # no temp folder left


@pytest.mark.slow
def test_export_tool_replaces_an_old_folder_only_with_overwrite(export_n1, tiny_pipeline_dir):
    # the fixture ran tools/export_model.py --overwrite over a stale folder
    assert not os.path.exists(os.path.join(export_n1, "stale.txt"))
    printed = deploy_exports._CACHE["n1_stdout"].splitlines()
    assert [line.split(" (")[0] for line in printed[:3]] == ["text encoder exported", "VAE decoder exported",
                                                             "expert 1/1 exported"]
    assert printed[-1].startswith(f"wrote {export_n1}: text encoder, 1 expert, VAE decoder (32x32 px")
    assert read_manifest(export_n1)["router"]["num_experts"] == 1
    before = json.load(open(os.path.join(export_n1, "manifest.json")))
    with pytest.raises(FileExistsError, match="overwrite"):
        export_pipeline(tiny_pipeline_dir, export_n1)
    assert json.load(open(os.path.join(export_n1, "manifest.json"))) == before


@pytest.mark.slow
@pytest.mark.parametrize("engine,tolerance", [("paddle", 0.0), ("onednn", 1e-5)])
def test_exported_programs_match_the_dynamic_graph(bank, record_property, monkeypatch, engine, tolerance):
    """Text encoder, each expert and the VAE decoder on the same inputs: bit-identical with
    the native kernels, within 1e-5 of the output's magnitude with oneDNN (measured ~1e-6).

    The dynamic graph computes attention and the layers with Paddle's ops here, as the exported
    programs do; the C++ CPU operators and the faster layers it uses otherwise agree to float
    rounding (tests/ops/test_cpu_ops.py, tests/models/test_fast_layers.py)."""
    monkeypatch.setattr(attention_processor, "CPU_OP_MIN_SCORES", 2**62)
    monkeypatch.setattr(fast_layers, "_on_cpu", lambda layer, x: False)
    monkeypatch.setattr(fast_layers, "operators_apply", lambda x: False)
    monkeypatch.setattr(fast_layers, "_layer_norm_by_operator", lambda layer, x: False)  # (a gradient is on)
    pipe, _, folder, _ = bank
    manifest = read_manifest(folder, verify="size")
    programs = manifest["programs"]
    diffs, worst = {}, 0.0

    def compare(name, out, ref):
        nonlocal worst
        diffs[name] = float(np.abs(out - ref).max())
        worst = max(worst, diffs[name] / float(np.abs(ref).max()))

    ids = WordPieceTokenizer.from_manifest(folder, manifest["tokenizer"])(PROMPTS)
    context = _program(folder, manifest, programs["text_encoder"], "text_encoder", engine)(ids)
    reference = pipe.text_encoder(paddle.to_tensor(ids))[0].numpy()
    compare("text_encoder", context, reference)

    rng = np.random.default_rng(0)
    sample = rng.standard_normal((3, 4, 8, 8)).astype("float32")
    for i, entry in enumerate(programs["experts"]):
        t = 100 * i + 37
        out = _program(folder, manifest, entry, "expert", engine)(sample, np.array([t], "float32"), reference)
        ref = pipe.unet.experts[i](paddle.to_tensor(sample), paddle.to_tensor(t), paddle.to_tensor(reference)).sample
        compare(f"expert_{i:02d}", out, ref.numpy())
        if i:  # the experts really are different networks
            assert np.abs(out - previous).max() > 1e-3
        previous = out

    latents = rng.standard_normal((2, 4, 8, 8)).astype("float32")
    decoded = _program(folder, manifest, programs["vae_decoder"], "vae_decoder", engine)(latents)
    assert decoded.shape == (2, 3, 32, 32)
    reference = pipe.vae.decode(paddle.to_tensor(latents)).sample.numpy()
    compare("vae_decoder", decoded, reference)

    record_property("max_abs_diff", diffs)
    print(f"max abs diff, exported vs dynamic ({engine}):", {k: f"{v:.1e}" for k, v in diffs.items()})
    assert worst <= tolerance, diffs


def test_experts_are_exported_one_at_a_time(bank):
    *_, reads = bank
    assert [index for index, _ in reads] == list(range(10))
    # when expert i is read, none of expert i-1's weight arrays is alive any more
    assert [alive for _, alive in reads] == [0] * 10


def test_failed_export_leaves_no_folder_behind(tiny_pipeline_dir, tmp_path, monkeypatch):
    from ernie_vilg2.deploy import export as export_module

    original = export_module._component_class

    def broken(index, name, model_dir):
        if name == "vae":
            raise RuntimeError("disk full")
        return original(index, name, model_dir)

    monkeypatch.setattr(export_module, "_component_class", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_pipeline(tiny_pipeline_dir, str(tmp_path / "export"), log=lambda message: None)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(height=30), ExportError, "--height: must be a positive multiple of 4"),
    (dict(width=0), ExportError, "--width"),
])
def test_bad_sizes_are_refused_by_flag(tiny_pipeline_dir, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        export_pipeline(tiny_pipeline_dir, str(tmp_path / "export"), **kwargs)
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("setting,message", [
    (dict(beta_schedule="sigmoid"), "the deploy runners can run neither sampler"),
    (dict(num_train_timesteps=500), "num_train_timesteps 500 differs from the experts' (1000, unet/config.json)"),
])
def test_a_scheduler_the_runners_cannot_run_is_refused_before_the_export(tiny_pipeline_dir, tmp_path, setting,
                                                                         message):
    model = shutil.copytree(tiny_pipeline_dir, tmp_path / "model")
    config = model / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **setting}))
    with pytest.raises(ExportError, match=re.escape(f"{config}: {message}")):
        export_pipeline(str(model), str(tmp_path / "export"), log=lambda _: None)
    assert not (tmp_path / "export").exists()


def test_truncated_expert_weights_are_named(tiny_pipeline_dir, tmp_path):
    model = shutil.copytree(tiny_pipeline_dir, tmp_path / "model")
    weights = model / "unet" / "diffusion_paddle_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(DamagedFileError, match="diffusion_paddle_model.safetensors: truncated"):
        export_pipeline(str(model), str(tmp_path / "export"))


def _cli(*args):
    env = {**os.environ, "GLOG_minloglevel": "2"}
    return subprocess.run([sys.executable, EXPORT_TOOL, *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_errors_are_one_line_with_exit_2(tiny_pipeline_dir, export_n1, tmp_path, capsys):
    proc = _cli("--model", tmp_path / "missing", "--out", tmp_path / "x")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: --model: model folder not found: {tmp_path / 'missing'}"
    proc = _cli("--model", tiny_pipeline_dir, "--out", export_n1)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: --out: {export_n1} already exists (pass --overwrite to replace it)"]
    # errors found during the export go through the same path (in-process: the imports are slow)
    with pytest.raises(SystemExit) as info:
        deploy_exports.load_tool("tools/export_model.py").main(
            ["--model", tiny_pipeline_dir, "--out", str(tmp_path / "x"), "--height", "30"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "error: --height: must be a positive multiple of 4 (the VAE factor), got 30"
    assert not (tmp_path / "x").exists()
