"""The streamed order and the loader (ernie_vilg2/data/stream_order.py, batch_plans.py, loader.py):
disjoint ranks and workers, resuming at any sample equals not stopping, worker processes give
what the training process would, problems travel from the workers, a dead worker is an error."""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from ernie_vilg2.data import batch_plans
from ernie_vilg2.data.batch_plans import MapPlan, ShardPlan
from ernie_vilg2.data.jsonl import DatasetError
from ernie_vilg2.data.loader import BatchLoader, DataWorkerError
from ernie_vilg2.data.problems import CORRUPT_SHARD, UNDECODABLE_IMAGE, DataReport
from ernie_vilg2.data.shards import ShardReader, list_shards, load_image
from ernie_vilg2.data.sources import ShardSet
from ernie_vilg2.data.stream_order import ShardStream, buffer_shuffle

from helpers.shard_data import image_bytes, member_offsets, truncate, write_shards, write_sidecar, write_tar


def _shard_set(folder, languages=None, resolution=8):
    return ShardSet(str(folder), list_shards(str(folder)), None, languages, resolution, "center_crop", None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """6 shards of 8 samples."""
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, 48, shard_size=8)
    return folder


def _stream(folder, rank=0, world=1, worker=0, workers=1, buffer=5, seed=3):
    return ShardStream(list_shards(str(folder)), ShardReader(), seed, rank, world, worker, workers, buffer)


def _image(record):
    return record["image"] if record["image"] is not None else load_image(record)


def test_buffer_shuffle_keeps_every_item_once():
    out = list(buffer_shuffle(range(20), 6, np.random.default_rng(0)))
    assert sorted(out) == list(range(20)) and out != list(range(20))
    assert list(buffer_shuffle(range(5), 0, np.random.default_rng(0))) == list(range(5))


def test_ranks_and_workers_read_disjoint_shards_covering_all(shards):
    for epoch in (0, 1):
        keys, assigned = [], []
        for rank, worker in itertools.product(range(2), range(2)):
            stream = _stream(shards, rank, 2, worker, 2)
            assigned.append(stream.epoch_shards(epoch))
            samples = stream.samples(0)
            n = 0 if epoch == 0 else 8 * len(stream.epoch_shards(0))
            keys += [r["key"] for r in itertools.islice(samples, n, n + 8 * len(assigned[-1]))]
        assert len(keys) == len(set(keys)) == 48, epoch  # each sample once an epoch, no two streams share one
        if epoch == 0:
            first = assigned
    assert assigned != first  # shards are dealt out anew each epoch


@pytest.mark.parametrize("buffer", [0, 5])
def test_a_stream_resumed_at_any_sample_equals_the_uninterrupted_one(shards, buffer):
    stream = _stream(shards, buffer=buffer)  # one stream of 6 shards: an epoch is 48 samples
    full = list(itertools.islice(stream.samples(0), 130))
    assert sorted(r["key"] for r in full[:48]) == [f"{i:09d}" for i in range(48)]
    assert [r["key"] for r in full[:48]] != [r["key"] for r in full[48:96]]  # reshuffled each epoch
    for start in (5, 8, 47, 48, 61):  # mid-shard, a shard boundary, the epoch's end, the next epoch
        fresh = _stream(shards, buffer=buffer)  # a resumed run: nothing counted yet
        resumed = list(itertools.islice(fresh.samples(start), 20))
        assert [r["key"] for r in resumed] == [r["key"] for r in full[start:start + 20]], start
        assert [_image(r) for r in resumed] == [r["image"] for r in full[start:start + 20]]
    # The shards of the epochs read are counted: later starts skip those epochs without reading them.
    skipped = list(itertools.islice(stream.samples(100), 30))
    assert [r["key"] for r in skipped] == [r["key"] for r in full[100:130]]


def _batches(loader, n):
    out = []
    for _ in range(n):
        batch = loader.get()
        out.append(([m["key"] for m in batch.metas], batch.pixels))
    return out


