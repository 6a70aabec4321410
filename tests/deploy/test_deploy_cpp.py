"""The C++ runner (deploy/cpp): its tokenizer against the Python one, its images against the
Python runner's, and its errors.

The runner is built once per session into deploy/cpp/build (kept between runs, so later
sessions only re-link what changed) against the paddlepaddle wheel of this Python.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ernie_vilg2.utils import executor_gc, malloc_tuning
from ernie_vilg2.utils.mkl_dispatch import amd_with_avx2

from helpers import deploy_exports
from helpers.cpu_ops import require_cpu_ops
from helpers.paths import CPP_DIR, REPO_ROOT

PY_RUNNER = os.path.join(REPO_ROOT, "deploy", "python", "infer.py")
LONG_MAX_LENGTH = 512  # tokenizer comparisons: long enough that no prompt is cut

# Prompts where tokenizers go wrong: mixed scripts, emoji (and ZWJ sequences, flags,
# variation selectors), accents (precomposed and combining, in non-canonical order),
# full-width forms, curly quotes and dashes (normalised first), never-split and special
# tokens in any case, control and space characters, Hangul (NFD splits syllables), the
# final-sigma and dotted-I lower-casing cases, words longer than WordPiece's 100 chars.
HARD_PROMPTS = [
    "一只red apple在桌子上，[n]猫[a]红色的",
    "A Red Apple to the LEFT of a cat face!",
    "🍎🍏 red apple 🇨🇳 👨‍👩‍👧 ❤️ x² ½ ©™",
    "Café déjà vu — “quoted” corgi’s toy ‘single’ „low“ ‐‑‒–―−",
    "Ｆｕｌｌ　ｗｉｄｔｈ ＡＢＣ１２３，ｅｍｏｊｉ！",
    "naïve Ångström ﬁ ẞß ΐ Ǆǅǆ Ⅻ ⓐ 𝐀𝐁",
    "a\u0323\u0301b e\u0301\u0323 o\u0308\u0304",
    "ΣΑΣ ΟΔΟΣ İstanbul I\u0307",
    "[CLS]x [cls] [N] [UNK]y [MASK] [PAD][SEP] [n][n]x[q] [ n ]",
    "한국어 텍스트와 日本語のテキスト、カタカナ",
    "x\u2028y\u2029z\u00a0w\u3000v\tq\nr\rs\x00t\ufffdu\x1f\u200bz\u00adw\ufeff",
    "supercalifragilisticexpialidocious" * 3,
    "a" * 100,
    "b" * 101,
    "unaffable puppeteer's well-known e-mail: a.b@c.d (50%) #1 $3 ^_^ ~`|\\",
    "",
    "   ",
]


def _run(args, stdin=None, timeout=300, cwd=None):
    env = {**os.environ, "GLOG_minloglevel": "2"}
    return subprocess.run(args, input=stdin, capture_output=True, env=env, timeout=timeout, cwd=cwd)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


@pytest.fixture(scope="session")
def tiny_export(bank):
    """(saved folder, export folder) of the tiny 10-expert bank the deploy tests share."""
    _, saved, export, _ = bank
    return saved, export


@pytest.fixture(scope="session")
def python_tokenizer(tiny_export):
    """The exported pipeline's tokenizer as the Python pipeline loads it."""
    from paddlenlp.transformers import ErnieTokenizer

    return ErnieTokenizer.from_pretrained(os.path.join(tiny_export[0], "tokenizer"))


def _python_ids(tokenizer, prompts, max_length):
    from ernie_vilg2.text.tokenizer import tokenize

    return tokenize(tokenizer, prompts, max_length).tolist()


def _cpp_ids(binary, export, prompts, max_length=None):
    """Token ids from `--tokenize-only` (prompts on stdin, one JSON string a line), padded or
    cut to `max_length` (`--max-length`) instead of the model's length when given."""
    stdin = "".join(json.dumps(p) + "\n" for p in prompts).encode("utf-8")
    extra = ["--max-length", str(max_length)] if max_length is not None else []
    proc = _run([binary, "--model", export, "--tokenize-only", *extra], stdin=stdin)
    assert proc.returncode == 0, _text(proc.stderr)
    return [json.loads(line) for line in _text(proc.stdout).splitlines()]


