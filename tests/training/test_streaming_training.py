"""Training from streamed shards and from a COCO folder: a run stopped after k steps and resumed
from its checkpoint equals an uninterrupted one (stopped mid-shard and between shards, with 0
and 2 data workers); damaged and missing shards; the data wait in VisualDL."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ernie_vilg2.training import runner as runner_mod
from ernie_vilg2.training.config import load_config

from helpers.paths import REPO_ROOT, TINY_YAML, TOOL_ENV
from helpers.shard_data import member_offsets, truncate
from helpers.tiny_coco import write_tiny_coco
from helpers.training_runs import assert_same_weights, crash_after, tiny_overrides, unet_weights

pytestmark = pytest.mark.slow  # every test here trains, samples or exports a tiny model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny built-in data (24 records) as 3 shards of 8, and a trained VAE the runs share."""
    from ernie_vilg2.data.jsonl_index import JsonlIndex
    from ernie_vilg2.data.prepare import prepare_builtin_dataset
    from ernie_vilg2.data.shard_writer import export_shards

    root = tmp_path_factory.mktemp("stream")
    cfg = load_config(TINY_YAML, tiny_overrides(root, **{"train.stages": "[vae]"}))
    folder = prepare_builtin_dataset(cfg.data.builtin, cfg.data.resolution, progress=False)
    counts = export_shards(JsonlIndex(os.path.join(folder, "train.jsonl")), str(root / "shards"), 8)
    assert counts == {"shards": 3, "samples": 24, "skipped": 0}
    runner_mod.run_training(load_config(TINY_YAML, tiny_overrides(root, **{"train.stages": "[vae]",
                                                                           "data.root": str(root / "shards")})))
    return root


def _base_cfg(data, name, **extra):
    """A base-stage run of 6 steps on the shards, checkpointed every step, on the shared VAE."""
    run = data / name / "run"
    if not run.exists():
        run.mkdir(parents=True)
        shutil.copytree(data / "run" / "vae", run / "vae")
    opts = {"train.stages": "[vae, base]", "data.root": str(data / "shards"), "train.base.steps": 6,
            "train.checkpoint_every": 1, **extra}
    return load_config(TINY_YAML, tiny_overrides(data / name, **opts))


def _straight_run(data, workers, buffer):
    """The uninterrupted 6-step run with these data settings (trained once per module)."""
    straight = _base_cfg(data, f"straight-{workers}-{buffer}", **{"data.num_workers": workers,
                                                                  "data.shuffle_buffer": buffer})
    if not (data / f"straight-{workers}-{buffer}" / "run" / "base").exists():
        runner_mod.run_training(straight, resume=True)  # resume: the run folder holds the shared VAE
    return straight


@pytest.mark.multiproc
@pytest.mark.parametrize("workers,buffer,stop", [
    (0, 0, 2),  # one stream, no shuffle buffer: after step 2 it has read exactly its first shard
    (0, 5, 3),  # stopped in the middle of a shard, samples waiting in the shuffle buffer
    (2, 0, 4),  # two workers, two batches of 4 each: both streams at the end of a shard
    (2, 5, 3),  # two workers in the middle of their shards
])
def test_resumed_streaming_run_equals_the_uninterrupted_one(data, monkeypatch, workers, buffer, stop):
    extra = {"data.num_workers": workers, "data.shuffle_buffer": buffer}
    straight = _straight_run(data, workers, buffer)
    cfg = _base_cfg(data, f"resumed-{workers}-{buffer}-{stop}", **extra)
    restore = crash_after(monkeypatch, "base", stop)
    with pytest.raises(KeyboardInterrupt):
        runner_mod.run_training(cfg, resume=True)
    restore()
    assert not (data / f"resumed-{workers}-{buffer}-{stop}" / "run" / "base").exists()
    runner_mod.run_training(cfg, resume=True)
    assert_same_weights(straight.train.output_dir, cfg.train.output_dir)


@pytest.mark.multiproc
def test_other_workers_give_another_order(data):
    """The order depends on data.num_workers, which is why resuming must keep them (the parameters
    of the 0- and 2-worker runs differ, so the test above compares what it should)."""
    zero, two = (unet_weights(_straight_run(data, w, 0).train.output_dir, "base") for w in (0, 2))
    assert any(not np.array_equal(zero[k], two[k]) for k in zero)


