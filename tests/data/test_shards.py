"""webdataset shards (ernie_vilg2/data/shards.py, shard_writer.py): img2dataset's layout written
and read, a shard built by another writer, damaged shards, listing, knowledge sidecars, and
tools/prepare_data.py --shards."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from ernie_vilg2.data.problems import CORRUPT_SHARD, INVALID_SAMPLE, DataReport
from ernie_vilg2.data.samples import UNDECODABLE_IMAGE
from ernie_vilg2.data.shards import ShardError, ShardReader, expand_braces, list_shards, read_sidecar

from helpers.paths import REPO_ROOT as REPO
from helpers.paths import TOOL_ENV
from helpers.shard_data import image_bytes, member_offsets, sample_image, truncate, write_shards, write_sidecar, write_tar
from helpers.tiny_coco import EXPECTED_KEYS, write_tiny_coco



def _read(path, **kwargs):
    problems = []
    reader = ShardReader(on_problem=problems.append, **kwargs)
    return list(reader.iter_shard(str(path))), problems


def test_writer_writes_img2dataset_layout_and_reader_reads_it_back(tmp_path):
    import pyarrow.parquet as pq

    shards = write_shards(tmp_path, 5, shard_size=2)
    assert [os.path.basename(s) for s in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    assert sorted(os.listdir(tmp_path)) == sorted(f"0000{i}{s}" for i in range(3)
                                                  for s in (".tar", "_stats.json", ".parquet"))
    with tarfile.open(shards[0]) as tar:  # one sample's members together, by extension
        assert tar.getnames() == ["000000000.json", "000000000.png", "000000000.txt",
                                  "000000001.jpg", "000000001.json", "000000001.txt"]
        meta = json.load(tar.extractfile("000000001.json"))
    assert meta["key"] == "000000001" and meta["status"] == "success" and (meta["width"], meta["height"]) == (20, 16)
    assert meta["caption"] == "sample 1" and meta["boxes"] == [[2, 2, 12, 10]] and meta["labels"] == ["thing 1"]
    stats = json.loads((tmp_path / "00002_stats.json").read_text())
    assert (stats["count"], stats["successes"], stats["status_dict"]) == (1, 1, {"success": 1})
    table = pq.read_table(tmp_path / "00000.parquet").to_pylist()
    assert [row["key"] for row in table] == ["000000000", "000000001"] and table[1]["caption"] == "sample 1"
    assert {"url", "status", "error_message", "width", "height", "original_width", "sha256"} <= set(table[0])

    records = [r for shard in shards for r in _read(shard)[0]]
    assert [r["key"] for r in records] == [f"{i:09d}" for i in range(5)]
    assert [r["caption"] for r in records[:2]] == ["样本 0", "sample 1"] and records[0]["lang"] == "zh"
    assert records[1]["boxes"] == [[2.0, 2.0, 12.0, 10.0]] and records[1]["labels"] == ["thing 1"]
    assert records[1]["image"] == sample_image(1) and records[1]["synthetic_caption"] is None


def test_a_shard_from_another_writer(tmp_path):
    """Members in another order, an upper-case extension, a folder entry, the caption only in the
    .json, padding around the caption, an extra member, no .json at all."""
    shard = write_tar(tmp_path / "foreign.tar", [
        ("a1.txt", "a red dot".encode()), ("a1.JPG", image_bytes(10, fmt="JPEG")),
        ("a1.json", json.dumps({"url": "http://x", "lang": "en", "boxes": [[0, 0, 5, 5]], "labels": ["dot"]}).encode()),
        ("sub/b2.png", image_bytes(20)),
        ("sub/b2.json", json.dumps({"caption": "蓝心"}, ensure_ascii=False).encode()),
        ("c3.webp", image_bytes(30, fmt="WEBP")), ("c3.txt", b"  padded caption \n"), ("c3.cls", b"7"),
    ])
    with tarfile.open(shard, "a") as tar:  # a folder entry between samples
        info = tarfile.TarInfo("sub")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    records, problems = _read(shard)
    assert problems == []
    assert [(r["key"], r["caption"], r["lang"]) for r in records] == [
        ("a1", "a red dot", "en"), ("sub/b2", "蓝心", "zh"), ("c3", "padded caption", "en")]
    assert records[0]["boxes"] == [[0.0, 0.0, 5.0, 5.0]] and records[0]["image_name"] == f"{shard}: a1.JPG"
    # data.caption_field: the caption from the .json's field (a sample without it is skipped).
    records, problems = _read(shard, caption_field="caption")
    assert [r["key"] for r in records] == ["sub/b2"]
    assert len(problems) == 2 and all(p.kind == INVALID_SAMPLE and "'caption'" in p.message for p in problems)
    # data.languages: other languages are left out, not reported.
    problems = []
    reader = ShardReader(languages=["zh"], on_problem=problems.append)
    assert [r["key"] for r in reader.iter_shard(shard)] == ["sub/b2"] and reader.num_filtered == 2 and not problems


def test_bad_samples_are_skipped_with_one_problem_naming_shard_and_member(tmp_path):
    shard = write_tar(tmp_path / "bad.tar", [
        ("k0.png", image_bytes(1)), ("k0.txt", b"fine"),
        ("k1.png", image_bytes(2)), ("k1.txt", b"\xff\xfe not utf-8"),
        ("k2.jpg", b"this is not an image"), ("k2.txt", b"no image"),
        ("k3.txt", b"a caption without an image"),
        ("k4.png", image_bytes(3)), ("k4.json", b"[1, 2]"),
        ("k5.png", image_bytes(4)), ("k5.txt", b"   "),
        ("k6.png", image_bytes(5)), ("k6.json", json.dumps({"caption": "x", "boxes": [[5, 5, 1, 1]]}).encode()),
        ("k7.png", image_bytes(6)), ("k7.txt", b"fine too"),
    ])
    records, problems = _read(shard)
    assert [r["key"] for r in records] == ["k0", "k7"]
    found = {p.where: (p.kind, p.message) for p in problems}
    assert len(found) == len(problems) == 6
    expected = {"k1.txt": (INVALID_SAMPLE, "not UTF-8"), "k2.jpg": (UNDECODABLE_IMAGE, "k2.jpg"),
                "k3": (INVALID_SAMPLE, "no image"), "k4.json": (INVALID_SAMPLE, "not a JSON object"),
                "k5.txt": (INVALID_SAMPLE, "empty caption"), "k6.json": (INVALID_SAMPLE, "x1 > x0")}
    for member, (kind, words) in expected.items():
        assert found[f"{shard}:{member}"][0] == kind, member
        message = found[f"{shard}:{member}"][1]
        assert f"{shard}: {member}" in message and words in message and "\n" not in message, message


@pytest.mark.parametrize("cut", ["inside an image", "between samples", "inside a header", "garbage header"])
def test_a_damaged_shard_keeps_its_samples_before_the_damage(tmp_path, cut):
    shard = write_shards(tmp_path, 6, shard_size=6)[0]
    offsets = member_offsets(shard)  # sample 4's members: .json, .png, .txt
    header, data, _ = offsets["000000004.png"]
    if cut == "inside an image":
        truncate(shard, data + 10)
        kept, member = 4, "000000004.png is cut short"
    elif cut == "between samples":  # a complete last sample may lack members that followed: dropped too
        truncate(shard, offsets["000000004.json"][0])
        kept, member = 3, "after member 000000003.txt"
    elif cut == "inside a header":
        truncate(shard, header + 100)
        kept, member = 4, "after member 000000004.json"
    else:
        with open(shard, "r+b") as f:
            f.seek(header)
            f.write(b"\x01" * 512)
        kept, member = 4, "after member 000000004.json"
    records, problems = _read(shard)
    assert [r["key"] for r in records] == [f"{i:09d}" for i in range(kept)]
    assert len(problems) == 1 and problems[0].kind == CORRUPT_SHARD and problems[0].where == shard
    assert shard in problems[0].message and member in problems[0].message, problems[0].message


def test_files_that_are_no_tar_are_one_problem(tmp_path):
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "text.tar").write_bytes(b"hello" * 300)
    for name in ("empty.tar", "text.tar"):
        records, problems = _read(tmp_path / name)
        assert records == [] and [p.kind for p in problems] == [CORRUPT_SHARD]
        assert "not a tar file" in problems[0].message and name in problems[0].message


def test_report_counts_each_problem_once(tmp_path, caplog):
    shard = write_tar(tmp_path / "x.tar", [("a.jpg", b"nope"), ("a.txt", b"c"), ("b.png", image_bytes(1)),
                                            ("b.txt", b"\xff")])
    report = DataReport("data of stage base")
    with caplog.at_level("WARNING"):
        for _ in range(3):  # the same shard in three epochs
            report.add(_read(shard)[1])
    report.samples = 12
    assert report.summary == "data of stage base: 12 samples read (skipped 1 invalid sample, 1 undecodable image)"
    assert len([r for r in caplog.records if str(shard) in r.getMessage()]) == 2


def test_listing_shards(tmp_path):
    shards = write_shards(tmp_path / "s", 6, shard_size=2)
    assert list_shards(str(tmp_path / "s")) == shards
    assert list_shards(str(tmp_path / "s" / "{00000..00002}.tar")) == shards
    assert list_shards(str(tmp_path / "s" / "0000{0,2}.tar")) == [shards[0], shards[2]]
    (tmp_path / "list.txt").write_text("# the first two\ns/00000.tar\n\ns/00001.tar\n", encoding="utf-8")
    assert list_shards(str(tmp_path / "list.txt")) == [str(tmp_path / "s" / "00000.tar"), shards[1]]
    assert expand_braces("x{8..10}.tar") == ["x8.tar", "x9.tar", "x10.tar"]
    assert expand_braces("x{08..10}.tar") == ["x08.tar", "x09.tar", "x10.tar"]
    with pytest.raises(ShardError, match=r"shard not found: .*00003\.tar \(and 1 more of the 5\)$"):
        list_shards(str(tmp_path / "s" / "{00000..00004}.tar"))
    (tmp_path / "none").mkdir()
    with pytest.raises(ShardError, match="no .tar shards"):
        list_shards(str(tmp_path / "none"))


def test_sidecar_is_read_by_key_and_a_torn_last_line_is_ignored(tmp_path):
    shard = write_shards(tmp_path, 2, shard_size=2)[0]
    path = write_sidecar(shard, [{"key": "000000001", "caption": "sample 1", "keywords": [],
                                  "objects": [{"box": [0, 0, 4, 4], "label": "dot"}]}], torn_tail='{"key": "0000')
    assert list(read_sidecar(path)) == ["000000001"]
    with open(path, "a", encoding="utf-8") as f:
        f.write('0002", "caption": "c"}\n{"key": 3}\n')
    with pytest.raises(ValueError, match=r"knowledge\.jsonl:3: needs a string 'key'"):
        read_sidecar(path)


def _prepare(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "prepare_data.py"), "--no-progress", *args],
                          capture_output=True, text=True, env=TOOL_ENV, cwd=str(cwd), timeout=300)


@pytest.mark.slow
def test_prepare_data_writes_shards_from_the_builtin_data_and_coco(tmp_path):
    done = _prepare("--config", os.path.join(REPO, "configs", "tiny.yaml"), "--out", "data/emoji", "--max-emoji", "3",
                    "--num-scenes", "2", "--num-val-scenes", "1", "--shards", "data/shards", "--shard-size", "4",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shards = list_shards(str(tmp_path / "data" / "shards"))
    assert len(shards) == 3 and (tmp_path / "data" / "shards" / "labels.json").is_file()
    records = [r for shard in shards for r in _read(shard)[0]]
    jsonl = [json.loads(line) for line in (tmp_path / "data" / "emoji" / "train.jsonl").read_text().splitlines()]
    assert sorted(r["caption"] for r in records) == sorted(r["caption"] for r in jsonl)  # all 10, shuffled
    assert [r["caption"] for r in records] != [r["caption"] for r in jsonl]
    by_caption = {r["caption"]: r for r in records}
    for line in jsonl:
        assert by_caption[line["caption"]]["boxes"] == [[float(v) for v in b] for b in line["boxes"]]
        assert by_caption[line["caption"]]["image"] == (tmp_path / "data" / "emoji" / line["image"]).read_bytes()

    coco = write_tiny_coco(tmp_path / "coco")
    done = _prepare("--source", coco, "--shards", "data/coco-shards", "--shard-size", "3", "--keep-order",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = [r for shard in list_shards(str(tmp_path / "data" / "coco-shards")) for r in _read(shard)[0]]
    assert [r["key"] for r in records] == EXPECTED_KEYS and records[3]["labels"] == ["dog", "person"]

    again = _prepare("--source", coco, "--shards", "data/coco-shards", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "exists" in again.stderr and "Traceback" not in again.stderr
    lone = _prepare("--source", coco, cwd=tmp_path)
    assert lone.returncode == 2 and "--source and --coco-split need --shards" in lone.stderr


def test_export_skips_unreadable_images_and_names_them(tmp_path, caplog):
    from ernie_vilg2.data.jsonl_index import JsonlIndex
    from ernie_vilg2.data.shard_writer import export_shards

    (tmp_path / "ok.png").write_bytes(image_bytes(9))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    lines = [{"image": "ok.png", "caption": "fine"}, {"image": "bad.png", "caption": "broken"},
             {"image": "gone.png", "caption": "missing"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    skipped = []
    counts = export_shards(JsonlIndex(str(tmp_path / "train.jsonl")), str(tmp_path / "out"), 10,
                           on_skip=lambda record, reason: skipped.append(record["image"]))
    assert counts == {"shards": 1, "samples": 1, "skipped": 2}
    assert sorted(os.path.basename(p) for p in skipped) == ["bad.png", "gone.png"]
    records, _ = _read(tmp_path / "out" / "00000.tar")
    assert [(r["key"], r["caption"]) for r in records] == [("000000000", "fine")]
    assert np.frombuffer(records[0]["image"], np.uint8).size == len(image_bytes(9))
