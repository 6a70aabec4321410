"""Export folders and runner flags as an attacker would write them: every manifest field
out of range, of the wrong type or non-finite, against both runners under a memory limit;
the sampler's step limit at its exact boundary; one summary line for truncated prompts;
stale outputs of an earlier run with the same --out removed.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers.paths import REPO_ROOT


PY_RUNNER = os.path.join(REPO_ROOT, "deploy", "python", "infer.py")
FUZZ_WORKER = os.path.join(REPO_ROOT, "tests", "helpers", "manifest_fuzz_worker.py")
MEMORY_LIMIT = 3 << 30  # address space per runner: a regression fails here, not the machine

NAN, INF = float("nan"), float("inf")
INTEGER = [10**9, -8, "x", NAN]
NUMBER = [NAN, INF, -1.0, "x"]
FIELDS = {
    "image.height": INTEGER,
    "image.width": INTEGER,
    "latent.channels": INTEGER,
    "latent.height": INTEGER,
    "latent.width": INTEGER,
    "latent.scaling_factor": NUMBER,
    "router.num_experts": INTEGER,
    "router.num_train_timesteps": INTEGER,
    "samplers.default": ["euler", 5],
    "samplers.ddim.max_steps": INTEGER,
    "samplers.dpm.max_steps": INTEGER,
    "samplers.ddim.class": ["DPMSolverMultistepScheduler", 5],
    "samplers.ddim.config.num_train_timesteps": INTEGER,
    "samplers.dpm.config.num_train_timesteps": INTEGER,
    "samplers.dpm.config.beta_start": NUMBER,
    "samplers.ddim.config.beta_end": NUMBER,
    "samplers.ddim.config.beta_schedule": ["cosine", 5],
    "samplers.dpm.config.steps_offset": INTEGER,
    "samplers.ddim.config.trained_betas": [[0.1] * 3, "x", [NAN] * 1000],
    "samplers.dpm.config.timestep_spacing": ["random", 5],
    "samplers.dpm.config.solver_order": [3, 2.0, True],
    "samplers.ddim.config.clip_sample_range": NUMBER,
    "samplers.dpm.config.use_karras_sigmas": [True],  # a setting no runner reads
    "samplers.dpm": ["x", {}],
    "tokenizer.max_length": INTEGER,
    "tokenizer.never_split": ["x", [5], [""]],
    "tokenizer.normalization": ["x", {"ab": "c"}],
    "tokenizer.unk_token": [5, "<not in the vocab>"],
    "programs.text_encoder.hidden_size": INTEGER,
    "programs.experts[0].timesteps": ["x", [0, 10**9]],
    "programs.experts": ["x", []],
}
CASES = [(field, value) for field, values in FIELDS.items() for value in values]


def _case_id(field, value):
    return f"{field}={value if isinstance(value, str) else json.dumps(value)[:20]}"


CASE_IDS = [_case_id(*case) for case in CASES]
# Probes that would take the machine down or draw black images: both runners must refuse them.
MUST_REFUSE = {"tokenizer.max_length=1000000000", "latent.height=1000000000", "latent.width=1000000000",
               "latent.height=-8", "router.num_train_timesteps=1000000000",
               "samplers.ddim.config.num_train_timesteps=1000000000",
               "samplers.dpm.config.num_train_timesteps=1000000000", "samplers.ddim.max_steps=1000000000",
               "samplers.dpm.max_steps=1000000000", "latent.scaling_factor=NaN", "programs.experts[0].timesteps=x"}


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run(args, timeout=120, **kwargs):
    env = {**os.environ, "GLOG_minloglevel": "2"}
    return subprocess.run(args, capture_output=True, env=env, timeout=timeout, **kwargs)


def _set(manifest, field, value):
    *parents, last = field.replace("[0]", ".0").split(".")
    node = manifest
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[last] = value


def _fuzzed_export(export, folder, field, value):
    """``export`` with one manifest field changed; the other files are symlinks."""
    os.makedirs(folder)
    for name in os.listdir(export):
        if name != "manifest.json":
            os.symlink(os.path.join(export, name), os.path.join(folder, name))
    with open(os.path.join(export, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    _set(manifest, field, value)
    with open(os.path.join(folder, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f)  # NaN and Infinity as Python writes them
    return str(folder)


@pytest.fixture(scope="module")
def fuzzed(export_n1, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzed")
    return [_fuzzed_export(export_n1, root / f"case{i:03d}", *case) for i, case in enumerate(CASES)]


def _judge(index: int, refused: bool, message: str, image_ok: bool):
    field, case = CASES[index][0], CASE_IDS[index]
    if refused:
        assert "\n" not in message.strip() and field.split("[")[0] in message, (case, message)
    else:
        assert case not in MUST_REFUSE and image_ok, (case, message)


@pytest.fixture(scope="module")
def python_outcomes(fuzzed):
    proc = _run([sys.executable, FUZZ_WORKER, str(MEMORY_LIMIT), *fuzzed], timeout=600)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    by_folder = {r["folder"]: r for r in map(json.loads, proc.stdout.decode().splitlines())}
    return [by_folder[folder] for folder in fuzzed]


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_python_runner_refuses_each_bad_manifest_field_by_name(python_outcomes, case):
    outcome = python_outcomes[case]
    assert outcome["outcome"] in ("ok", "error"), outcome
    if outcome["outcome"] == "error":
        assert outcome["type"] in ("ManifestError", "ValueError"), outcome
    _judge(case, outcome["outcome"] == "error", outcome.get("message", ""), outcome["outcome"] == "ok")


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_cpp_runner_refuses_each_bad_manifest_field_by_name(cpp_runner, fuzzed, case, tmp_path):
    out = tmp_path / "o.png"
    proc = _run([cpp_runner, "--model", fuzzed[case], "--prompt", "a red apple", "--steps", "2", "--out", str(out)],
                preexec_fn=_limited)
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode in (0, 2), (case, proc.returncode, stderr)
    if proc.returncode == 2:
        assert stderr.startswith("error: ") and not out.exists()
    image_ok = proc.returncode == 0 and out.exists()
    _judge(case, proc.returncode == 2, stderr, image_ok)


@pytest.mark.parametrize("make", ["big", "deep"])
def test_oversized_or_deeply_nested_manifest_is_refused(export_n1, tmp_path, cpp_runner, make):
    folder = _fuzzed_export(export_n1, tmp_path / "export", "image.height", 32)
    with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    if make == "big":
        manifest["padding"] = "x" * (5 << 20)
        expected = "more than a manifest can be"
    else:
        expected = "nested deeper than 64 levels"
    with open(os.path.join(folder, "manifest.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest) if make == "big" else "[" * 200_000 + "]" * 200_000)
    python = _run([sys.executable, FUZZ_WORKER, str(MEMORY_LIMIT), folder])
    outcome = json.loads(python.stdout.decode().splitlines()[0])
    assert outcome["type"] == "ManifestError" and expected in outcome["message"], outcome
    cpp = _run([cpp_runner, "--model", folder, "--prompt", "x", "--out", str(tmp_path / "o.png")],
               preexec_fn=_limited)
    lines = cpp.stderr.decode().strip().splitlines()
    assert cpp.returncode == 2 and len(lines) == 1 and expected in lines[0], lines


# -- the sampler's step limit, one rule in all three runners ----------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sampler,limit", [("ddim", 1000), ("dpm", 999)])
def test_step_limit_boundary_in_both_runners(export_n1, cpp_runner, tmp_path, sampler, limit):
    """One step more than the limit is refused before any work by both runners, with the limit
    in the message; at its limit the C++ runner's DPM-Solver++ (which wrote all-zero images
    there) draws a real image. (The Python pipelines' side of the boundary: tests/pipelines/test_generation_inputs.py.)"""
    common = ["--model", export_n1, "--prompt", "a red apple", "--guidance", "1", "--sampler", sampler]
    for name, command in (("python", [sys.executable, PY_RUNNER]), ("cpp", [cpp_runner])):
        over = _run([*command, *common, "--steps", str(limit + 1), "--out", str(tmp_path / name / "over.png")])
        lines = over.stderr.decode().strip().splitlines()
        assert over.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --steps"), (name, lines)
        assert f"must be <= {limit} " in lines[0], (name, lines)
        assert not (tmp_path / name).exists()
    if sampler != "dpm":
        return  # at the limit only DPM-Solver++'s last steps can draw zeros
    out = tmp_path / "at_limit.png"
    ok = _run([cpp_runner, *common, "--steps", str(limit), "--out", str(out)], timeout=300)
    assert ok.returncode == 0, ok.stderr.decode(errors="replace")
    assert np.asarray(Image.open(out)).std() > 1, f"a flat image at {limit} steps"


@pytest.mark.parametrize("edit,steps,message", [
    (lambda samplers: samplers["dpm"].update(max_steps=7), 8, "must be <= 7 "),
    (lambda samplers: samplers.pop("dpm"), 2, "not offered by this export (manifest field 'samplers' offers: ddim"),
])
def test_both_runners_take_the_samplers_and_limits_the_manifest_offers(export_n1, cpp_runner, tmp_path, edit, steps,
                                                                       message):
    manifest = json.loads(open(os.path.join(export_n1, "manifest.json"), encoding="utf-8").read())
    edit(manifest["samplers"])
    folder = _fuzzed_export(export_n1, tmp_path / "export", "samplers", manifest["samplers"])
    common = ["--model", folder, "--prompt", "a red apple", "--sampler", "dpm", "--steps", str(steps)]
    for name, command in (("python", [sys.executable, PY_RUNNER]), ("cpp", [cpp_runner])):
        proc = _run([*command, *common, "--out", str(tmp_path / name / "o.png")])
        lines = proc.stderr.decode().strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (name, lines)
        assert not (tmp_path / name).exists()


@pytest.mark.slow
def test_overflowing_latents_stop_both_runners_before_a_black_image(export_n1, cpp_runner, tmp_path):
    """A finite but huge guidance scale overflows float32 in the first step: both runners stop
    there with one line instead of writing a black image."""
    common = ["--model", export_n1, "--prompt", "a red apple", "--steps", "3", "--guidance", "3e38"]
    for name, command in (("python", [sys.executable, PY_RUNNER]), ("cpp", [cpp_runner])):
        proc = _run([*command, *common, "--out", str(tmp_path / name / "o.png")])
        lines = proc.stderr.decode().strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (name, lines)
        assert "non-finite latents (NaN/inf) at step 1 of 3" in lines[0], (name, lines)
        assert not (tmp_path / name).exists()


# -- truncation: one summary line in every runner ---------------------------------------------------
@pytest.mark.slow
def test_truncated_prompts_get_one_summary_line_in_both_runners(export_n1, cpp_runner, tmp_path):
    prompts = ["红" * 30, "a cat", "绿" * 40, "蓝" * 20, "a big " * 20 + "dog"]
    args = ["--model", export_n1, "--steps", "1", "--guidance", "1"]
    for p in prompts:
        args += ["--prompt", p]
    for name, command in (("python", [sys.executable, PY_RUNNER]), ("cpp", [cpp_runner])):
        proc = _run([*command, *args, "--out", str(tmp_path / name / "g.png")])
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        lines = [line for line in proc.stderr.decode().splitlines() if "truncated" in line]
        assert len(lines) == 1 and "4 of 5 prompts were truncated to 16 tokens" in lines[0], (name, lines)
        assert "longest: 43 tokens" in lines[0]  # [CLS] (a big) * 20 dog [SEP]


# -- stale outputs of an earlier run ---------------------------------------------------------------
@pytest.mark.slow
def test_fewer_prompts_into_the_same_out_leave_no_stale_images(export_n1, cpp_runner, tmp_path):
    for name, command in (("python", [sys.executable, PY_RUNNER]), ("cpp", [cpp_runner])):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "grid_keep.png").write_bytes(b"not ours")
        (folder / "other_001.png").write_bytes(b"not ours")
        for prompts in (["a", "b", "c"], ["d"]):
            argv = [a for p in prompts for a in ("--prompt", p)]
            proc = _run([*command, "--model", export_n1, "--steps", "1", *argv, "--out", str(folder / "grid.png")])
            assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        listed = json.loads((folder / "grid.json").read_text(encoding="utf-8"))["images"]
        assert list(listed) == ["grid_000.png"]
        assert sorted(p.name for p in folder.iterdir()) == ["grid.json", "grid.png", "grid_000.png", "grid_keep.png",
                                                            "other_001.png"], name


# -- C++ flags ------------------------------------------------------------------------------------
def test_cpp_seed_range_and_tokenize_only_errors(export_n1, cpp_runner):
    common = [cpp_runner, "--model", export_n1]
    biggest = _run([*common, "--tokenize-only", "--prompt", "x", "--seed", str(2**63 - 1)])
    assert biggest.returncode == 0, biggest.stderr.decode()
    over = _run([*common, "--prompt", "x", "--seed", str(2**63)])
    assert over.returncode == 2 and "--seed: must be between 0 and 9223372036854775807" in over.stderr.decode()
    surrogate = _run([*common, "--tokenize-only"], input=b'"\\ud800"\n')
    assert surrogate.returncode == 2 and "stdin line 1: a lone UTF-16 surrogate" in surrogate.stderr.decode()
    long = _run([*common, "--tokenize-only", "--max-length", "40", "--prompt", "红" * 30])
    assert long.returncode == 0 and len(json.loads(long.stdout)) == 40
    assert len(json.loads(_run([*common, "--tokenize-only", "--prompt", "x"]).stdout)) == 16