@pytest.mark.multiproc
@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_started_at_step_k_gives_the_uninterrupted_batches(shards, workers):
    plan = ShardPlan(_shard_set(shards), seed=1, rank=0, world=1, batch_size=3, workers=workers, shuffle_buffer=4,
                     knowledge=False)
    with BatchLoader(plan, 0, workers, prefetch=2) as loader:
        full = _batches(loader, 40)  # 120 samples: across epochs
    # 48 samples in 6 shards: the first 16 steps are an epoch of each stream, every sample once.
    assert sorted(key for keys, _ in full[:16] for key in keys) == [f"{i:09d}" for i in range(48)]
    if workers:  # step k is batch k // W of logical worker k % W, whatever process makes it
        simulated = [plan.batches(w, workers) for w in range(workers)]
        assert [[m["key"] for m in next(simulated[k % workers]).metas] for k in range(40)] == [b[0] for b in full]
    for start in (1, 5, 22):
        with BatchLoader(plan, start, workers, prefetch=1) as loader:
            resumed = _batches(loader, 40 - start)
        assert [b[0] for b in resumed] == [b[0] for b in full[start:]], start
        for (_, a), (_, b) in zip(resumed, full[start:]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.multiproc
def test_indexed_data_gives_the_same_batches_with_any_number_of_workers(tmp_path):
    from ernie_vilg2.data.jsonl_index import JsonlIndex
    from ernie_vilg2.data.sources import MapDataset

    lines = []
    for i in range(7):
        (tmp_path / f"{i}.png").write_bytes(image_bytes(i * 30))
        lines.append(f'{{"image": "{i}.png", "caption": "image {i}"}}')
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    dataset = MapDataset(JsonlIndex(str(tmp_path / "train.jsonl")), 8)
    batches = {}
    for workers in (0, 2):
        plan = MapPlan(dataset, seed=0, rank=1, world=2, batch_size=5)
        with BatchLoader(plan, 3, workers) as loader:
            batches[workers] = _batches(loader, 6)
    assert [b[0] for b in batches[0]] == [b[0] for b in batches[2]]
    assert all(len(keys) == 2 for keys, _ in batches[0])  # rank 1 of 2: rows 1 and 3 of 5


def test_problems_found_in_workers_are_reported_once_and_counted(tmp_path, caplog):
    write_shards(tmp_path, 24, shard_size=6)
    damaged = str(tmp_path / "00001.tar")
    truncate(damaged, member_offsets(damaged)["000000008.png"][1] + 5)
    report = DataReport("data of stage base")
    plan = ShardPlan(_shard_set(tmp_path), seed=0, rank=0, world=1, batch_size=4, workers=2, shuffle_buffer=0,
                     knowledge=False)
    with caplog.at_level("WARNING"), BatchLoader(plan, 0, 2, report=report) as loader:
        keys = [m["key"] for _ in range(30) for m in loader.get().metas]  # 120 samples: several epochs
    assert "000000008" not in keys and "000000007" in keys
    assert report.counts() == {CORRUPT_SHARD: 1} and report.samples == 120
    warnings = [r.getMessage() for r in caplog.records if damaged in r.getMessage()]
    assert len(warnings) == 1 and "000000008.png is cut short" in warnings[0]


def test_an_image_that_fails_to_decode_is_replaced_within_its_batch(tmp_path):
    import io

    from PIL import Image

    noise = io.BytesIO()  # mostly scan data: the header survives the cut
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(noise, "JPEG")
    jpeg = noise.getvalue()
    shard = write_tar(tmp_path / "a.tar", [("k0.png", image_bytes(10)), ("k0.txt", b"zero"),
                                           ("k1.jpg", jpeg[:len(jpeg) * 3 // 4]), ("k1.txt", b"cut body"),
                                           ("k2.png", image_bytes(20)), ("k2.txt", b"two")])
    plan = ShardPlan(_shard_set(tmp_path), 0, 0, 1, batch_size=3, workers=0, shuffle_buffer=0, knowledge=False)
    report = DataReport("data")
    batch = BatchLoader(plan, 0, 0, report=report).get()
    assert [m["key"] for m in batch.metas] == ["k0", "k2", "k2"]  # k1's header reads fine, its body does not
    np.testing.assert_array_equal(batch.pixels[1], batch.pixels[2])
    assert report.counts() == {UNDECODABLE_IMAGE: 1} and f"{shard}:k1.jpg" in report._kinds


def test_sidecar_knowledge_is_joined_by_key_with_objects_mapped_like_the_image(tmp_path):
    shard = write_tar(tmp_path / "a.tar", [("w.png", image_bytes(5, size=(40, 20))), ("w.txt", b"a wide one"),
                                           ("v.png", image_bytes(9)), ("v.txt", b"no knowledge")])
    keywords = [{"text": "wide", "tag": "a", "start": 2, "end": 6, "importance": 2}]
    write_sidecar(shard, [{"key": "w", "caption": "a wide one", "keywords": keywords,
                           "objects": [{"box": [20, 0, 40, 20], "label": "right"},
                                       {"box": [0, 0, 4, 4], "label": "cut"}]}])
    for knowledge in (True, False):
        plan = ShardPlan(_shard_set(tmp_path, resolution=10), 0, 0, 1, 2, 0, 0, knowledge=knowledge)
        metas = BatchLoader(plan, 0, 0).get().metas
        if not knowledge:
            assert [m["knowledge"] for m in metas] == [None, None]
            continue
        wide = metas[0]["knowledge"]  # 40x20 -> 20x10, centre crop x in [5, 15)
        assert wide["keywords"] == keywords and wide["objects"] == [{"box": [5.0, 0.0, 10.0, 10.0], "label": "right"}]
        assert metas[1]["knowledge"] is None


def test_an_epoch_without_a_valid_sample_is_an_error_from_the_worker(tmp_path):
    for name in ("a.tar", "b.tar"):
        (tmp_path / name).write_bytes(b"not a tar" * 100)
    plan = ShardPlan(_shard_set(tmp_path), 0, 0, 1, 2, workers=2, shuffle_buffer=0, knowledge=False)
    for workers in (0, 2):
        loader = BatchLoader(plan if workers else ShardPlan(_shard_set(tmp_path), 0, 0, 1, 2, 0, 0, False), 0, workers)
        with pytest.raises(DatasetError, match=r"data worker 0: no valid sample in its shards of epoch 0 \(.*\.tar"):
            loader.get()
        loader.close()
    with pytest.raises(DatasetError, match="2 shards for 1 rank.* x 3 data worker"):
        ShardPlan(_shard_set(tmp_path), 0, 0, 1, 2, workers=3, shuffle_buffer=0, knowledge=False)


@pytest.mark.multiproc
def test_a_worker_that_dies_is_an_error_naming_it(shards):
    plan = ShardPlan(_shard_set(shards), 0, 0, 1, 2, workers=2, shuffle_buffer=0, knowledge=False)
    loader = BatchLoader(plan, 0, 2, prefetch=1)
    loader.get()
    os.kill(loader._procs[1].pid, signal.SIGKILL)
    loader._procs[1].join(timeout=30)
    with pytest.raises(DataWorkerError, match=r"data worker 1 stopped \(exit code -9\)"):
        for _ in range(4):  # what it made before it died comes first
            loader.get()
    assert loader._procs == []  # the other worker was stopped too


def test_indexed_order_is_each_epochs_permutation_made_once_per_epoch():
    batch_plans.epoch_order.cache_clear()
    got = [i for step in range(5) for i in batch_plans.batch_indices(step, 4, 10, seed=7)]
    expected = [int(i) for epoch in (0, 1) for i in np.random.default_rng([7, epoch]).permutation(10)]
    assert got == expected
    assert batch_plans.epoch_order.cache_info().misses == 2  # not once per step


def test_the_data_workers_modules_do_not_import_paddle():
    """A worker process reads and decodes; Paddle (hundreds of MB) stays in the training process."""
    code = ("import sys, ernie_vilg2.data.sources, ernie_vilg2.data.batch_plans, ernie_vilg2.data.loader; "
            "print('paddle' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr
