"""Training: config errors, loss goes down, exact resume, NaN stop, atomic checkpoints, CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from ernie_vilg2.config import ConfigError
from ernie_vilg2.training import runner as runner_mod
from ernie_vilg2.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ernie_vilg2.training.config import StageConfig, load_config
from ernie_vilg2.training.loop import LoopSettings, Trainer, TrainingDiverged

from helpers.paths import REPO_ROOT as REPO
from helpers.paths import TINY_YAML
from helpers.training_runs import tiny_overrides, unet_weights


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="train.bogus"):
        load_config(TINY_YAML, ["train.bogus=1"])
    with pytest.raises(ConfigError, match="model.num_experts"):
        load_config(TINY_YAML, ["model.num_experts=7"])  # 7 does not divide 1000
    with pytest.raises(ConfigError, match="train.base.lr"):
        load_config(TINY_YAML, ["train.base.lr=-1"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(TINY_YAML, ["train.batch_size=abc"])
    with pytest.raises(ConfigError, match="sample.guidance_scale"):
        load_config(TINY_YAML, ["sample.guidance_scale=-2"])
    with pytest.raises(ConfigError, match="sample.steps"):
        load_config(TINY_YAML, ["sample.steps=0"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("value, message", [
    ("[3, 2]", "must be one number or 10 (one per expert), got 2"),  # configs/tiny.yaml: 10 experts
    ("[]", "must be one number or 10 (one per expert), got 0"),
    ("[3, 3, 3, 3, 3, 3, 3, 3, 3, .nan]", "must be >= 0 and finite, got nan"),
    ("[3, 3, 3, 3, 3, 3, 3, 3, 3, -1]", "must be >= 0 and finite, got -1.0"),
    (".inf", "must be >= 0 and finite, got inf"),
    ("[3, x]", "expected float or List[float], got [3, 'x']"),
])
def test_bad_sample_guidance_scale_is_refused_naming_the_field(value, message):
    with pytest.raises(ConfigError) as refused:
        load_config(TINY_YAML, [f"sample.guidance_scale={value}"])
    assert str(refused.value) == f"config field 'sample.guidance_scale': {message}"


def test_sample_guidance_scale_per_expert_and_for_the_base_stage():
    listed = load_config(TINY_YAML, ["sample.guidance_scale=[3, 3, 3, 3, 3, 2, 2, 2, 2, 1.5]"]).sample
    assert listed.guidance_scale == [3.0] * 5 + [2.0] * 4 + [1.5]
    assert listed.guidance_for(10) == listed.guidance_scale and listed.guidance_for(1) == 3.0  # base: expert 0's
    one = load_config(TINY_YAML, ["sample.guidance_scale=2"]).sample
    assert one.guidance_for(10) == one.guidance_for(1) == 2.0


def test_sample_grids_guide_each_expert_with_its_scale(tmp_path, tiny_pipeline, tiny_mode_pipeline):
    """The experts stage's grid is the pipeline's with the list; the base stage's (one U-Net)
    with its first scale."""
    from PIL import Image

    from ernie_vilg2.utils.images import make_grid

    scales = [3.0, 1.0, 0.5, 2.0]
    cfg = load_config(TINY_YAML, tiny_overrides(tmp_path, **{"model.num_experts": 4,
                                                             "sample.guidance_scale": str(scales)}))
    runner = runner_mod.ExperimentRunner(cfg)
    s = cfg.sample
    for pipe, stage, guidance in ((tiny_mode_pipeline, "experts", scales), (tiny_pipeline, "base", 3.0)):
        path = runner.sample_grid(pipe, stage, 0)
        images = pipe(s.prompts, num_inference_steps=s.steps, guidance_scale=guidance, seed=s.seed).images
        np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(make_grid(images, cols=2)))
    images = tiny_mode_pipeline(s.prompts, num_inference_steps=s.steps, guidance_scale=3.0, seed=s.seed).images
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "run" / "samples" / "experts.png")),
                              np.asarray(make_grid(images, cols=2)))  # the list decides


def _linear_trainer(tmp_path, step_fn, steps=4, every=1):
    paddle.seed(0)
    layer = paddle.nn.Linear(3, 1)
    settings = LoopSettings(stage="unit", stage_index=0, seed=0, checkpoint_dir=str(tmp_path / "ckpt"),
                            checkpoint_every=every, log_every=1)
    return layer, Trainer(layer, lambda step, rng: step_fn(layer, step, rng), StageConfig(steps=steps, lr=0.1), settings)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def step_fn(layer, step, rng):
        loss = layer(paddle.ones([2, 3])).mean() ** 2
        return (loss * float("nan") if step == 2 else loss), {}

    _, trainer = _linear_trainer(tmp_path, step_fn)
    with pytest.raises(TrainingDiverged, match=r"nan at step 2.*step-000002"):
        trainer.train()
    assert latest_checkpoint(str(tmp_path / "ckpt")).endswith("step-000002")


def test_checkpoint_roundtrip_with_optimizer_and_pointer(tmp_path):
    def step_fn(layer, step, rng):
        x = paddle.to_tensor(rng.standard_normal([4, 3]).astype("float32"))
        return (layer(x) ** 2).mean(), {}

    layer, trainer = _linear_trainer(tmp_path, step_fn, steps=3)
    trainer.train()
    ckpt = load_checkpoint(latest_checkpoint(str(tmp_path / "ckpt")))
    assert ckpt["step"] == 3
    np.testing.assert_array_equal(ckpt["model"]["weight"].numpy(), layer.weight.numpy())
    assert any("moment1" in k for k in ckpt["optimizer"])
    # Only the newest `keep` checkpoints remain, no temporary folders.
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["latest", "step-000002", "step-000003"]
    # A crash in the middle of a save leaves the previous checkpoint in place.
    with pytest.raises(AttributeError):
        save_checkpoint(str(tmp_path / "ckpt"), 4, {"w": "not a tensor"}, {})
    assert latest_checkpoint(str(tmp_path / "ckpt")).endswith("step-000003")
    assert not any(d.endswith(".tmp") for d in os.listdir(tmp_path / "ckpt"))


@pytest.mark.slow
def test_loss_decreases_on_a_fixed_batch(tmp_path):
    from ernie_vilg2.models.factory import build_denoiser, build_noise_scheduler, build_text_encoder_from_config
    from ernie_vilg2.text.tokenizer import build_tokenizer, tokenize
    from ernie_vilg2.training.modules import DiffusionTrainingModule

    cfg = load_config(TINY_YAML, tiny_overrides(tmp_path))
    paddle.seed(0)
    tok = build_tokenizer(max_length=cfg.model.text_encoder.max_length)
    module = DiffusionTrainingModule(
        build_text_encoder_from_config(cfg.model, tok), build_denoiser(cfg.model, 32),
        build_noise_scheduler(cfg.model).alphas_cumprod,
    )
    rng = np.random.default_rng(0)
    ids = paddle.to_tensor(tokenize(tok, ["红苹果", "a blue heart", "香蕉", "猫"], 12))
    latents = paddle.to_tensor(rng.standard_normal([4, 4, 8, 8]).astype("float32"))
    noise = paddle.to_tensor(rng.standard_normal([4, 4, 8, 8]).astype("float32"))
    t = paddle.to_tensor([10, 300, 600, 900])
    opt = paddle.optimizer.AdamW(learning_rate=3e-3, parameters=module.parameters())
    losses = []
    for _ in range(15):
        loss = module(ids, latents, noise, t).mean()
        losses.append(float(loss))
        loss.backward()
        opt.step()
        opt.clear_grad()
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    straight = load_config(TINY_YAML, tiny_overrides(tmp_path / "a", **{"train.stages": "[vae, base]"}))
    runner_mod.run_training(straight)

    cfg = load_config(TINY_YAML, tiny_overrides(tmp_path / "b", **{"train.stages": "[vae, base]"}))
    original_save = Trainer.save

    def crash_after_first_base_checkpoint(self):
        path = original_save(self)
        if self.settings.stage == "base" and self.step == 2:
            raise KeyboardInterrupt("simulated crash")
        return path

    monkeypatch.setattr(Trainer, "save", crash_after_first_base_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        runner_mod.run_training(cfg)
    monkeypatch.setattr(Trainer, "save", original_save)
    assert not os.path.exists(os.path.join(cfg.train.output_dir, "base"))
    with pytest.raises(FileExistsError, match="--resume"):
        runner_mod.run_training(cfg)  # never overwrite a run silently
    runner_mod.run_training(cfg, resume=True)

    a = unet_weights(straight.train.output_dir, "base")
    b = unet_weights(cfg.train.output_dir, "base")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.multiproc
@pytest.mark.slow
def test_cli_train_through_launch_then_generate(tmp_path):
    env = {**os.environ, "GLOG_minloglevel": "2"}
    opts = []
    for o in tiny_overrides(tmp_path, **{"train.sample_every": 2}):
        opts += ["-o", o]
    subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "1", "--log_dir",
         str(tmp_path / "launch"), os.path.join(REPO, "tools", "train.py"), "--config", TINY_YAML, *opts],
        check=True, cwd=str(tmp_path), env=env, timeout=600,
    )
    model = tmp_path / "run" / "experts"
    index = json.loads((model / "model_index.json").read_text())
    assert index["unet"][1] == "MixtureOfDenoisingExperts"
    assert (tmp_path / "run" / "samples" / "experts.png").is_file()
    assert (tmp_path / "run" / "samples" / "base-step000002.png").is_file()  # train.sample_every
    assert list((tmp_path / "run" / "vdl").iterdir()), "no VisualDL log written"
    out = tmp_path / "gen" / "grid.png"
    subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "generate.py"), "--model", str(model), "--prompt", "红苹果",
         "--prompt", "a red apple", "--steps", "2", "--seed", "1", "--out", str(out)],
        check=True, env=env, timeout=300,
    )
    from PIL import Image

    assert Image.open(out).size[1] >= 32
    # Unknown config keys fail fast with the field's name and a non-zero exit.
    bad = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train.py"), "--config", TINY_YAML, "-o", "train.nope=1"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert bad.returncode != 0 and "train.nope" in bad.stderr


@pytest.mark.multiproc
@pytest.mark.slow
def test_two_workers_train_the_same_model_as_one(tmp_path):
    """Fleet data parallel (gloo on CPU): each worker takes its rows of the same global batch."""
    import shutil

    one = load_config(TINY_YAML, tiny_overrides(tmp_path / "one", **{"train.stages": "[vae, base]"}))
    runner_mod.run_training(one)
    two_dir = tmp_path / "two" / "run"
    two_dir.mkdir(parents=True)
    shutil.copytree(os.path.join(one.train.output_dir, "vae"), two_dir / "vae")  # same frozen VAE
    opts = []
    for o in tiny_overrides(tmp_path / "two", **{"train.stages": "[vae, base]",
                                                 "data.builtin.out_dir": str(tmp_path / "one" / "data")}):
        opts += ["-o", o]
    env = {**os.environ, "GLOG_minloglevel": "2"}
    subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
         str(tmp_path / "launch"), os.path.join(REPO, "tools", "train.py"), "--config", TINY_YAML, "--resume", *opts],
        check=True, cwd=str(tmp_path), env=env, timeout=600,
    )
    a = unet_weights(one.train.output_dir, "base")
    b = unet_weights(str(two_dir), "base")
    for key in a:  # all-reduce sums in another order: equal up to float rounding
        np.testing.assert_allclose(a[key], b[key], atol=1e-4, err_msg=key)


@pytest.mark.skipif(paddle.device.is_compiled_with_cuda(), reason="CPU build: bf16 is refused")
def test_bf16_refused_on_cpu(tmp_path):
    cfg = load_config(TINY_YAML, tiny_overrides(tmp_path, **{"train.mixed_precision": "bf16"}))
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        runner_mod.run_training(cfg)


def test_ema_is_checkpointed_resumed_and_exported(tmp_path):
    def step_fn(layer, step, rng):
        x = paddle.to_tensor(rng.standard_normal([4, 3]).astype("float32"))
        return ((layer(x) - 1.0) ** 2).mean(), {}

    def make(steps):
        paddle.seed(0)
        layer = paddle.nn.Linear(3, 1)
        settings = LoopSettings(stage="unit", stage_index=0, seed=0, checkpoint_dir=str(tmp_path / "ckpt"),
                                checkpoint_every=2, log_every=1)
        trainer = Trainer(layer, lambda step, rng: step_fn(layer, step, rng),
                          StageConfig(steps=steps, lr=0.1, ema_decay=0.5), settings)
        return layer, trainer

    layer, trainer = make(4)
    trainer.train()
    shadow = {k: v.numpy().copy() for k, v in trainer.ema.state_dict().items()}
    assert not np.allclose(shadow["weight"], layer.weight.numpy())  # EMA lags the raw weights
    ckpt = load_checkpoint(latest_checkpoint(str(tmp_path / "ckpt")))
    np.testing.assert_array_equal(ckpt["ema"]["weight"].numpy(), shadow["weight"])
    # Resuming restores the EMA too: 2 more steps equal a straight 6-step run.
    _, resumed = make(6)
    assert resumed.resume() and resumed.step == 4
    resumed.train()
    straight_dir = tmp_path / "straight"
    paddle.seed(0)
    straight_layer = paddle.nn.Linear(3, 1)
    straight = Trainer(straight_layer, lambda step, rng: step_fn(straight_layer, step, rng),
                       StageConfig(steps=6, lr=0.1, ema_decay=0.5),
                       LoopSettings(stage="unit", stage_index=0, seed=0, checkpoint_dir=str(straight_dir),
                                    checkpoint_every=100, log_every=1))
    straight.train()
    np.testing.assert_allclose(resumed.ema.state_dict()["weight"].numpy(),
                               straight.ema.state_dict()["weight"].numpy(), rtol=1e-6)
    resumed.finalize_weights()  # the exported weights are the EMA weights
    np.testing.assert_array_equal(resumed.module.weight.numpy(), resumed.ema.state_dict()["weight"].numpy())


def test_a_stage_without_its_predecessor_fails_clearly(tmp_path):
    cfg = load_config(TINY_YAML, tiny_overrides(tmp_path, **{"train.stages": "[base]"}))
    with pytest.raises(FileNotFoundError, match=r"stage base needs the finished vae stage"):
        runner_mod.run_training(cfg)


def test_lr_schedule_warms_up_then_holds_or_decays():
    from ernie_vilg2.training.schedule import lr_factor, lr_schedule

    assert [lr_factor(s, 4) for s in (0, 1, 3, 4, 100)] == [0.25, 0.5, 1.0, 1.0, 1.0]  # the diffusion stages
    assert lr_factor(0, 0) == 1.0
    cosine = [lr_factor(s, 4, decay_steps=14) for s in (0, 4, 9, 14, 20)]  # the detector
    assert cosine == pytest.approx([0.25, 1.0, 0.525, 0.05, 0.05])
    schedule = lr_schedule(0.1, 2, decay_steps=4)
    lrs = []
    for _ in range(5):
        lrs.append(schedule.get_lr())
        schedule.step()
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.0525, 0.005])
