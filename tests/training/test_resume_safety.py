"""Resume safety: config changes against the checkpoints' configs, the run-folder lock,
damaged checkpoints with fallback to the newest intact one."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from ernie_vilg2.training import runner as runner_mod
from ernie_vilg2.training.config import load_config
from ernie_vilg2.training.loop import Trainer

from helpers.paths import REPO_ROOT as REPO
from helpers.paths import TINY_YAML, TOOL_ENV
from helpers.training_runs import assert_same_weights, interrupted_run, run_config, run_overrides, train_cli

# ------------------------------------------------------------------------ config changes
def test_config_diff_lists_dotted_fields_and_classifies_them():
    from ernie_vilg2.training.resume import config_changes, is_model_field

    old = {"model": {"unet": {"block_out_channels": [32, 64]}}, "data": {"resolution": 32, "root": None},
           "train": {"output_dir": "a", "base": {"lr": 0.001}}}
    new = {"model": {"unet": {"block_out_channels": [32, 32]}}, "data": {"resolution": 64, "root": None},
           "train": {"output_dir": "b", "base": {"lr": 0.002}}}
    changes = config_changes(old, new)
    assert [str(c) for c in changes] == [  # train.output_dir: where the run is, not how it trains
        "model.unet.block_out_channels: [32, 64] -> [32, 32]",
        "data.resolution: 32 -> 64",
        "train.base.lr: 0.001 -> 0.002",
    ]
    assert [is_model_field(c.field) for c in changes] == [True, True, False]


@pytest.mark.slow
def test_changed_lr_refused_without_flag_then_recorded_with_it(tmp_path, monkeypatch):
    interrupted_run(tmp_path, monkeypatch)
    run = tmp_path / "run"
    original = (run / "config.yaml").read_bytes()
    lr_opts = run_overrides(tmp_path, **{"train.base.lr": 0.002})
    changed = load_config(TINY_YAML, lr_opts)
    with pytest.raises(ValueError) as err:
        runner_mod.run_training(changed, resume=True)
    message = str(err.value)
    assert "train.base.lr: 0.001 -> 0.002" in message and "--allow-config-change" in message and "\n" not in message
    assert not (run / "base").exists() and (run / "config.yaml").read_bytes() == original

    # The CLI says the same in one line and exits 2.
    proc = subprocess.run(train_cli(lr_opts, "--resume"), capture_output=True, text=True, env=TOOL_ENV, timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "train.base.lr: 0.001 -> 0.002" in last and "Traceback" not in proc.stderr

    runner_mod.run_training(changed, resume=True, allow_config_change=True)
    assert (run / "base" / "model_index.json").is_file()
    assert (run / "config.yaml").read_bytes() == original  # the original run config is never rewritten
    records = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["changes"] == [{"field": "train.base.lr", "from": 0.001, "to": 0.002}]
    assert records[0]["resumed_from"].endswith(os.path.join("checkpoints", "base", "step-000002"))
    # Each checkpoint keeps the config it was made with.
    ckpts = run / "checkpoints" / "base"
    assert yaml.safe_load((ckpts / "step-000002" / "config.yaml").read_text())["train"]["base"]["lr"] == 0.001
    assert yaml.safe_load((ckpts / "step-000004" / "config.yaml").read_text())["train"]["base"]["lr"] == 0.002


@pytest.mark.slow
def test_model_size_change_is_refused_listing_the_fields(tmp_path, monkeypatch):
    interrupted_run(tmp_path, monkeypatch)
    changed = run_config(tmp_path, **{"model.unet.block_out_channels": "[16, 16]", "model.text_encoder.hidden_size": 32,
                                "train.base.lr": 0.002})
    for allow in (False, True):  # a shape change is never accepted
        with pytest.raises(ValueError) as err:
            runner_mod.run_training(changed, resume=True, allow_config_change=allow)
        message = str(err.value)
        assert "model.unet.block_out_channels: [16, 32] -> [16, 16]" in message, message
        assert "model.text_encoder.hidden_size: 16 -> 32" in message and "train.base.lr" not in message
        assert "\n" not in message
    assert not (tmp_path / "run" / "base").exists()


@pytest.mark.slow
def test_raised_steps_of_a_finished_stage(tmp_path):
    runner_mod.run_training(run_config(tmp_path))  # vae 2 steps, base 4 steps: both finished
    longer = run_config(tmp_path, **{"train.base.steps": 6})
    with pytest.raises(ValueError) as err:  # never skipped silently
        runner_mod.run_training(longer, resume=True)
    message = str(err.value)
    assert "train.base.steps: 4 -> 6" in message and "stage base is finished" in message, message
    # With the flag the finished stage continues from its last checkpoint (as PaddleNLP's
    # Trainer does with a raised max_steps) and equals a run made with 6 steps at once.
    runner_mod.run_training(longer, resume=True, allow_config_change=True)
    straight = run_config(tmp_path, "straight", **{"train.base.steps": 6})
    runner_mod.run_training(straight)
    assert_same_weights(straight.train.output_dir, longer.train.output_dir)
    assert os.path.isdir(os.path.join(longer.train.output_dir, "checkpoints", "base", "step-000006"))
    # A finished stage that a later stage was trained on cannot be extended.
    with pytest.raises(ValueError, match=r"train.vae.steps: 2 -> 3.*stage base was trained on it"):
        runner_mod.run_training(run_config(tmp_path, **{"train.base.steps": 6, "train.vae.steps": 3}),
                                resume=True, allow_config_change=True)


# ------------------------------------------------------------------------ damaged checkpoints
@pytest.mark.slow
def test_truncated_latest_checkpoint_falls_back_to_the_intact_one(tmp_path, monkeypatch, caplog):
    straight = run_config(tmp_path, "straight")
    runner_mod.run_training(straight)
    cfg = interrupted_run(tmp_path, monkeypatch, step=3, **{"train.checkpoint_every": 1})
    ckpts = tmp_path / "run" / "checkpoints" / "base"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step-")) == ["step-000002", "step-000003"]
    shutil.copytree(tmp_path / "run", tmp_path / "all-damaged")
    weights = ckpts / "step-000003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    with caplog.at_level("WARNING"):
        runner_mod.run_training(cfg, resume=True)
    warning = next(r.getMessage() for r in caplog.records if "damaged" in r.getMessage())
    assert str(ckpts / "step-000003") in warning and "step-000002" in warning
    assert_same_weights(straight.train.output_dir, cfg.train.output_dir)  # identical continuation
    kept = [p.name for p in ckpts.iterdir() if "damaged" in p.name]
    assert kept == ["step-000003.damaged"]  # set aside, never deleted

    # No intact checkpoint at all: one line naming them, nothing trained.
    other = tmp_path / "all-damaged" / "checkpoints" / "base"
    weights = other / "step-000003" / "model.safetensors"
    weights.write_bytes(b"")
    flipped = bytearray((other / "step-000002" / "optimizer.safetensors").read_bytes())
    flipped[-1] ^= 1  # same size: only the checksum written with it notices
    (other / "step-000002" / "optimizer.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(ValueError) as err:
        runner_mod.run_training(run_config(tmp_path, "all-damaged", **{"train.checkpoint_every": 1}), resume=True)
    message = str(err.value)
    assert "no intact checkpoint" in message and "\n" not in message
    assert "step-000003" in message and "step-000002" in message and "SHA-256" in message
    assert not (tmp_path / "all-damaged" / "base").exists()


def test_damaged_stage_output_is_named(tmp_path):
    cfg = run_config(tmp_path, **{"train.stages": "[vae]"})
    runner_mod.run_training(cfg)
    weights = tmp_path / "run" / "vae" / "diffusion_paddle_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError) as err:
        runner_mod.run_training(run_config(tmp_path), resume=True)
    assert str(err.value).startswith(str(weights)) and "truncated" in str(err.value)


def test_prune_keeps_the_fallback_and_never_a_damaged_newer_one_instead(tmp_path):
    import paddle

    from ernie_vilg2.training.checkpoint import save_checkpoint

    folder, weights = str(tmp_path), {"w": paddle.ones([4])}
    for step in (2, 5):
        save_checkpoint(folder, step, weights, {})
    (tmp_path / "step-000005" / "model.safetensors").write_bytes(b"")  # damaged, newer than what follows
    save_checkpoint(folder, 3, weights, {}, keep=1)  # e.g. a run resumed from step 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000003", "step-000005"]
    from ernie_vilg2.training.checkpoint import find_resume_checkpoint

    path, damaged = find_resume_checkpoint(folder)
    assert path.endswith("step-000003") and [p for p, _ in damaged] == [str(tmp_path / "step-000005")]


def _unit_trainer(tmp_path, **stage):
    import paddle

    from ernie_vilg2.training.config import StageConfig
    from ernie_vilg2.training.loop import LoopSettings

    paddle.seed(0)
    layer = paddle.nn.Linear(3, 1)

    def step_fn(step, rng):
        x = paddle.to_tensor(rng.standard_normal([4, 3]).astype("float32"))
        return ((layer(x) - 1.0) ** 2).mean(), {}

    settings = LoopSettings(stage="unit", stage_index=0, seed=0, checkpoint_dir=str(tmp_path / "ckpt"),
                            checkpoint_every=2, log_every=1)
    return layer, Trainer(layer, step_fn, StageConfig(**{"steps": 4, "lr": 0.1, **stage}), settings)


def test_training_settings_changed_on_resume_take_effect_at_once(tmp_path, caplog):
    _, trainer = _unit_trainer(tmp_path)
    trainer.train()
    # A new lr applies from the first resumed step (not the checkpoint's schedule value).
    _, resumed = _unit_trainer(tmp_path, steps=6, lr=0.2)
    assert resumed.resume() and resumed.step == 4
    assert resumed.schedule() == pytest.approx(0.2)
    # EMA switched on: it starts from the resumed weights instead of failing on the checkpoint.
    layer, resumed = _unit_trainer(tmp_path, steps=6, ema_decay=0.5)
    with caplog.at_level("WARNING"):
        assert resumed.resume()
    assert any("no EMA state" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(resumed.ema.state_dict()["weight"].numpy(), layer.weight.numpy())
    resumed.train()


# ------------------------------------------------------------------------ the run-folder lock
HOLD_LOCK = """
import sys
from ernie_vilg2.training.run_folder import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_second_trainer_is_refused_and_a_stale_lock_is_taken_over(tmp_path, caplog):
    from ernie_vilg2.training.run_folder import RunLock

    cfg = run_config(tmp_path, **{"train.stages": "[vae]", "train.vae.steps": 1})
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, cfg.train.output_dir], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=TOOL_ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError) as err:
            runner_mod.run_training(cfg)
        message = str(err.value)
        assert cfg.train.output_dir in message and f"pid {holder.pid}" in message and "\n" not in message
    finally:
        holder.kill()  # SIGKILL: no clean-up, the lock file still names it
        holder.wait(timeout=30)
    with caplog.at_level("WARNING"):
        runner_mod.run_training(cfg)
    warning = next(r.getMessage() for r in caplog.records if "stale" in r.getMessage())
    assert f"pid {holder.pid}" in warning and cfg.train.output_dir in warning
    caplog.clear()
    with caplog.at_level("WARNING"):
        RunLock(cfg.train.output_dir).acquire().release()  # released cleanly by the run
    assert not [r for r in caplog.records if "stale" in r.getMessage()]


