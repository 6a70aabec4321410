"""Shared pytest fixtures: a tiny model config and tiny ERNIE-ViLG 2.0 pipelines.

Sizes are chosen so that every part has a few hundred thousand parameters and a
sampling step takes milliseconds: 32x32 images, 8x8 latents (VAE factor 4), 16-token
prompts. Session-scoped pipelines are shared by many tests: treat them as read-only
(do not swap their scheduler or change their weights; build your own with
``make_tiny_pipeline`` for that).
"""
from __future__ import annotations

import fcntl
import os
import random
import sys

import numpy as np
import pytest

from ernie_vilg2.utils.cpu_tuning import tune_cpu_process

from helpers import deploy_exports
from helpers.headless_chromium import find_chromium
from helpers.paths import CPP_BUILD_DIR, CPP_DIR, SHARED_DIR, TINY_LATENT, TINY_RESOLUTION

# Before paddle is imported anywhere: deterministic kernels, no C++ log noise.
os.environ.setdefault("FLAGS_cudnn_deterministic", "1")
os.environ.setdefault("GLOG_minloglevel", "2")
# The CPU settings of the tools' processes, before Paddle's first MKL call (tests/utils/test_cpu_tuning.py).
tune_cpu_process()

VILG300_CSV = os.path.join(SHARED_DIR, "data", "ViLG-300.csv")


def _use_cpu():
    import paddle

    paddle.set_device("cpu")
    return paddle


@pytest.fixture(autouse=True)
def _deterministic():
    """Same random state for every test; paddle is seeded only if a test module loaded it
    (so tests of the paddle-free parts stay fast)."""
    random.seed(0)
    np.random.seed(0)
    if "paddle" in sys.modules:
        _use_cpu().seed(0)
    yield


def tiny_model_config_factory(num_experts: int = 1):
    from ernie_vilg2.models.config import ModelConfig, TextEncoderConfig, UNetConfig, VAEConfig

    return ModelConfig(
        num_experts=num_experts,
        text_encoder=TextEncoderConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_length=16
        ),
        unet=UNetConfig(block_out_channels=[32, 64], layers_per_block=1, attention_head_dim=4, norm_num_groups=8),
        vae=VAEConfig(block_out_channels=[32, 64, 64], layers_per_block=1, latent_channels=4, norm_num_groups=8),
    )


@pytest.fixture(scope="session")
def tiny_model_config():
    return tiny_model_config_factory()


@pytest.fixture(scope="session")
def tiny_unet_kwargs(tiny_model_config):
    """Keyword config of one tiny expert (UNet2DConditionModel) on 8x8 latents."""
    from ernie_vilg2.models.factory import unet_kwargs

    return unet_kwargs(tiny_model_config, TINY_LATENT)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_config):
    from ernie_vilg2.text.tokenizer import build_tokenizer

    te = tiny_model_config.text_encoder
    return build_tokenizer(te.vocab_file, te.max_length)


def _build_pipeline(cfg, num_experts: int, seed: int, tokenizer=None, sampler: str = "ddim"):
    from ernie_vilg2.pipelines.building import build_pipeline

    paddle = _use_cpu()
    paddle.seed(seed)
    pipe = build_pipeline(cfg, TINY_RESOLUTION, num_experts=num_experts, tokenizer=tokenizer, sampler=sampler)
    for part in (pipe.vae, pipe.text_encoder, pipe.unet):
        part.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def make_tiny_pipeline(tiny_model_config, tiny_tokenizer):
    """Factory: ``make_tiny_pipeline(num_experts=1, seed=0, sampler="ddim")`` -> a fresh pipeline
    (same seed -> same weights)."""

    def make(num_experts: int = 1, seed: int = 0, sampler: str = "ddim"):
        return _build_pipeline(tiny_model_config, num_experts, seed, tiny_tokenizer, sampler)

    return make


@pytest.fixture(scope="session")
def tiny_pipeline(make_tiny_pipeline):
    """A stage-1 (single-expert) tiny pipeline with DDIM. Read-only."""
    return make_tiny_pipeline(num_experts=1, seed=0)


@pytest.fixture(scope="session")
def tiny_mode_pipeline(make_tiny_pipeline):
    """A tiny pipeline with 4 independently initialised experts and DDIM. Read-only."""
    return make_tiny_pipeline(num_experts=4, seed=1)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tiny_pipeline, tmp_path_factory):
    """``tiny_pipeline`` saved with save_pretrained (model_index.json + safetensors)."""
    path = tmp_path_factory.mktemp("tiny_pipeline") / "pipeline"
    tiny_pipeline.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="session")
def vilg300_csv():
    if not os.path.isfile(VILG300_CSV):
        pytest.skip(f"shared prompt set not found: {VILG300_CSV} (needs the ../shared checkout)")
    return VILG300_CSV


# -- exports of the deploy tests (tests/helpers/deploy_exports.py makes each once per session) ------------
@pytest.fixture(scope="session")
def export_n1(tiny_pipeline_dir, tmp_path_factory):
    return deploy_exports.n1_export(tiny_pipeline_dir, tmp_path_factory)


@pytest.fixture(scope="session")
def bank(make_tiny_pipeline, tmp_path_factory):
    """The tiny 10-expert bank: (pipeline, saved folder, export folder, ...) of deploy_exports.n10."""
    return deploy_exports.n10(make_tiny_pipeline, tmp_path_factory)


# -- the C++ runner (deploy/cpp), built once per session ---------------------------------------------


@pytest.fixture(scope="session")
def cpp_runner():
    """Configure and build deploy/cpp (incremental) into deploy/cpp/build (kept between runs),
    return the binary's path. Never skipped: CI must build the runner. Its system packages are
    `make test`'s business (deploy/cpp/install_deps.sh), not a test's."""
    import subprocess

    def run(args, timeout=600):
        proc = subprocess.run(args, capture_output=True, timeout=timeout, env={**os.environ, "GLOG_minloglevel": "2"})
        output = (proc.stdout + proc.stderr).decode("utf-8", "replace")[-8000:]
        assert proc.returncode == 0, f"{' '.join(args[:3])} failed:\n{output}"

    # `make test` runs the suite in several pytest workers: one builds, the others wait for it.
    os.makedirs(CPP_BUILD_DIR, exist_ok=True)
    with open(os.path.join(CPP_BUILD_DIR, ".test-build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run(["cmake", "-S", CPP_DIR, "-B", CPP_BUILD_DIR, f"-DPython3_EXECUTABLE={sys.executable}"])
        run(["cmake", "--build", CPP_BUILD_DIR, "-j", "2"], timeout=1200)
    return os.path.join(CPP_BUILD_DIR, "ernie_vilg2_infer")


# -- headless Chromium -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chromium():
    """Headless Chromium's path. Installing it is `make browser`'s business (`make test` runs it
    first), not a test's; without it the browser tests skip (fail under CI=1)."""
    path = find_chromium()
    if path is None:
        reason = "headless Chromium is not installed: run `make browser` (scripts/install_browser.sh)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


# -- markers (pytest.ini): what `make test-fast` leaves out ---------------------------------------
# A test that uses one of these fixtures gets its marker; other tests mark themselves.
FIXTURE_MARKERS = {"cpp_runner": "cpp", "chromium": "browser"}


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
        # Under `make test`'s workers (pytest-xdist, --dist loadgroup) the multi-process tests run
        # one at a time in one worker: their launchers pick ports and their timeouts assume one job.
        if item.get_closest_marker("multiproc"):
            item.add_marker(pytest.mark.xdist_group("multiproc"))
