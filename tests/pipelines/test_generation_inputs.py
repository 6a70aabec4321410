"""Sampling settings are checked before any work (steps limit of each sampler, seed, guidance),
prompts cut to the text encoder's length are summarised in one warning, and a run whose latents
turn NaN/inf is an error, never a black image."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from ernie_vilg2.models.factory import build_sampler
from ernie_vilg2.pipelines import ErnieViLG2Pipeline, generate_images
from ernie_vilg2.pipelines.checks import NonFiniteLatentsError, check_seed, max_inference_steps
from ernie_vilg2.text.tokenizer import check_prompts, report_truncation, tokenize


def _with_sampler(pipe, name):
    new = ErnieViLG2Pipeline(**{**pipe.components, "scheduler": build_sampler(name, dict(pipe.scheduler.config))})
    new.set_progress_bar_config(disable=True)
    return new


@pytest.mark.parametrize("sampler,limit", [("ddim", 1000), ("dpm", 999)])
def test_steps_limit_is_where_the_scheduler_breaks(tiny_pipeline, sampler, limit):
    scheduler = build_sampler(sampler, dict(tiny_pipeline.scheduler.config))
    assert max_inference_steps(scheduler) == limit
    scheduler.set_timesteps(limit)  # the limit: every step a distinct timestep
    assert len(np.unique(scheduler.timesteps.numpy())) == limit
    try:  # one more: DDIM refuses it, DPM-Solver++ repeats a timestep (NaN images)
        scheduler.set_timesteps(limit + 1)
    except ValueError:
        return
    assert len(np.unique(scheduler.timesteps.numpy())) < limit + 1


@pytest.mark.parametrize("sampler,steps,limit", [("ddim", 1001, 1000), ("dpm", 1000, 999), ("dpm", 2000, 999)])
def test_too_many_steps_refused_before_sampling(tiny_pipeline, sampler, steps, limit):
    pipe = _with_sampler(tiny_pipeline, sampler)
    calls = []
    with pytest.raises(ValueError, match=rf"num_inference_steps must be <= {limit} .*got {steps}"):
        pipe("a cat", num_inference_steps=steps, callback=lambda *a: calls.append(a))
    with pytest.raises(ValueError, match="num_inference_steps"):
        generate_images(pipe, ["a cat", "a dog"], batch_size=1, num_inference_steps=steps)
    assert calls == []  # not a single denoising step ran
    assert pipe.check_inputs(num_inference_steps=limit) == (32, 32)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3"])
def test_bad_seed_names_the_field(tiny_pipeline, seed):
    with pytest.raises(ValueError, match=r"^seed must be an integer >= 0"):
        tiny_pipeline("a cat", num_inference_steps=1, seed=seed)
    with pytest.raises(ValueError, match=r"^seed must be an integer >= 0"):
        generate_images(tiny_pipeline, ["a cat"], seed=seed, num_inference_steps=1)


def test_seed_range_is_the_cpp_runners():
    """[0, 2**63 - 1]: the C++ runner reads --seed as a signed 64-bit integer."""
    check_seed(2**63 - 1)
    check_seed(np.uint64(2**63 - 1))
    for seed in (2**63, 2**64, np.uint64(2**63)):
        with pytest.raises(ValueError, match=r"^seed must be an integer >= 0 and <= 2\*\*63 - 1"):
            check_seed(seed)


@pytest.mark.parametrize("guidance", [float("nan"), float("inf"), -float("inf"), np.float32("nan"), -1.0])
def test_non_finite_or_negative_guidance_is_refused_before_sampling(tiny_pipeline, guidance):
    calls = []
    with pytest.raises(ValueError, match=r"^guidance_scale must be >= 0 and finite, got "):
        tiny_pipeline("a cat", num_inference_steps=2, guidance_scale=guidance, callback=lambda *a: calls.append(a))
    with pytest.raises(ValueError, match=r"^guidance_scale must be >= 0 and finite"):
        generate_images(tiny_pipeline, ["a cat"], num_inference_steps=2, guidance_scale=guidance)
    assert calls == []


@pytest.mark.parametrize("guidance", ["2", None, True])
def test_guidance_must_be_a_number(tiny_pipeline, guidance):
    with pytest.raises(ValueError, match=r"^guidance_scale must be a number, got "):
        tiny_pipeline("a cat", num_inference_steps=2, guidance_scale=guidance)


def _nan_from_call(unet, first_bad_call):
    """``unet``'s forward, returning NaN noise from its ``first_bad_call``-th call (1-based) on."""
    forward, calls = unet.forward, []

    def fake(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls.append(1)
        if len(calls) >= first_bad_call:
            out = type(out)(sample=out.sample * float("nan"))
        return out

    return fake


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_nan_noise_is_an_error_naming_the_step_not_a_black_image(tiny_pipeline, monkeypatch, guidance):
    monkeypatch.setattr(tiny_pipeline.unet, "forward", _nan_from_call(tiny_pipeline.unet, 3))
    seen = []
    with pytest.raises(NonFiniteLatentsError,
                       match=r"^sampling produced non-finite latents \(NaN/inf\) at step 3 of 4; check the guidance"):
        tiny_pipeline("a cat", num_inference_steps=4, guidance_scale=guidance, callback=lambda i, t, x: seen.append(i))
    assert seen == [0, 1]  # the callback never sees the NaN latents
    with pytest.raises(NonFiniteLatentsError):  # a ValueError: the CLIs report it as one line, exit 2
        generate_images(tiny_pipeline, ["a cat"], num_inference_steps=4, guidance_scale=guidance)


def test_prompts_with_lone_surrogates_are_refused():
    """What Python makes of undecodable command-line bytes (surrogateescape): no text to encode."""
    assert check_prompts(["红苹果", "a cat 🐱"]) == ["红苹果", "a cat 🐱"]
    with pytest.raises(ValueError, match=r"^prompt\[1\]: not valid Unicode text \(lone surrogate U\+DCFF at "
                                         r"character 4"):
        check_prompts(["ok", "red \udcff apple"])
    with pytest.raises(ValueError, match=r"^prompt\[0\]: not valid Unicode text \(lone surrogate U\+D800"):
        check_prompts("\ud800")


def _truncation_records(caplog, level):
    return [r for r in caplog.records if r.levelno == level and "truncated" in r.getMessage()]


def test_truncation_is_one_summary_per_generation_run(tiny_pipeline, caplog):
    max_len = tiny_pipeline.max_length  # 16 tokens with [CLS]/[SEP]
    prompts = ["紫" * 3, "绿" * 20, "a small cat", "橙" * 30, "灰" * (max_len - 2), "a " + "big " * 40 + "dog"]
    with caplog.at_level(logging.DEBUG, logger="ernie_vilg2"):
        images = generate_images(tiny_pipeline, prompts, batch_size=2, num_inference_steps=1, output_type="np")
    assert len(images) == len(prompts)
    warnings = _truncation_records(caplog, logging.WARNING)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "3 of 6 prompts were truncated to 16 tokens (model.text_encoder.max_length)" in message
    assert "longest: 44 tokens" in message  # [CLS] a big*40 dog [SEP]
    details = [r.getMessage() for r in _truncation_records(caplog, logging.DEBUG)]
    assert len(details) == 3 and all("to 16 tokens" in d for d in details)
    assert "橙" * 30 in details[1] and "from 32 to 16" in details[1]

    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a direct call: one summary for its new prompts
        tiny_pipeline(["蓝" * 20, "黄" * 25, "a cat"], num_inference_steps=1, num_images_per_prompt=2)
    warnings = _truncation_records(caplog, logging.WARNING)
    assert [r.getMessage().split(" (")[0] for r in warnings] == ["2 of 3 prompts were truncated to 16 tokens"]


def test_training_tokenize_reports_each_text_once(tiny_tokenizer, caplog):
    captions = ["白" * 30, "a cat", "黑" * 30]
    with caplog.at_level(logging.WARNING):
        for _ in range(5):  # every step/epoch sees the same captions
            tokenize(tiny_tokenizer, captions, 16)
        tokenize(tiny_tokenizer, captions + ["棕" * 30], 16)
    messages = [r.getMessage() for r in _truncation_records(caplog, logging.WARNING)]
    assert [m.split(";")[0] for m in messages] == [
        "2 of 3 prompts were truncated to 16 tokens (model.text_encoder.max_length)",
        "3 of 4 prompts were truncated to 16 tokens (model.text_encoder.max_length)",  # one new caption
    ]
    assert report_truncation(tiny_tokenizer, ["白" * 30, "ok"], 16) == 1  # counted, not warned again
    assert len(_truncation_records(caplog, logging.WARNING)) == 2
