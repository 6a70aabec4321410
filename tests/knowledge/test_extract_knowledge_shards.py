"""tools/extract_knowledge.py over webdataset shards (ernie_vilg2/knowledge/shard_extraction.py,
shard_workers.py): a sidecar per shard that the loader joins, the same with 1 and 2 worker
processes, resumable per shard, damaged shards counted, a missing shard refused before any work."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ernie_vilg2.data.batch_plans import ShardPlan
from ernie_vilg2.data.loader import BatchLoader
from ernie_vilg2.data.problems import UNDECODABLE_IMAGE
from ernie_vilg2.data.shards import iter_shard, list_shards, read_sidecar, sidecar_path
from ernie_vilg2.data.sources import ShardSet
from ernie_vilg2.knowledge.shard_extraction import ExtractionOptions, ShardAnnotator, partial_path
from ernie_vilg2.knowledge.textual.inputs import _words_from_analysis

from helpers.paths import REPO_ROOT
from helpers.shard_data import image_bytes, member_offsets, truncate, write_shards, write_tar

TOOL = os.path.join(REPO_ROOT, "tools", "extract_knowledge.py")


def _run_tool(*args):
    env = {**os.environ, "GLOG_minloglevel": "2", "PYTHONPATH": REPO_ROOT}
    return subprocess.run([sys.executable, TOOL, *map(str, args), "--no-progress"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _succeeded(proc) -> str:
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]  # the summary


def _one_error_line(proc) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _shards_only(src, dst):
    """A copy of the shard folder ``src`` without its sidecars."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.knowledge.jsonl*"))
    return str(dst)


def _sidecar_bytes(folder):
    return {os.path.basename(s): Path(sidecar_path(s)).read_bytes() for s in list_shards(str(folder))}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """3 shards of 4 samples (Chinese and English captions) and their sidecars, written by one process."""
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, 12, shard_size=4)
    summary = _succeeded(_run_tool("--data", folder, "--workers", 1))
    assert summary.startswith("3 shards: 3 sidecars written, 0 skipped (complete); 12 samples (12 annotated, "
                              "0 resumed from partial files), 0 invalid skipped;"), summary
    return folder


@pytest.mark.multiproc
def test_two_workers_write_the_same_sidecars_as_one(extracted, tmp_path):
    folder = _shards_only(extracted, tmp_path / "shards")
    summary = _succeeded(_run_tool("--data", folder, "--workers", 2))
    assert summary.startswith("3 shards: 3 sidecars written") and "per process x 2" in summary
    assert _sidecar_bytes(folder) == _sidecar_bytes(extracted)
    assert not [name for name in os.listdir(folder) if name.endswith(".partial")]


def test_the_loader_joins_the_sidecars_and_training_takes_their_key_words(extracted):
    shards = list_shards(str(extracted))
    for shard in shards:  # a line per sample, keyed as the reader keys them
        assert sorted(read_sidecar(sidecar_path(shard))) == sorted(r["key"] for r in iter_shard(shard))
    source = ShardSet(str(extracted), shards, None, None, 8, "center_crop", None)
    plan = ShardPlan(source, 0, 0, 1, batch_size=12, workers=0, shuffle_buffer=0, knowledge=True)
    metas = BatchLoader(plan, 0, 0).get().metas
    stored = {key: record for shard in shards for key, record in read_sidecar(sidecar_path(shard)).items()}
    assert sorted(m["key"] for m in metas) == sorted(stored)
    for meta in metas:
        assert meta["knowledge"] == stored[meta["key"]] and meta["knowledge"]["caption"] == meta["caption"]
        assert meta["knowledge"]["keywords"]  # "sample 3" / "样本 3" have words
        # What the caption processor checks before it uses stored words instead of analysing.
        assert _words_from_analysis(meta["knowledge"], meta["caption"], meta["key"]) is not None


