"""model.expert_boundaries: uniform, snr and explicit lists route every timestep as computed."""
import math

import numpy as np
import paddle
import pytest

from ernie_vilg2.config import ConfigError
from ernie_vilg2.models.config import ModelConfig
from ernie_vilg2.models.expert_bank import MixtureOfDenoisingExperts
from ernie_vilg2.models.factory import build_noise_scheduler
from ernie_vilg2.models.routing import TimestepRouter, snr_boundaries

TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[8, 16], layers_per_block=1,
                 down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=8, attention_head_dim=2,
                 norm_num_groups=8)


def hand_snr_boundaries(betas, n):
    """The rule written out with plain floats: b_i is the first t whose log-SNR has fallen to
    the i-th of n equal shares of the schedule's log-SNR range."""
    alpha_bar, log_snr = 1.0, []
    for beta in betas:
        alpha_bar *= 1.0 - beta
        log_snr.append(math.log(alpha_bar / (1.0 - alpha_bar)))
    span = log_snr[0] - log_snr[-1]
    return [next(t for t, value in enumerate(log_snr) if value <= log_snr[0] - span * i / n) for i in range(1, n)]


@pytest.mark.parametrize("n", [2, 4, 10])
def test_snr_boundaries_route_every_t_as_computed_from_the_betas(n):
    cfg = ModelConfig(num_experts=n, expert_boundaries="snr")
    scheduler = build_noise_scheduler(cfg)
    betas = [float(b) for b in scheduler.betas.numpy()]
    expected = hand_snr_boundaries(betas, n)
    boundaries = cfg.boundaries(scheduler.alphas_cumprod.numpy())
    assert boundaries == expected
    assert boundaries != TimestepRouter(n, 1000).boundaries  # not the uniform split
    router = TimestepRouter(n, 1000, boundaries)
    want = [sum(t >= b for b in expected) for t in range(1000)]
    assert [router.expert_index(t) for t in range(1000)] == want
    assert router.expert_index(np.arange(1000)).tolist() == want
    assert router.expert_index(paddle.arange(1000, dtype="int64")).numpy().tolist() == want
    assert [router.stage(i) for i in range(n)] == list(zip([0] + expected, expected + [1000]))


def test_snr_favours_the_noisy_end_less_than_uniform():
    # the linear schedule's log-SNR falls fastest near t = 0: the low-noise experts own fewer steps
    lengths = TimestepRouter(4, 1000, snr_boundaries(build_noise_scheduler(ModelConfig()).alphas_cumprod.numpy(),
                                                      4)).stage_lengths()
    assert lengths[0] < 250 < lengths[-1]


def test_uniform_is_the_papers_rule_and_an_explicit_list_routes_as_given():
    assert ModelConfig(num_experts=10).boundaries() == list(range(100, 1000, 100))
    router = TimestepRouter(3, 1000, [10, 700])
    assert [router.expert_index(t) for t in (-5, 0, 9, 10, 699, 700, 999, 5000)] == [0, 0, 0, 1, 1, 2, 2, 2]
    assert router.stage_lengths() == [10, 690, 300]
    assert ModelConfig(num_experts=3, expert_boundaries=[10, 700]).boundaries() == [10, 700]


def test_a_bank_saves_and_loads_its_boundaries(tmp_path):
    bank = MixtureOfDenoisingExperts(num_experts=3, unet=TINY_UNET, expert_boundaries=[10, 700])
    bank.save_pretrained(str(tmp_path))
    loaded = MixtureOfDenoisingExperts.from_pretrained(str(tmp_path))
    assert loaded.router.boundaries == [10, 700]
    assert loaded.expert_for_timestep(700) is loaded.experts[2]
    branched = MixtureOfDenoisingExperts.branch(MixtureOfDenoisingExperts(unet=TINY_UNET), 3, expert_boundaries=[5, 6])
    assert branched.router.stage(1) == (5, 6)


@pytest.mark.parametrize("boundaries, problem", [
    ("cosine", "must be one of ('uniform', 'snr')"),
    ([100], "expected 2 boundaries"),
    ([0, 500], "must be in [1, 999]"),
    ([100, 1000], "must be in [1, 999]"),
    ([500, 500], "strictly increasing"),
    ([600, 500], "strictly increasing"),
    ([1.5, 500], "integer"),
])
def test_bad_boundaries_are_one_line_naming_the_field(boundaries, problem):
    with pytest.raises(ConfigError) as err:
        ModelConfig(num_experts=3, num_train_timesteps=1000, expert_boundaries=boundaries)
    message = str(err.value)
    assert "model.expert_boundaries" in message and problem in message and "\n" not in message


def test_snr_on_too_short_a_schedule_is_refused_naming_the_field():
    cfg = ModelConfig(num_experts=10, num_train_timesteps=12, expert_boundaries="snr")  # no division needed
    with pytest.raises(ConfigError, match="model.expert_boundaries.*too few"):
        cfg.boundaries(build_noise_scheduler(cfg).alphas_cumprod.numpy())


def test_uniform_still_needs_n_to_divide_t():
    with pytest.raises(ConfigError, match="model.num_experts"):
        ModelConfig(num_experts=3)
    ModelConfig(num_experts=3, expert_boundaries="snr")  # the snr rule does not