@pytest.mark.slow
def test_sigterm_releases_the_lock(tmp_path):
    opts = run_overrides(tmp_path, **{"train.stages": "[vae]", "train.vae.steps": 100000})
    log = tmp_path / "train.log"  # a file, not a pipe: the progress bar never blocks the trainer
    with open(log, "w") as out:
        proc = subprocess.Popen(train_cli(opts), stdout=out, stderr=subprocess.STDOUT, text=True, env=TOOL_ENV)
    lock = tmp_path / "run" / ".lock"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if lock.is_file() and f'"pid": {proc.pid}' in lock.read_text():
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the trainer never took the lock:\n{log.read_text()}")
        while time.time() < deadline and proc.poll() is None and "train[vae]" not in log.read_text():
            time.sleep(0.2)  # until the progress bar shows the training loop has started
        assert "train[vae]" in log.read_text(), f"the trainer never started its loop:\n{log.read_text()}"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in output, output
    assert "stopped by SIGTERM" in output
    assert lock.read_text() == ""  # released: the next trainer sees no stale lock


def test_train_cli_names_an_unusable_dataset_in_one_line(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_tool", os.path.join(REPO, "tools", "train.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    table = tmp_path / "prompts.csv"
    table.write_text("Prompt,文本\nA red car.,一辆红色的汽车。\n", encoding="utf-8")
    args = ["--config", TINY_YAML]
    for o in run_overrides(tmp_path, **{"data.root": str(table)}):
        args += ["-o", o]
    assert tool.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {table}: expected a JSON Lines dataset"), err