def _assert_same_ids(prompts, got, want):
    assert len(got) == len(prompts)
    bad = [(p, g, w) for p, g, w in zip(prompts, got, want) if g != w]
    assert not bad, f"{len(bad)} of {len(prompts)} prompts differ, e.g. {bad[0][0]!r}:\nC++    {bad[0][1]}\nPython {bad[0][2]}"


@pytest.mark.slow
def test_cpp_tokenizer_matches_python_on_vilg300(cpp_runner, tiny_export, python_tokenizer, vilg300_csv, tmp_path):
    import csv

    with open(vilg300_csv, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    prompts = [row["Prompt"] for row in rows] + [row["文本"] for row in rows]
    assert len(rows) == 300 and all(prompts)  # ViLG-300: both columns filled
    got = _cpp_ids(cpp_runner, tiny_export[1], prompts, LONG_MAX_LENGTH)
    _assert_same_ids(prompts, got, _python_ids(python_tokenizer, prompts, LONG_MAX_LENGTH))


@pytest.mark.slow
def test_cpp_tokenizer_matches_python_on_hard_and_random_prompts(cpp_runner, tiny_export, python_tokenizer, tmp_path):
    rng = random.Random(0)
    # Random strings over Latin, Greek, Cyrillic, combining marks, CJK punctuation, kana,
    # ideographs and emoji, with spaces; plus every code point once, in runs of 64.
    pool = [chr(c) for c in range(0x20, 0x3100)] + [chr(c) for c in range(0x1F300, 0x1FAFF)] + ["红", "苹", " "] * 50
    randoms = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 60))) for _ in range(300)]
    code_points = [chr(c) for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    sweep = ["".join(code_points[i : i + 64]) for i in range(0, len(code_points), 64)]
    prompts = HARD_PROMPTS + randoms + sweep
    got = _cpp_ids(cpp_runner, tiny_export[1], prompts, LONG_MAX_LENGTH)
    _assert_same_ids(prompts, got, _python_ids(python_tokenizer, prompts, LONG_MAX_LENGTH))


def test_cpp_tokenizer_truncates_and_pads_like_python(cpp_runner, tiny_export, python_tokenizer, tmp_path):
    with open(os.path.join(tiny_export[1], "manifest.json"), encoding="utf-8") as f:
        max_length = json.load(f)["tokenizer"]["max_length"]
    prompts = ["红苹果", "a red apple to the left of a cat face on a wooden table in the morning sun",
               "一" * (max_length - 2), "一" * (max_length - 1), HARD_PROMPTS[0]]
    got = _cpp_ids(cpp_runner, tiny_export[1], prompts)
    assert all(len(ids) == max_length for ids in got)
    _assert_same_ids(prompts, got, _python_ids(python_tokenizer, prompts, max_length))


def _load(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_cpp_images_match_the_python_runner(cpp_runner, tiny_export, tmp_path, sampler):
    """Same export, same noise (the Python runner's --save-noise): the C++ PNGs equal the
    Python runner's within 1 level of 255 (measured: identical)."""
    export = tiny_export[1]
    prompts = ["红苹果", "a blue heart", "一只red apple在桌子上🍎"]
    common = ["--model", export, "--steps", "4", "--guidance", "3", "--seed", "7", "--batch-size", "2",
              "--sampler", sampler]
    for p in prompts:
        common += ["--prompt", p]
    noise = tmp_path / "noise.npy"
    py = _run([sys.executable, PY_RUNNER, *common, "--out", str(tmp_path / "py" / "grid.png"),
               "--save-noise", str(noise)])
    assert py.returncode == 0, _text(py.stderr)
    cpp = _run([cpp_runner, *common, "--noise", str(noise), "--out", str(tmp_path / "cpp.png"), "--timing",
                "--repeat", "2"])
    assert cpp.returncode == 0, _text(cpp.stderr)

    singles = []
    for i in range(len(prompts)):
        ours, theirs = _load(tmp_path / f"cpp_{i:03d}.png"), _load(tmp_path / "py" / f"grid_{i:03d}.png")
        assert ours.shape == theirs.shape == (32, 32, 3)
        assert np.abs(ours - theirs).max() <= 1, f"image {i} ({prompts[i]}) differs by more than 1 level"
        singles.append(ours)
    assert np.abs(singles[0] - singles[1]).max() > 10  # the prompts (and noise rows) give different images
    assert _load(tmp_path / "cpp.png").shape == _load(tmp_path / "py" / "grid.png").shape  # same grid layout
    captions = json.loads((tmp_path / "cpp.json").read_text(encoding="utf-8"))
    assert list(captions["images"].values()) == prompts

    runs = [json.loads(line) for line in _text(cpp.stdout).splitlines() if line.startswith("{")]
    assert [run["run"] for run in runs] == [1, 2]  # --repeat 2: a cold and a warm run
    for timing in runs:
        assert set(timing) >= {"load_ms", "text_encoder_ms", "step_ms", "decoder_ms", "total_ms"}
        assert len(timing["step_ms"]) == 4 and timing["batch"] == 3
        assert timing["total_ms"] >= sum(timing["step_ms"])


@pytest.mark.slow
@pytest.mark.parametrize("sampler,saved_class,settings", [
    ("ddim", "DDIMScheduler", {"timestep_spacing": "linspace"}),
    ("ddim", "DDIMScheduler", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
    ("dpm", "DPMSolverMultistepScheduler", {"timestep_spacing": "leading", "steps_offset": 1}),
    ("dpm", "DPMSolverMultistepScheduler", {"solver_type": "heun", "lower_order_final": False}),
    ("ddim", "DPMSolverMultistepScheduler", {"beta_schedule": "scaled_linear", "beta_end": 0.012}),
])
def test_cpp_follows_the_manifest_samplers(cpp_runner, tiny_export, tmp_path, sampler, saved_class, settings):
    """Exports of pipelines saved with other scheduler configs (their manifest's samplers as the
    exporter resolves them): the C++ runner still matches the Python runner (in process here),
    guidance off."""
    import ppdiffusers

    from ernie_vilg2.deploy import InferencePipeline
    from ernie_vilg2.deploy.sampler_export import resolve_samplers
    from ernie_vilg2.models.factory import NOISE_SCHEDULE_KEYS

    folder = tmp_path / "export"
    shutil.copytree(tiny_export[1], folder)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    config = json.loads((Path(tiny_export[0]) / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    schedule = {key: config[key] for key in NOISE_SCHEDULE_KEYS if key in config}
    saved = getattr(ppdiffusers, saved_class)(**{**schedule, **settings}).to_json_string()
    manifest["samplers"] = resolve_samplers(json.loads(saved), log=print)
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    noise = np.random.default_rng(3).standard_normal([1, 4, 8, 8]).astype("float32")
    np.save(tmp_path / "noise.npy", noise)

    pipe = InferencePipeline.from_export(str(folder), sampler=sampler)
    want = pipe("a frog", num_inference_steps=5, guidance_scale=1.0, latents=noise).images[0]
    cpp = _run([cpp_runner, "--model", str(folder), "--prompt", "a frog", "--steps", "5", "--guidance", "1",
                "--sampler", sampler, "--noise", str(tmp_path / "noise.npy"), "--out", str(tmp_path / "cpp.png")])
    assert cpp.returncode == 0, _text(cpp.stderr)
    assert np.abs(_load(tmp_path / "cpp_000.png") - np.asarray(want, dtype=np.int16)).max() <= 1


@pytest.mark.slow
def test_cpp_onednn_engine_agrees_with_native_kernels(cpp_runner, tiny_export, tmp_path):
    """--engine onednn (the exporter's oneDNN-safe programs): within 1 level of the native kernels."""
    images = {}
    for engine in ("paddle", "onednn"):
        out = tmp_path / f"{engine}.png"
        proc = _run([cpp_runner, "--model", tiny_export[1], "--prompt", "红苹果", "--steps", "3", "--engine", engine,
                     "--out", str(out)])
        assert proc.returncode == 0, _text(proc.stderr)
        images[engine] = _load(out)
    assert np.abs(images["paddle"] - images["onednn"]).max() <= 1


@pytest.mark.slow
def test_cpp_own_noise_is_reproducible(cpp_runner, tiny_export, tmp_path):
    def generate(seed, name):
        proc = _run([cpp_runner, "--model", tiny_export[1], "--prompt", "a frog", "--steps", "2", "--seed", str(seed),
                     "--out", str(tmp_path / name)])
        assert proc.returncode == 0, _text(proc.stderr)
        return _load(tmp_path / name)

    first, again, other = generate(1, "a.png"), generate(1, "b.png"), generate(2, "c.png")
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def _version_line(cpp_runner, **environ):
    """--version of a runner started with `environ` (this test process's MKL and malloc settings left out)."""
    mine = ("MKL_DEBUG_CPU_TYPE", "ERNIE_VILG2_MKL_AVX2", "ERNIE_VILG2_MALLOC_TUNING", *malloc_tuning.USER_SETTINGS,
            executor_gc.VARIABLE)
    env = {k: v for k, v in os.environ.items() if k not in mine}
    proc = subprocess.run([cpp_runner, "--version"], capture_output=True, timeout=60, env={**env, **environ})
    assert proc.returncode == 0 and not proc.stderr, _text(proc.stderr)
    return _text(proc.stdout).strip()


def test_cpp_runner_takes_mkls_avx2_path_on_amd_cpus(cpp_runner):
    """As tune_cpu_process() does for the Python tools: MKL_DEBUG_CPU_TYPE=5 on an AMD CPU with AVX2 and
    FMA (MKL's AVX2 path), never over the user's value, not when opted out."""
    amd = amd_with_avx2(Path("/proc/cpuinfo").read_text())
    default = _version_line(cpp_runner)
    assert default.endswith("MKL_DEBUG_CPU_TYPE=5 (set by the runner: AMD CPU with AVX2 and FMA)" if amd
                            else "MKL picks its code path"), default
    assert _version_line(cpp_runner, ERNIE_VILG2_MKL_AVX2="0").endswith("MKL picks its code path")
    assert _version_line(cpp_runner, MKL_DEBUG_CPU_TYPE="2").endswith("MKL_DEBUG_CPU_TYPE=2 (from the environment)")


def test_cpp_runner_keeps_freed_memory_as_the_python_tools(cpp_runner):
    """As tune_cpu_process() does (ernie_vilg2/utils/malloc_tuning.py): glibc's mmap and trim thresholds
    raised, not over the user's own allocator settings, not when opted out."""
    kept = "glibc keeps freed memory (mmap threshold 32 MiB, trim threshold 512 MiB), "
    assert kept in _version_line(cpp_runner)
    for environ in ({"ERNIE_VILG2_MALLOC_TUNING": "0"}, {"MALLOC_MMAP_THRESHOLD_": "131072"},
                    {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}):
        line = _version_line(cpp_runner, **environ)
        assert kept not in line and "malloc as configured, " in line, (environ, line)


def test_cpp_runner_frees_tensors_in_batches_as_the_python_tools(cpp_runner):
    """As tune_cpu_process() does (ernie_vilg2/utils/executor_gc.py): Paddle's executor frees dead tensors
    in batches of 0.005 GiB; a value in the environment is passed on (Paddle Inference does not read it
    there); the call's Windows-only warning does not reach stderr (_version_line checks)."""
    assert f", executor garbage FLAGS_eager_delete_tensor_gb={executor_gc.BATCH_GB}, " in _version_line(cpp_runner)
    line = _version_line(cpp_runner, FLAGS_eager_delete_tensor_gb="0")
    assert ", executor garbage FLAGS_eager_delete_tensor_gb=0 (environment), " in line, line


# -- the C++ CPU operators in the export (deploy/cpp/src/cpu_ops.cc) ------------------------------
OPS_ON = "C++ CPU operators: on (cpu_ops/ernie_vilg2_cpu_ops.so)"
OPS_FALLBACK = "; running the programs without them (Paddle's own CPU kernels)"
# DDIM with 4 steps routes to the experts of t = 750, 500, 250, 0.
OPS_RUN = ["--prompt", "红苹果", "--prompt", "a blue heart", "--sampler", "ddim", "--steps", "4", "--guidance", "3"]


def _without_ops(**environ):
    return {**{k: v for k, v in os.environ.items() if k != "ERNIE_VILG2_CPU_OPS"}, "GLOG_minloglevel": "2", **environ}


def _ops_export(tiny_export, tmp_path, remove_programs: str):
    """A copy of the tiny export without the experts' and the VAE decoder's `remove_programs`
    programs ("plain": inference.json, "cpu_ops": inference.cpu_ops.json): a runner that picked
    those cannot run it (the manifest still records them, and the shared parameters stay)."""
    folder = tmp_path / "export"
    shutil.copytree(tiny_export[1], folder)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert "cpu_ops" in manifest, "the tiny export has no programs with the C++ CPU operators"
    key = "model" if remove_programs == "plain" else "model_with_cpu_ops"
    for program in [*manifest["programs"]["experts"], manifest["programs"]["vae_decoder"]]:
        (folder / program[key]).unlink()
    return folder, manifest


def _ops_images(cpp_runner, folder, out, environ=None, noise=None):
    """(stderr lines, the two images) of OPS_RUN on `folder`."""
    extra = ["--noise", str(noise)] if noise else []
    proc = subprocess.run([cpp_runner, "--model", str(folder), *OPS_RUN, *extra, "--out", str(out)],
                          capture_output=True, timeout=300, env=environ or _without_ops())
    assert proc.returncode == 0, _text(proc.stderr)
    stem = str(out)[:-4]
    return _text(proc.stderr).strip().splitlines(), [_load(f"{stem}_{i:03d}.png") for i in range(2)]


def _version_of(cpp_runner, folder, environ=None):
    proc = subprocess.run([cpp_runner, "--version", "--model", str(folder)], capture_output=True, timeout=60,
                          env=environ or _without_ops())
    assert proc.returncode == 0, _text(proc.stderr)
    return _text(proc.stdout), _text(proc.stderr).strip().splitlines()


@pytest.mark.slow
def test_cpp_runs_the_programs_with_cpu_operators_as_the_python_runner(cpp_runner, tiny_export, tmp_path):
    """With the operators built, the export carries programs with them; the C++ runner registers the
    export's library and runs those programs (the plain ones are removed from its copy), and its
    images equal the Python runner's, which runs them too (same noise; measured: identical)."""
    require_cpu_ops()
    folder, _ = _ops_export(tiny_export, tmp_path, remove_programs="plain")
    version, warnings = _version_of(cpp_runner, folder)
    assert OPS_ON in version and not warnings, (version, warnings)
    noise = tmp_path / "noise.npy"
    py = _run([sys.executable, PY_RUNNER, "--model", tiny_export[1], *OPS_RUN, "--seed", "5",
               "--out", str(tmp_path / "py" / "grid.png"), "--save-noise", str(noise)])
    assert py.returncode == 0, _text(py.stderr)
    warnings, ours = _ops_images(cpp_runner, folder, tmp_path / "cpp.png", noise=noise)
    assert not warnings
    for i, image in enumerate(ours):
        assert np.array_equal(image, _load(tmp_path / "py" / f"grid_{i:03d}.png")), f"image {i}"


@pytest.mark.parametrize("damage,reason", [
    ("paddle_commit", "built for Paddle {version} (0123456789), this is {version} ("),
    ("missing", "{library} is missing"),
    ("not a library", "{library} could not be loaded ("),
])
def test_cpp_cpu_operators_that_cannot_run_fall_back_with_one_warning(cpp_runner, tiny_export, tmp_path, damage,
                                                                      reason):
    """A library built for another Paddle (its manifest entry says so), missing, or that Paddle cannot
    load (same size, other bytes): one warning line, exit 0, and the plain programs (the programs
    with the operators are removed from the copy), whose images equal a run with the operators
    switched off."""
    require_cpu_ops()
    folder, manifest = _ops_export(tiny_export, tmp_path, remove_programs="cpu_ops")
    library = folder / manifest["cpu_ops"]["library"]
    if damage == "paddle_commit":
        manifest["cpu_ops"]["paddle_commit"] = "0123456789" * 4
        (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    elif damage == "missing":
        library.unlink()
    else:
        library.write_bytes(b"\0" * library.stat().st_size)
    expected = reason.format(version=manifest["cpu_ops"]["paddle_version"], library=library)
    version, warnings = _version_of(cpp_runner, folder)
    assert "C++ CPU operators: off (" + expected in version, version
    warnings, images = _ops_images(cpp_runner, folder, tmp_path / "fallback.png")
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {folder}: C++ CPU operators: {expected}"), warnings
    assert warnings[0].endswith(OPS_FALLBACK), warnings
    _, plain = _ops_images(cpp_runner, tiny_export[1], tmp_path / "plain.png", _without_ops(ERNIE_VILG2_CPU_OPS="0"))
    assert all(np.array_equal(a, b) for a, b in zip(images, plain))


def test_cpp_cpu_operators_switched_off_by_the_environment(cpp_runner, tiny_export, tmp_path):
    """ERNIE_VILG2_CPU_OPS=0: the plain programs, silently, without looking at the library (removed
    here, with the programs with the operators)."""
    require_cpu_ops()
    folder, manifest = _ops_export(tiny_export, tmp_path, remove_programs="cpu_ops")
    (folder / manifest["cpu_ops"]["library"]).unlink()
    off = _without_ops(ERNIE_VILG2_CPU_OPS="0")
    version, warnings = _version_of(cpp_runner, folder, off)
    assert "C++ CPU operators: off (ERNIE_VILG2_CPU_OPS=0)" in version and not warnings
    warnings, _ = _ops_images(cpp_runner, folder, tmp_path / "off.png", off)
    assert not warnings


@pytest.mark.parametrize("change,message", [
    (lambda m: m.update(cpu_ops="x"), "field 'cpu_ops': expected an object"),
    (lambda m: m["cpu_ops"].update(paddle_commit=7), "field 'cpu_ops.paddle_commit': expected a string"),
    (lambda m: m["cpu_ops"].pop("library"), "field 'cpu_ops.library': missing"),
    (lambda m: m["programs"]["experts"][2].update(model_with_cpu_ops=["a"]),
     "field 'programs.experts[2].model_with_cpu_ops': expected a string"),
    (lambda m: m["programs"]["vae_decoder"].update(params_with_cpu_ops="vae_decoder/other.pdiparams"),
     "field 'files': has no record of vae_decoder/other.pdiparams"),
    (lambda m: m["cpu_ops"].update(library="../elsewhere.so"),
     "field 'cpu_ops.library': expected a path inside the export folder"),
], ids=["cpu_ops", "paddle_commit", "library", "model_with_cpu_ops", "files", "outside"])
def test_cpp_bad_cpu_ops_field_is_one_line_error(cpp_runner, tiny_export, tmp_path, change, message):
    require_cpu_ops()
    folder = deploy_exports.edited_copy(tiny_export[1], tmp_path / "export", change)
    proc = _run([cpp_runner, "--model", folder, "--prompt", "x", "--out", str(tmp_path / "o.png")])
    lines = _text(proc.stderr).strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {folder}/manifest.json: {message}"), lines


BAD_INPUT = [
    (["--model", "{missing}", "--prompt", "x"], "--model: export folder not found"),
    (["--model", "{empty}", "--prompt", "x"], "manifest.json: not found"),
    (["--model", "{export}", "--prompt", "   "], "--prompt: the prompt is empty"),
    (["--model", "{export}", "--prompt", "ok", "--prompt", ""], "--prompt #2: the prompt is empty"),
    (["--model", "{export}", "--prompt", b"caf\xe9"], "--prompt: not valid UTF-8"),
    (["--model", "{export}", "--prompt", "x", "--steps", "0"], "--steps: must be >= 1"),
    (["--model", "{export}", "--prompt", "x", "--steps", "1000"], "--steps: must be <= 999 with dpm"),
    (["--model", "{export}", "--prompt", "x", "--steps", "1001", "--sampler", "ddim"], "--steps: must be <= 1000 with ddim"),
    (["--model", "{export}", "--prompt", "x", "--steps", "five"], "--steps: expected an integer"),
    (["--model", "{export}", "--prompt", "x", "--guidance", "-1"], "--guidance: must be >= 0"),
    (["--model", "{export}", "--prompt", "x", "--out", "x.jpg"], "--out: must be a .png file name"),
    (["--model", "{export}", "--prompt", "x", "--noise", "{bad_noise}"], "expected [1, 4, 8, 8]"),
    (["--model", "{export}", "--prompt", "x", "--noise", "{missing}"], "--noise: file not found"),
    (["--model", "{export}", "--prompt", "x", "--sampler", "euler"], "--sampler: expected dpm or ddim, got 'euler'"),
    (["--model", "{export}", "--prompt", "x", "--bogus"], "unknown option --bogus"),
    (["--model", "{export}", "--prompt", "x", "--engine", "onednn", "--device", "gpu"], "runs on the CPU only"),
    (["--model", "{export}"], "--prompt: no prompt given"),
    (["--prompt", "x"], "--model: required"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_cpp_bad_input_is_one_line_error(cpp_runner, tiny_export, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "bad_noise.npy", np.zeros([2, 4, 8, 8], dtype="float32"))
    paths = {"missing": str(tmp_path / "missing"), "empty": str(tmp_path / "empty"), "export": tiny_export[1],
             "bad_noise": str(tmp_path / "bad_noise.npy")}
    argv = [a.format(**paths) if isinstance(a, str) else a for a in args]
    proc = _run([cpp_runner, *argv], cwd=tmp_path)  # the default --out is out.png here
    lines = _text(proc.stderr).strip().splitlines()
    assert proc.returncode == 2, _text(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("damage,message", [
    ("truncate", "damaged (expected"),
    ("delete", "file not found"),
    ("manifest", "not valid JSON"),
    ("version", "field 'format_version': 99 is not supported by this runner (it reads version 2; re-export"),
    ("version 1", "field 'format_version': 1 is not supported by this runner (it reads version 2; re-export"),
])
def test_cpp_damaged_export_names_the_file(cpp_runner, tiny_export, tmp_path, damage, message):
    folder = tmp_path / "export"
    shutil.copytree(tiny_export[1], folder)
    params = folder / "unet" / "expert_07" / "inference.pdiparams"  # runs t = 750 of the 10 experts
    manifest = folder / "manifest.json"
    if damage == "truncate":
        params.write_bytes(params.read_bytes()[:-10])
    elif damage == "delete":
        params.unlink()
    elif damage == "manifest":
        manifest.write_text(manifest.read_text(encoding="utf-8")[:-20], encoding="utf-8")
    else:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        data["format_version"] = 1 if damage == "version 1" else 99
        manifest.write_text(json.dumps(data), encoding="utf-8")
    # DDIM with 4 steps: timesteps 750, 500, 250, 0.
    proc = _run([cpp_runner, "--model", str(folder), "--prompt", "x", "--sampler", "ddim", "--steps", "4",
                 "--out", str(tmp_path / "o.png")])
    lines = _text(proc.stderr).strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], lines
    if damage in ("truncate", "delete"):
        assert str(params) in lines[0]


def test_cmake_with_a_folder_that_is_not_paddle_inference_fails_clearly(cpp_runner, tmp_path):
    fake = tmp_path / "paddle_inference"
    (fake / "paddle" / "lib").mkdir(parents=True)
    (fake / "paddle" / "lib" / "libpaddle_inference.so").write_bytes(b"")
    proc = _run(["cmake", "-S", CPP_DIR, "-B", str(tmp_path / "build"), f"-DPADDLE_INFERENCE_DIR={fake}",
                 f"-DPython3_EXECUTABLE={sys.executable}"])
    output = _text(proc.stdout) + _text(proc.stderr)
    assert proc.returncode != 0
    assert "paddle/include/paddle_inference_api.h not found" in " ".join(output.split())  # CMake wraps lines