@pytest.mark.multiproc
def test_a_truncated_shard_is_skipped_counted_and_named(data, caplog):
    damaged = data / "damaged"
    shutil.copytree(data / "shards", damaged)
    shard = str(damaged / "00001.tar")
    member = next(name for name in member_offsets(shard) if name.endswith(".png"))
    truncate(shard, member_offsets(shard)[member][1] + 3)
    cfg = _base_cfg(data, "damaged-run", **{"data.root": str(damaged), "data.num_workers": 2})
    with caplog.at_level("INFO"):
        runner_mod.run_training(cfg, resume=True)
    named = [r.getMessage() for r in caplog.records if shard in r.getMessage()]
    assert len(named) == 1 and f"{member} is cut short" in named[0]
    summary = [r for r in caplog.records if r.getMessage().startswith("data of stage base: ")]
    assert [(r.levelname, r.getMessage()) for r in summary] == [
        ("WARNING", "data of stage base: 24 samples read (skipped 1 corrupt shard)")]


def test_a_missing_shard_stops_the_run_before_training(data, tmp_path):
    opts = tiny_overrides(tmp_path, **{"data.root": str(data / "shards" / "{00000..00003}.tar")})
    args = [sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"), "--config", TINY_YAML]
    for o in opts:
        args += ["-o", o]
    done = subprocess.run(args, capture_output=True, text=True, env=TOOL_ENV, cwd=str(tmp_path), timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: shard not found: {data / 'shards' / '00003.tar'}"
    assert "Traceback" not in done.stderr and not (tmp_path / "run" / "vae").exists()


@pytest.mark.multiproc
def test_training_from_a_coco_folder_resumes_exactly(tmp_path, monkeypatch):
    """Indexed data through two worker processes (latents encoded each step), and the cache."""
    coco = write_tiny_coco(tmp_path / "coco")
    extra = {"data.root": coco, "data.num_workers": 2, "train.cache_latents": "false", "train.base.steps": 4}
    straight = load_config(TINY_YAML, tiny_overrides(tmp_path / "a", **{"train.stages": "[vae, base]", **extra}))
    runner_mod.run_training(straight)
    cfg = load_config(TINY_YAML, tiny_overrides(tmp_path / "b", **{"train.stages": "[vae, base]", **extra}))
    restore = crash_after(monkeypatch, "base", 2)
    with pytest.raises(KeyboardInterrupt):
        runner_mod.run_training(cfg)
    restore()
    runner_mod.run_training(cfg, resume=True)
    assert_same_weights(straight.train.output_dir, cfg.train.output_dir)
    cached = load_config(TINY_YAML, tiny_overrides(tmp_path / "c", **{**extra, "train.cache_latents": "true",
                                                                      "train.stages": "[vae, base, experts]"}))
    assert runner_mod.run_training(cached).endswith("experts")


def test_the_data_wait_reaches_visualdl_as_a_mean_per_step(tmp_path):
    import paddle

    from ernie_vilg2.training.config import StageConfig
    from ernie_vilg2.training.loop import LoopSettings, Trainer

    class Writer:
        def __init__(self):
            self.scalars = {}

        def add_scalar(self, tag, value, step):
            self.scalars[(tag, step)] = value

    layer = paddle.nn.Linear(3, 1)
    waits = [0.5, 0.1, 0.3, 0.0]

    def step_fn(step, rng):
        return (layer(paddle.ones([2, 3])) ** 2).mean(), {"data_wait_s": waits[step]}

    writer = Writer()
    settings = LoopSettings(stage="unit", stage_index=0, seed=0, checkpoint_dir=str(tmp_path / "ckpt"),
                            checkpoint_every=100, log_every=2)
    Trainer(layer, step_fn, StageConfig(steps=4, lr=0.1), settings, writer=writer).train()
    assert writer.scalars[("unit/data_wait_s", 2)] == pytest.approx(0.3)
    assert writer.scalars[("unit/data_wait_s", 4)] == pytest.approx(0.15)


def test_images_missing_from_json_lines_are_reported_by_the_latent_cache(tmp_path, caplog):
    import json

    from helpers.shard_data import image_bytes

    (tmp_path / "mine").mkdir()
    lines = []
    for i in range(5):
        if i != 2:
            (tmp_path / "mine" / f"{i}.png").write_bytes(image_bytes(i * 40, size=(32, 32)))
        lines.append(json.dumps({"image": f"{i}.png", "caption": f"picture {i}"}))
    (tmp_path / "mine" / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = load_config(TINY_YAML, tiny_overrides(tmp_path, **{"data.root": str(tmp_path / "mine"),
                                                              "train.stages": "[vae, base]", "train.vae.steps": 1,
                                                              "train.base.steps": 1}))
    with caplog.at_level("WARNING"):
        runner_mod.run_training(cfg)
    messages = [r.getMessage() for r in caplog.records]
    missing = str(tmp_path / "mine" / "2.png")
    named = [m for m in messages if missing in m]  # once, although three readers meet it
    assert len(named) == 1 and "train.jsonl:3: missing image" in named[0]
    assert "data of stage vae: 4 samples read (skipped 1 missing image)" in messages
    assert "data of stage base (latent cache): 5 samples read (skipped 1 missing image)" in messages
