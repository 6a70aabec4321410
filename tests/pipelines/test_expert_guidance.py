"""Per-expert guidance and placed expert boundaries in ErnieViLG2Pipeline."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.expert_boundaries import hand_sampling_loop, with_boundaries

PROMPT = "红苹果在猫脸的左边"
BOUNDARIES = [30, 300, 600]
SCALES = [3.0, 1.0, 0.5, 2.0]
STEPS = 10  # DDIM's timesteps 900 ... 0 visit all four experts


@pytest.fixture(scope="module")
def placed(tiny_mode_pipeline):
    return with_boundaries(tiny_mode_pipeline, BOUNDARIES)


def test_per_expert_guidance_equals_a_hand_written_loop(placed):
    images = placed(PROMPT, num_inference_steps=STEPS, guidance_scale=SCALES, seed=5, output_type="np").images
    expected = hand_sampling_loop(placed, PROMPT, SCALES, BOUNDARIES, STEPS, seed=5)
    np.testing.assert_allclose(images, expected, atol=1e-5)


def test_each_expert_uses_its_own_scale(placed):
    def image(scales):
        return placed(PROMPT, num_inference_steps=STEPS, guidance_scale=scales, seed=5, output_type="np").images

    same = image([2.0] * 4)
    assert np.array_equal(same, image(2.0))  # one number is every expert's
    assert not np.allclose(same, image([2.0, 2.0, 2.0, 4.0]))  # the noisiest expert's scale counts


def test_boundaries_choose_the_expert_of_each_step(tiny_mode_pipeline, placed):
    uniform = tiny_mode_pipeline(PROMPT, num_inference_steps=STEPS, guidance_scale=3.0, seed=5,
                                 output_type="np").images
    np.testing.assert_allclose(uniform, hand_sampling_loop(tiny_mode_pipeline, PROMPT, [3.0] * 4, [250, 500, 750],
                                                           STEPS, seed=5), atol=1e-5)
    assert not np.allclose(uniform, placed(PROMPT, num_inference_steps=STEPS, guidance_scale=3.0, seed=5,
                                           output_type="np").images)


@pytest.mark.parametrize("scales, problem", [
    ([3.0, 2.0], "guidance_scale must be one number or 4 (one per expert), got 2"),
    ([3.0, 2.0, 1.0, -1.0], "guidance_scale must be >= 0 and finite, got -1.0"),
    ([3.0, 2.0, float("nan"), 1.0], "guidance_scale must be >= 0 and finite, got nan"),
    ([3.0, "2", 1.0, 1.0], "guidance_scale must be a number, got '2'"),
])
def test_bad_per_expert_scales_are_one_line_naming_the_argument(placed, scales, problem):
    with pytest.raises(ValueError) as err:
        placed(PROMPT, num_inference_steps=2, guidance_scale=scales)
    assert str(err.value) == problem
