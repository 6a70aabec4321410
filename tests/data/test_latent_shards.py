"""Latent shards (tools/encode_latents.py): a data set encoded once by a run's frozen VAE and
streamed by training instead of its images. The latents are the VAE's posterior of the images
as training prepares them; a run from them trains the samples of a run from the images in the
same order (parameters equal within float rounding: the image run encodes with the project's
faster CPU convolutions) without decoding an image or running the VAE, and resumes exactly;
latents of another VAE or resolution are refused (exit 2, one line naming the field); damaged
latent members are skipped and counted; an interrupted encoding continues."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from ernie_vilg2.data.config import DataConfig
from ernie_vilg2.data.jsonl import DatasetError
from ernie_vilg2.data.problems import UNDECODABLE_IMAGE, UNDECODABLE_LATENT
from ernie_vilg2.training import runner as runner_mod
from ernie_vilg2.training.config import load_config

from helpers.paths import REPO_ROOT, TINY_YAML, TOOL_ENV
from helpers.shard_data import image_bytes, member_offsets, write_shards, write_sidecar, write_tar
from helpers.training_runs import assert_same_weights, crash_after, tiny_overrides, unet_weights

pytestmark = pytest.mark.slow  # every test here encodes with, or trains, a tiny model

TIMEOUT = 300


def _cli(script, opts, *flags, cwd):
    args = [sys.executable, os.path.join(REPO_ROOT, "tools", script), "--config", TINY_YAML, *flags]
    for o in opts:
        args += ["-o", o]
    return subprocess.run(args, capture_output=True, text=True, env=TOOL_ENV, cwd=str(cwd), timeout=TIMEOUT)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny built-in data (24 records) as 3 image shards of 8, a VAE trained on them, and the
    shards encoded with it by tools/encode_latents.py into latents/."""
    from ernie_vilg2.data.jsonl_index import JsonlIndex
    from ernie_vilg2.data.prepare import prepare_builtin_dataset
    from ernie_vilg2.data.shard_writer import export_shards

    root = tmp_path_factory.mktemp("latents")
    cfg = load_config(TINY_YAML, tiny_overrides(root, **{"train.stages": "[vae]"}))
    folder = prepare_builtin_dataset(cfg.data.builtin, cfg.data.resolution, progress=False)
    export_shards(JsonlIndex(os.path.join(folder, "train.jsonl")), str(root / "shards"), 8,
                  extra_files=[os.path.join(folder, "labels.json")])
    runner_mod.run_training(load_config(TINY_YAML, tiny_overrides(root, **{"train.stages": "[vae]",
                                                                           "data.root": str(root / "shards")})))
    done = _cli("encode_latents.py", tiny_overrides(root, **{"data.root": str(root / "shards")}),
                "--vae", str(root / "run"), "--out", str(root / "latents"), "--batch-size", "5", "--no-progress",
                cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{root / 'latents'}: 3 shards (3 written now), 24 samples, float32 latents")
    return root


def _latent_members(shard):
    """[(key, latent array, .json dict, caption)] of a latent shard, read with tarfile."""
    with tarfile.open(shard) as tar:
        data = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = list(dict.fromkeys(name.split(".")[0] for name in data))
    return [(k, np.load(io.BytesIO(data[f"{k}.latent.npy"])), json.loads(data[f"{k}.json"]),
             data[f"{k}.txt"].decode()) for k in keys]


def test_the_latents_are_the_vaes_posterior_of_the_images_as_training_prepares_them(data):
    from ppdiffusers import AutoencoderKL

    from ernie_vilg2.data.latent_shards import vae_fingerprint
    from ernie_vilg2.data.samples import batch_pixel_values, decode_sample
    from ernie_vilg2.data.shards import iter_shard
    from ernie_vilg2.training.batches import encode_images

    vae = AutoencoderKL.from_pretrained(str(data / "run" / "vae"))
    vae.eval()
    for name in ("00000.tar", "00001.tar", "00002.tar"):
        samples = [decode_sample(r, 32) for r in iter_shard(str(data / "shards" / name))]
        mean, std = encode_images(vae, batch_pixel_values(np.stack([s["pixels"] for s in samples])), batch_size=3)
        stored = _latent_members(data / "latents" / name)
        assert [k for k, *_ in stored] == [s["key"] for s in samples]
        for (key, latent, meta, caption), sample, m, s in zip(stored, samples, mean, std):
            assert latent.dtype == np.float32 and latent.shape == (2, 4, 8, 8)
            np.testing.assert_array_equal(latent[0], m, err_msg=key)
            np.testing.assert_array_equal(latent[1], s, err_msg=key)
            assert caption == sample["caption"] and meta["lang"] == sample["lang"]
            np.testing.assert_array_equal(np.asarray(meta["boxes"], np.float32).reshape(-1, 4), sample["boxes"])
            assert meta["labels"] == sample["labels"]
    manifest = json.loads((data / "latents" / "latents.json").read_text())
    assert manifest["complete"] and manifest["samples"] == 24 and manifest["skipped"] == {}
    assert manifest["vae_sha256"] == vae_fingerprint(vae.state_dict())
    assert manifest["scaling_factor"] == vae.config.scaling_factor
    assert manifest["resolution"] == 32 and manifest["image_fit"] == "center_crop"
    assert manifest["latent_shape"] == [2, 4, 8, 8] and manifest["dtype"] == "float32"
    assert (data / "latents" / "labels.json").read_bytes() == (data / "shards" / "labels.json").read_bytes()


def _base_cfg(data, name, root, **extra):
    """A base-stage run of 6 steps on ``root``, checkpointed every step, on the shared VAE."""
    run = data / name / "run"
    if not run.exists():
        run.mkdir(parents=True)
        shutil.copytree(data / "run" / "vae", run / "vae")
    opts = {"train.stages": "[vae, base]", "data.root": str(root), "train.base.steps": 6,
            "train.checkpoint_every": 1, "data.num_workers": 2, "data.shuffle_buffer": 5, **extra}
    return load_config(TINY_YAML, tiny_overrides(data / name, **opts))


def _record_steps(monkeypatch):
    """The keys of each step's batch, as the training process receives them."""
    from ernie_vilg2.training.data_feed import StageBatches

    steps, original = [], StageBatches.get_batch

    def get_batch(self, step):
        batch, wait = original(self, step)
        steps.append([m["key"] for m in batch.metas])
        return batch, wait

    monkeypatch.setattr(StageBatches, "get_batch", get_batch)
    return steps


def _not_called(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} was called while training from latent shards")
    return fail


@pytest.mark.multiproc
def test_training_from_latent_shards_trains_what_training_from_the_images_does(data, monkeypatch):
    images = _base_cfg(data, "from-images", data / "shards")
    image_steps = _record_steps(monkeypatch)
    runner_mod.run_training(images, resume=True)  # resume: the run folder holds the shared VAE
    monkeypatch.undo()
    latent_steps = _record_steps(monkeypatch)
    # Forked data workers inherit these: no image is decoded and the VAE encodes nothing.
    monkeypatch.setattr("ernie_vilg2.data.batch_plans.decode_sample", _not_called("decode_sample"))
    monkeypatch.setattr("ernie_vilg2.training.batches.encode_images", _not_called("encode_images"))
    latents = _base_cfg(data, "from-latents", data / "latents")
    runner_mod.run_training(latents, resume=True)
    assert latent_steps == image_steps and len(image_steps) == 6
    a, b = unet_weights(images.train.output_dir, "base"), unet_weights(latents.train.output_dir, "base")
    assert a.keys() == b.keys()
    for key in a:  # a batch of other samples moves a parameter by far more than this
        assert np.abs(a[key] - b[key]).max() <= 1e-4 * np.abs(a[key]).max(), key


@pytest.mark.multiproc
def test_a_resumed_run_from_latent_shards_equals_the_uninterrupted_one(data, monkeypatch):
    straight = _base_cfg(data, "from-latents", data / "latents")
    if not (data / "from-latents" / "run" / "base").exists():
        runner_mod.run_training(straight, resume=True)
    cfg = _base_cfg(data, "from-latents-resumed", data / "latents")
    restore = crash_after(monkeypatch, "base", 3)  # both workers in the middle of their first shards
    with pytest.raises(KeyboardInterrupt):
        runner_mod.run_training(cfg, resume=True)
    restore()
    runner_mod.run_training(cfg, resume=True)
    assert_same_weights(straight.train.output_dir, cfg.train.output_dir)


def _perturbed_vae(src, dst):
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    weights = next(p for p in os.listdir(dst) if p.endswith(".safetensors"))
    tensors = load_file(os.path.join(dst, weights))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + np.float32(1e-3)
    save_file(tensors, os.path.join(dst, weights))


@pytest.mark.parametrize("mismatch", ["vae", "resolution"])
def test_latents_of_another_vae_or_resolution_are_refused_naming_the_field(data, tmp_path, mismatch):
    if mismatch == "vae":
        _perturbed_vae(data / "run" / "vae", tmp_path / "run" / "vae")
        opts, field = {}, "vae_sha256"
    else:
        shutil.copytree(data / "run" / "vae", tmp_path / "run" / "vae")
        opts, field = {"data.resolution": 64}, "data.resolution"
    done = _cli("train.py", tiny_overrides(tmp_path, **{"data.root": str(data / "latents"), **opts}), "--resume",
                cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {field}: the latent shards ({data / 'latents' / 'latents.json'})"), last
    assert "Traceback" not in done.stderr and not (tmp_path / "run" / "checkpoints" / "base").exists()


def test_the_vae_stage_refuses_latent_shards(data, tmp_path):
    cfg = load_config(TINY_YAML, tiny_overrides(tmp_path, **{"data.root": str(data / "latents")}))
    with pytest.raises(ValueError, match=r"config field 'data.root': .* holds latent shards, and the vae stage"):
        runner_mod.run_training(cfg)


def _overwrite(shard, member, data: bytes, at: int = 0):
    offset, size = member_offsets(shard)[member][1:]
    assert at + len(data) <= size
    with open(shard, "r+b") as f:
        f.seek(offset + at)
        f.write(data)


def test_a_damaged_latent_member_is_skipped_and_counted(data, caplog):
    damaged = data / "damaged-latents"
    shutil.copytree(data / "latents", damaged)
    shard = str(damaged / "00001.tar")
    members = [name for name in member_offsets(shard) if name.endswith(".latent.npy")]
    _overwrite(shard, members[0], b"garbage!")  # not a NumPy header: skipped where the shard is read
    header = member_offsets(shard)[members[1]][2] - 2 * 4 * 8 * 8 * 4
    _overwrite(shard, members[1], np.full(4, np.nan, np.float32).tobytes(), at=header)  # replaced in its batch
    cfg = _base_cfg(data, "damaged-run", damaged, **{"data.num_workers": 0})
    with caplog.at_level("INFO"):
        runner_mod.run_training(cfg, resume=True)
    for member, why in ((members[0], "not a NumPy array"), (members[1], "not finite")):
        named = [r.getMessage() for r in caplog.records if f"{shard}: {member}" in r.getMessage()]
        assert len(named) == 1 and named[0].startswith(UNDECODABLE_LATENT) and why in named[0], named
    summary = [r for r in caplog.records if r.getMessage().startswith("data of stage base: ")]
    assert [(r.levelname, r.getMessage()) for r in summary] == [
        ("WARNING", "data of stage base: 24 samples read (skipped 2 undecodable latents)")]


# -- the encoder, with a stand-in for the VAE ---------------------------------------------------------
def _fake_encode(calls=None, stop_at=None):
    """Mean: the image's pixels every 8th row and column, /255 ([B, 3, R/8, R/8]); std 0.5."""
    def encode(pixels):
        if calls is not None:
            calls.append(len(pixels))
            if stop_at is not None and len(calls) == stop_at:
                raise KeyboardInterrupt("simulated crash")
        mean = pixels.astype(np.float32).transpose(0, 3, 1, 2)[:, :, ::8, ::8] / 255
        return mean, np.full_like(mean, 0.5)
    return encode


def _spec(resolution=32, dtype="float32", **extra):
    from ernie_vilg2.data.latent_shards import LatentSpec

    side = resolution // 8
    values = dict(vae_sha256="ab" * 32, scaling_factor=0.5, resolution=resolution, image_fit="center_crop",
                  caption_field=None, languages=["zh", "en"], latent_shape=[2, 3, side, side], dtype=dtype)
    return LatentSpec(**{**values, **extra})


def _encode(root, out, calls=None, stop_at=None, **spec):
    from ernie_vilg2.data.latent_encoding import encode_latent_shards
    from ernie_vilg2.data.sources import open_source

    resolution = spec.get("resolution", 32)
    source = open_source(DataConfig(root=str(root), resolution=resolution))
    return encode_latent_shards(source, str(out), _spec(**spec), _fake_encode(calls, stop_at), "vae", batch_size=4,
                                shard_size=10)


def test_an_interrupted_encoding_continues_where_it_stopped(data, tmp_path):
    from ernie_vilg2.data.sources import open_source

    train = data / "data" / "train.jsonl"  # 24 records: shards of 10, 10 and 4, batches of 4
    straight = _encode(train, tmp_path / "straight")
    assert straight["samples"] == 24 and list(straight["shards"].values()) == [10, 10, 4]
    calls = []
    with pytest.raises(KeyboardInterrupt):
        _encode(train, tmp_path / "out", calls, stop_at=5)  # in the second shard
    assert sorted(os.listdir(tmp_path / "out")) == ["00000.tar", "00000_stats.json", "latents.json"]
    with pytest.raises(DatasetError, match="the encoding of these latents did not finish"):
        open_source(DataConfig(root=str(tmp_path / "out")))
    calls.clear()
    again = _encode(train, tmp_path / "out", calls)
    assert again["written"] == 2 and calls == [4, 4, 2, 4]  # the first shard is not encoded again
    for name in ("00000.tar", "00001.tar", "00002.tar"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    assert _encode(train, tmp_path / "out", calls)["written"] == 0 and len(calls) == 4
    with pytest.raises(DatasetError, match=r"--out .* holds latents of another encoding \(resolution: 32 there, "
                                           r"16 now\)"):
        _encode(train, tmp_path / "out", resolution=16)


def test_a_shard_source_keeps_its_shards_order_skips_bad_images_and_maps_knowledge(tmp_path):
    from ernie_vilg2.data.batch_plans import make_plan
    from ernie_vilg2.data.loader import BatchLoader
    from ernie_vilg2.data.samples import decode_sample
    from ernie_vilg2.data.shards import iter_shard
    from ernie_vilg2.data.sources import LatentShardSet, open_source

    noise = io.BytesIO()  # mostly scan data: the header survives the cut
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(noise, "JPEG")
    jpeg = noise.getvalue()
    shards = tmp_path / "shards"
    write_shards(shards, 8, shard_size=4)
    write_tar(shards / "00002.tar", [("w.png", image_bytes(5, size=(80, 40))), ("w.txt", b"a wide one"),
                                     ("cut.jpg", jpeg[:len(jpeg) * 3 // 4]), ("cut.txt", b"cut body")])
    objects = [{"box": [40, 0, 80, 40], "label": "right"}, {"box": [0, 0, 8, 8], "label": "cut away"}]
    write_sidecar(shards / "00002.tar", [{"key": "w", "caption": "a wide one", "keywords": [], "objects": objects}])
    for dtype in ("float32", "float16"):
        out = tmp_path / dtype
        manifest = _encode(shards, out, dtype=dtype)
        assert manifest["shards"] == {"00000.tar": 4, "00001.tar": 4, "00002.tar": 1}
        assert manifest["skipped"] == {UNDECODABLE_IMAGE: 1}
        for name in manifest["shards"]:
            valid = [r["key"] for r in iter_shard(str(shards / name))]
            assert [k for k, *_ in _latent_members(out / name)] == [k for k in valid if k != "cut"]
        source = open_source(DataConfig(root=str(out / "{00000..00002}.tar")))  # a pattern: latents too
        assert isinstance(source, LatentShardSet)
        plan = make_plan(source, seed=0, rank=0, world=1, batch_size=9, shuffle_buffer=0, knowledge=True)
        batch = BatchLoader(plan, 0, 0).get()
        wide = decode_sample({"key": "w", "image": image_bytes(5, size=(80, 40)), "caption": "a wide one",
                              "knowledge": {"key": "w", "caption": "a wide one", "objects": objects}}, 32)
        row = [m["key"] for m in batch.metas].index("w")
        assert batch.metas[row]["knowledge"]["objects"] == wide["knowledge"]["objects"] == [
            {"box": [16.0, 0.0, 32.0, 32.0], "label": "right"}]
        mean, _ = _fake_encode()(wide["pixels"][None])
        assert batch.latents.dtype == np.float32
        np.testing.assert_allclose(batch.latents[row, 0], mean[0], rtol=1e-3 if dtype == "float16" else 0)
        np.testing.assert_array_equal(batch.latents[row, 1], 0.5)


def test_the_run_settings_must_be_those_of_the_encoding(tmp_path):
    from ernie_vilg2.data.sources import open_source

    write_shards(tmp_path / "shards", 4, shard_size=4)
    _encode(tmp_path / "shards", tmp_path / "latents")
    for setting, value in (("image_fit", "squash"), ("caption_field", "caption"), ("resolution", 64)):
        with pytest.raises(DatasetError, match=rf"^data.{setting}: the latent shards \("):
            open_source(DataConfig(root=str(tmp_path / "latents"), **{setting: value}))
    zh_only = tmp_path / "zh-latents"
    from ernie_vilg2.data.latent_encoding import encode_latent_shards

    source = open_source(DataConfig(root=str(tmp_path / "shards"), languages=["zh"]))
    encode_latent_shards(source, str(zh_only), _spec(languages=["zh"]), _fake_encode(), "vae")
    with pytest.raises(DatasetError, match=r"^data.languages: .* hold the languages \['zh'\] only"):
        open_source(DataConfig(root=str(zh_only)))
    zh = open_source(DataConfig(root=str(zh_only), languages=["zh"], format="latents"))
    assert zh.latent_spec.languages == ["zh"]
