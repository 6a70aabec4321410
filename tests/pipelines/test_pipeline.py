"""ErnieViLG2Pipeline: reproducibility, save/load, output counts and sizes, samplers,
and clear errors on bad input."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from ernie_vilg2.models.factory import build_sampler
from ernie_vilg2.pipelines import ErnieViLG2Pipeline, generate_images

STEPS = 2
PROMPTS = ["红苹果在猫脸的左边", "a blue heart"]


def _images(pipe, prompt=PROMPTS, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("guidance_scale", 3.0)
    kwargs.setdefault("output_type", "np")
    return pipe(prompt, **kwargs).images


def _with_sampler(pipe, name):
    new = ErnieViLG2Pipeline(**{**pipe.components, "scheduler": build_sampler(name, dict(pipe.scheduler.config))})
    new.set_progress_bar_config(disable=True)
    return new


@pytest.mark.slow
def test_save_then_load_gives_bit_identical_images(tiny_mode_pipeline, tmp_path):
    before = _images(tiny_mode_pipeline, seed=11)
    tiny_mode_pipeline.save_pretrained(str(tmp_path))
    assert (tmp_path / "model_index.json").is_file()
    loaded = ErnieViLG2Pipeline.from_pretrained(str(tmp_path))
    loaded.set_progress_bar_config(disable=True)
    assert loaded.unet.num_experts == tiny_mode_pipeline.unet.num_experts
    assert type(loaded.scheduler) is type(tiny_mode_pipeline.scheduler)
    after = _images(loaded, seed=11)
    assert after.dtype == before.dtype and np.array_equal(after, before)


def test_same_seed_same_images_different_seed_different(tiny_pipeline):
    a = _images(tiny_pipeline, seed=1)
    b = _images(tiny_pipeline, seed=1)
    c = _images(tiny_pipeline, seed=2)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4
    # a NumPy generator in place of the seed draws the same noise
    d = _images(tiny_pipeline, generator=np.random.default_rng(1))
    assert np.array_equal(a, d)


def test_batched_generation_does_not_depend_on_batch_size(tiny_pipeline):
    prompts = ["一只猫", "a dog", "红色的汽车"]
    kw = dict(num_inference_steps=STEPS, guidance_scale=3.0, output_type="np", seed=5)
    one = np.stack(generate_images(tiny_pipeline, prompts, batch_size=1, **kw))
    three = np.stack(generate_images(tiny_pipeline, prompts, batch_size=3, **kw))
    assert one.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(one, three, atol=1e-5)


def test_wanted_images_are_those_of_a_full_run(tiny_pipeline):
    """iter_images with ``wanted`` makes only those images, each from its own noise row (as
    tools/evaluate.py resumes), and skips the pipeline for batches without wanted images."""
    from ernie_vilg2.pipelines import iter_images

    prompts = ["一只猫", "a dog", "红色的汽车"]
    kw = dict(seed=5, num_images_per_prompt=2, num_inference_steps=1, guidance_scale=3.0, output_type="np")
    full = generate_images(tiny_pipeline, prompts, batch_size=1, **kw)
    calls = []
    some = list(iter_images(tiny_pipeline, prompts, images_per_batch=2, wanted={4, 1},
                            callback=lambda *a: calls.append(a), **kw))
    assert [i for i, _ in some] == [1, 4] and len(calls) == 2  # batch [2, 3]: no call
    for i, image in some:
        np.testing.assert_allclose(image, full[i], atol=1e-5)
    assert np.abs(some[0][1] - full[0]).max() > 1e-3  # its own row, not its batch's first
    assert list(iter_images(tiny_pipeline, prompts, wanted=[], **kw)) == []
    with pytest.raises(ValueError, match=r"^wanted: image indices must be in \[0, 6\), got \[6\]"):
        list(iter_images(tiny_pipeline, prompts, wanted={0, 6}, **kw))


@pytest.mark.parametrize(
    "prompt,per_prompt,height,width",
    [("一只猫", 3, None, None), (PROMPTS, 2, 16, 48), (PROMPTS + ["a dog"], 1, 32, 32)],
)
def test_image_count_and_size(tiny_pipeline, prompt, per_prompt, height, width):
    n_prompts = 1 if isinstance(prompt, str) else len(prompt)
    images = tiny_pipeline(
        prompt, num_images_per_prompt=per_prompt, height=height, width=width,
        num_inference_steps=STEPS, guidance_scale=3.0, seed=0,
    ).images
    assert len(images) == n_prompts * per_prompt
    for im in images:
        assert isinstance(im, Image.Image)
        assert im.size == (width or 32, height or 32)  # PIL size is (width, height)


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_samplers_run(tiny_pipeline, sampler):
    pipe = _with_sampler(tiny_pipeline, sampler)
    images = _images(pipe, seed=3, num_inference_steps=3)
    assert images.shape == (2, 32, 32, 3)
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert len(pipe.scheduler.timesteps) == 3


@pytest.mark.parametrize(
    "kwargs,error,field",
    [
        (dict(prompt=""), ValueError, "prompt"),
        (dict(prompt=["一只猫", "  "]), ValueError, "prompt[1]"),
        (dict(prompt=[]), ValueError, "prompt"),
        (dict(prompt=["ok", 3]), TypeError, "prompt[1]"),
        (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
        (dict(num_inference_steps=-2), ValueError, "num_inference_steps"),
        (dict(guidance_scale=-1.0), ValueError, "guidance_scale"),
        (dict(height=30), ValueError, "height"),
        (dict(width=-8), ValueError, "width"),
        (dict(width=0), ValueError, "width"),
        (dict(num_images_per_prompt=0), ValueError, "num_images_per_prompt"),
        (dict(negative_prompt=["a", "b", "c"]), ValueError, "negative_prompt"),
        (dict(output_type="tensor"), ValueError, "output_type"),
    ],
)
def test_bad_input_errors_name_the_field(tiny_pipeline, kwargs, error, field):
    kwargs = {"prompt": PROMPTS, "num_inference_steps": STEPS, "guidance_scale": 3.0, **kwargs}
    with pytest.raises(error) as info:
        tiny_pipeline(**kwargs)
    assert field in str(info.value)


def test_overlong_prompt_is_truncated_with_a_warning(tiny_pipeline, caplog):
    max_len = tiny_pipeline.max_length  # 16 tokens: [CLS] + 14 + [SEP]
    fits = "红" * (max_len - 2)
    with caplog.at_level(logging.WARNING):
        ref = _images(tiny_pipeline, prompt=fits, seed=4)
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]

    with caplog.at_level(logging.WARNING):
        long = _images(tiny_pipeline, prompt="红" * (5 * max_len), seed=4)
    assert [r for r in caplog.records if r.levelno == logging.WARNING and "truncated" in r.getMessage()]
    # truncation keeps the first max_length - 2 tokens, so the image equals the short prompt's
    assert np.array_equal(long, ref)
