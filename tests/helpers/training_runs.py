"""Tiny training runs: configs/tiny.yaml shrunk to seconds, runs that crash at a chosen step,
their weights compared, the training CLI's command line."""
import os
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from ernie_vilg2.training import runner as runner_mod
from ernie_vilg2.training.config import load_config
from ernie_vilg2.training.loop import Trainer

from helpers.paths import REPO_ROOT, TINY_YAML

def tiny_overrides(tmp_path, **extra):
    """configs/tiny.yaml shrunk to a few hundred thousand parameters and a few steps."""
    opts = {
        "train.output_dir": str(tmp_path / "run"),
        "data.builtin.out_dir": str(tmp_path / "data"),
        "data.builtin.num_scenes": 6,
        "data.builtin.num_val_scenes": 2,
        "data.builtin.max_emoji": 6,
        "model.num_experts": 2,
        "model.text_encoder.hidden_size": 16,
        "model.text_encoder.intermediate_size": 32,
        "model.text_encoder.num_hidden_layers": 1,
        "model.text_encoder.max_length": 12,
        "model.unet.block_out_channels": "[16, 32]",
        "model.vae.block_out_channels": "[8, 16, 16]",
        "train.batch_size": 4,
        "train.vae.steps": 2,
        "train.base.steps": 4,
        "train.experts.steps": 2,
        "train.checkpoint_every": 2,
        "train.log_every": 1,
        "sample.steps": 2,
        "sample.prompts": "[红苹果, a blue heart]",
        "textual_knowledge.enabled": "false",  # knowledge has its own tests (test_knowledge_wiring)
        "visual_knowledge.enabled": "false",
    }
    opts.update(extra)
    return [f"{k}={v}" for k, v in opts.items()]


def unet_weights(run_dir, stage):
    path = os.path.join(run_dir, stage, "unet", "diffusion_paddle_model.safetensors")
    return load_file(path)


def run_overrides(tmp_path, name="run", **extra):
    """Overrides of a tiny [vae, base] run in tmp_path/name; all runs of a test share one dataset."""
    extra = {"train.stages": "[vae, base]", "data.builtin.out_dir": str(tmp_path / "data"),
             **extra, "train.output_dir": str(tmp_path / name)}
    return tiny_overrides(tmp_path, **extra)


def run_config(tmp_path, name="run", **extra):
    return load_config(TINY_YAML, run_overrides(tmp_path, name, **extra))


def crash_after(monkeypatch, stage, step):
    """Make the next run die (KeyboardInterrupt) right after saving ``stage``'s step ``step``."""
    original = Trainer.save

    def save(self):
        path = original(self)
        if self.settings.stage == stage and self.step == step:
            raise KeyboardInterrupt("simulated crash")
        return path

    monkeypatch.setattr(Trainer, "save", save)
    return lambda: monkeypatch.setattr(Trainer, "save", original)


def interrupted_run(tmp_path, monkeypatch, step=2, **extra):
    cfg = run_config(tmp_path, **extra)
    restore = crash_after(monkeypatch, "base", step)
    with pytest.raises(KeyboardInterrupt):
        runner_mod.run_training(cfg)
    restore()
    return cfg


def assert_same_weights(a_dir, b_dir, stage="base"):
    a, b = unet_weights(a_dir, stage), unet_weights(b_dir, stage)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def train_cli(opts, *flags):
    args = [sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"), "--config", TINY_YAML, *flags]
    for o in opts:
        args += ["-o", o]
    return args