@pytest.mark.multiproc
def test_a_rerun_skips_finished_shards_and_redoes_a_rewritten_one(extracted, tmp_path):
    folder = tmp_path / "shards"
    shutil.copytree(extracted, folder)
    shards = list_shards(str(folder))
    before = {s: os.stat(sidecar_path(s)).st_mtime_ns for s in shards}
    rewritten = shards[1]
    later = os.stat(sidecar_path(rewritten)).st_mtime + 10
    os.utime(rewritten, (later, later))  # the shard is newer than its sidecar
    summary = _succeeded(_run_tool("--data", folder, "--workers", 2))
    assert summary.startswith("3 shards: 1 sidecars written, 2 skipped (complete); 4 samples (4 annotated"), summary
    after = {s: os.stat(sidecar_path(s)).st_mtime_ns for s in shards}
    assert [after[s] == before[s] for s in shards] == [True, False, True]
    assert _sidecar_bytes(folder) == _sidecar_bytes(extracted)


@pytest.mark.multiproc
def test_interrupted_shards_resume_without_duplicate_keys(extracted, tmp_path):
    """Shard 0 was cut mid-way (two lines synced, one torn); shard 1 was written to its end but not
    renamed yet. The rerun completes both and writes no key twice."""
    folder = _shards_only(extracted, tmp_path / "shards")
    shards = list_shards(folder)
    reference = _sidecar_bytes(extracted)
    lines0 = reference["00000.tar"].splitlines()
    with open(partial_path(shards[0]), "wb") as f:
        f.write(lines0[0] + b"\n" + lines0[2] + b'\n{"key": "000000001", "caption": "sam')
    with open(partial_path(shards[1]), "wb") as f:
        f.write(reference["00001.tar"])
    summary = _succeeded(_run_tool("--data", folder, "--workers", 2))
    assert "3 sidecars written" in summary and "(6 annotated, 6 resumed from partial files)" in summary, summary
    result = _sidecar_bytes(folder)
    keys = [json.loads(line)["key"] for line in result["00000.tar"].splitlines()]
    assert len(keys) == len(set(keys)) == 4
    assert result["00000.tar"].splitlines() == [lines0[i] for i in (0, 2, 1, 3)]  # the resumed lines first
    assert result["00001.tar"] == reference["00001.tar"] and result["00002.tar"] == reference["00002.tar"]
    assert not [name for name in os.listdir(folder) if name.endswith(".partial")]


