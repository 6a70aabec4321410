"""Stage 2 with model.expert_boundaries: the saved bank switches where the config says, and each
expert's timesteps come from its own range."""
import json

import numpy as np
import pytest

from ernie_vilg2.config import ConfigError
from ernie_vilg2.models.factory import build_noise_scheduler
from ernie_vilg2.models.routing import snr_boundaries
from ernie_vilg2.training import runner as runner_mod
from ernie_vilg2.training.config import load_config

from helpers.paths import TINY_YAML
from helpers.training_runs import tiny_overrides


def test_config_takes_a_rule_or_timesteps_and_names_the_field_when_wrong():
    assert load_config(TINY_YAML, ["model.expert_boundaries=snr"]).model.expert_boundaries == "snr"
    cfg = load_config(TINY_YAML, ["model.num_experts=3", "model.expert_boundaries=[10, 700]"])
    assert cfg.model.boundaries() == [10, 700]
    with pytest.raises(ConfigError, match=r"model.expert_boundaries.*expected 9 boundaries"):
        load_config(TINY_YAML, ["model.expert_boundaries=[10, 700]"])
    with pytest.raises(ConfigError, match=r"model.expert_boundaries.*must be one of"):
        load_config(TINY_YAML, ["model.expert_boundaries=cosine"])


@pytest.mark.slow
def test_stage_two_follows_snr_boundaries(tmp_path, monkeypatch):
    samplers = []

    class Recording(runner_mod.TimestepSampler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.drawn = []
            samplers.append(self)

        def sample(self, n, rng):
            t = super().sample(n, rng)
            self.drawn.append(t)
            return t

    monkeypatch.setattr(runner_mod, "TimestepSampler", Recording)
    cfg = load_config(TINY_YAML, tiny_overrides(tmp_path, **{"model.expert_boundaries": "snr",
                                                               "train.expert_ids": "[1]"}))
    runner_mod.run_training(cfg)
    expected = snr_boundaries(build_noise_scheduler(cfg.model).alphas_cumprod.numpy(), 2)
    with open(tmp_path / "run" / "experts" / "unet" / "config.json", encoding="utf-8") as f:
        assert json.load(f)["expert_boundaries"] == expected
    stage2 = np.concatenate(samplers[-1].drawn)
    assert len(stage2) >= 8 and (stage2 >= expected[0]).all() and (stage2 < 1000).all()  # expert 1's range only