@pytest.mark.multiproc
def test_a_killed_worker_stops_the_run_in_one_line_and_a_rerun_completes(extracted, tmp_path):
    psutil = pytest.importorskip("psutil")
    folder = _shards_only(extracted, tmp_path / "shards")
    env = {**os.environ, "GLOG_minloglevel": "2", "PYTHONPATH": REPO_ROOT}
    proc = subprocess.Popen([sys.executable, TOOL, "--data", folder, "--workers", "2", "--no-progress"], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        workers = []
        while not workers and time.monotonic() < deadline and proc.poll() is None:
            workers = [p for p in psutil.Process(proc.pid).children()
                       if "spawn_main" in " ".join(p.cmdline())]  # not the resource tracker
            time.sleep(0.05)
        assert workers, "no worker process appeared"
        os.kill(workers[0].pid, signal.SIGKILL)  # while it starts: long before its first shard is done
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped (exit code -9)" in errors[0] and "rerun to resume" in errors[0], stderr
    summary = _succeeded(_run_tool("--data", folder, "--workers", 2))
    assert "sidecars written" in summary
    assert _sidecar_bytes(folder) == _sidecar_bytes(extracted)


@pytest.mark.multiproc
def test_damaged_shards_are_counted_and_the_others_complete(tmp_path):
    folder = tmp_path / "shards"
    write_shards(folder, 12, shard_size=4)
    cut = os.path.join(folder, "00001.tar")
    _, data_offset, _ = member_offsets(cut)["000000006.png"]
    truncate(cut, data_offset + 10)  # samples 4 and 5 are whole, 6 is cut short
    (folder / "00003.tar").write_bytes(b"not a tar" * 100)
    proc = _run_tool("--data", folder, "--workers", 2)
    summary = _succeeded(proc)
    assert summary.startswith("4 shards: 3 sidecars written, 0 skipped (complete), 2 damaged; 10 samples"), summary
    assert f"{cut}: truncated or corrupt" in proc.stderr and "00003.tar: not a tar file" in proc.stderr
    assert sorted(read_sidecar(sidecar_path(cut))) == ["000000004", "000000005"]  # what the loader reads of it
    for name in ("00000", "00002"):
        assert len(read_sidecar(str(folder / f"{name}.knowledge.jsonl"))) == 4
    assert not os.path.exists(folder / "00003.knowledge.jsonl")  # no sample: no sidecar, a rerun tries again
    assert not [name for name in os.listdir(folder) if name.endswith(".partial")]


def test_a_missing_shard_and_bad_flags_are_one_line_before_any_work(extracted, tmp_path):
    folder = _shards_only(extracted, tmp_path / "shards")
    pattern = os.path.join(folder, "{00000..00003}.tar")
    error = _one_error_line(_run_tool("--data", pattern, "--workers", 2))
    assert error == f"error: --data: shard not found: {os.path.join(folder, '00003.tar')}"
    assert not [name for name in os.listdir(folder) if ".knowledge." in name]  # nothing was written

    assert _one_error_line(_run_tool("--data", folder, "--workers", 0)) == "error: --workers must be >= 1, got 0"
    assert _one_error_line(_run_tool("--data", folder, "--out", tmp_path / "a.jsonl")).startswith(
        "error: --out: shards get their knowledge beside them")
    (tmp_path / "shards" / "latents.json").write_text("{}", encoding="utf-8")  # as tools/encode_latents.py writes
    assert _one_error_line(_run_tool("--data", folder)).startswith(f"error: --data: {folder} are latent shards")
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(json.dumps({"image": "a.png", "caption": "一只猫"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert _one_error_line(_run_tool("--data", jsonl, "--out", tmp_path / "a.jsonl", "--workers", 2)) == \
        f"error: --workers applies to shards; {jsonl} is a JSON Lines dataset"
    assert not [name for name in os.listdir(folder) if ".knowledge." in name]


@pytest.mark.skipif(importlib.util.find_spec("ppdet") is None, reason="paddledet is not installed")
def test_the_detector_step_stores_objects_of_the_shard_images(tmp_path):
    """With a detector (untrained here: it finds something everywhere) each line gets objects in pixels
    of its stored image; an image whose header reads but whose pixels do not gets no line."""
    import paddle

    from ernie_vilg2.knowledge.visual import VisualKnowledgeConfig
    from ernie_vilg2.knowledge.visual.detector import Detector

    config = os.path.join(REPO_ROOT, "configs", "detector", "picodet_lcnet_tiny.yml")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([{"id": 0, "en": "red square", "zh": "红方块"}], ensure_ascii=False), encoding="utf-8")
    paddle.seed(0)
    weights = str(tmp_path / "detector.safetensors")
    Detector(config, str(labels)).save_weights(weights)
    jpeg = image_bytes(30, size=(40, 24), fmt="JPEG")
    shard = write_tar(tmp_path / "a.tar", [("k0.png", image_bytes(10, size=(40, 24))), ("k0.txt", "红方块".encode()),
                                           ("k1.jpg", jpeg[:-12]), ("k1.txt", b"cut body"),
                                           ("k2.jpg", jpeg), ("k2.txt", b"a red square")])
    visual = VisualKnowledgeConfig(detector_config=config, detector_weights=weights, labels=str(labels),
                                   score_threshold=0.0, top_n=2, min_box_size=0.0)
    problems = []
    result = ShardAnnotator(ExtractionOptions(visual=visual)).annotate(shard, problems.append)
    assert (result.samples, result.written, result.finished) == (3, 2, True)
    assert [(p.kind, p.where) for p in problems] == [(UNDECODABLE_IMAGE, f"{shard}:k1.jpg")]
    stored = read_sidecar(sidecar_path(shard))
    assert sorted(stored) == ["k0", "k2"] and stored["k2"]["caption"] == "a red square"
    for record in stored.values():
        assert record["objects"] and all(o["label"] == "red square" and o["label_zh"] == "红方块" for o in record["objects"])
        assert all(0 <= x0 < x1 <= 40 and 0 <= y0 < y1 <= 24 for x0, y0, x1, y1 in (o["box"] for o in record["objects"]))
