"""Annotation file (resumable JSONL) and tools/extract_knowledge.py."""
import importlib.util
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from ernie_vilg2.knowledge.annotations import AnnotationWriter, make_annotation, read_annotations
from ernie_vilg2.knowledge.textual import TextualKnowledgeConfig, Word, build_text_inputs

from helpers.paths import REPO_ROOT



def load_tool():
    spec = importlib.util.spec_from_file_location("extract_knowledge", os.path.join(REPO_ROOT, "tools", "extract_knowledge.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(i, caption="一辆红色的汽车"):
    return make_annotation(i, f"{i}.png", caption, [Word("红色", "n", 2, 4, 3), Word("。", "w", 7, 8, 0)])


def test_make_annotation_drops_punctuation():
    rec = record(3)
    assert rec == {"index": 3, "image": "3.png", "caption": "一辆红色的汽车",
                   "keywords": [{"text": "红色", "tag": "n", "start": 2, "end": 4, "importance": 3}]}


def test_writer_resumes_and_drops_a_torn_line(tmp_path, caplog):
    path = str(tmp_path / "sub" / "ann.jsonl")
    with AnnotationWriter(path) as w:
        assert w.done == set()
        w.write(record(0))
        w.write(record(1))
    with open(path, "a", encoding="utf-8") as f:  # a crash in the middle of a line
        f.write('{"index": 2, "caption": "一辆')
    assert set(read_annotations(path)) == {0, 1}  # torn last line ignored ...
    assert "incomplete" in caplog.text  # ... and reported
    with AnnotationWriter(path) as w:
        assert w.done == {0, 1}
        w.write(record(2))
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2]
    assert read_annotations(path)[2]["keywords"][0]["text"] == "红色"


def test_reader_reports_bad_lines(tmp_path):
    path = tmp_path / "ann.jsonl"
    path.write_text(json.dumps(record(0)) + "\nnot json\n" + json.dumps(record(1)) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"ann\.jsonl:2: invalid JSON"):
        read_annotations(str(path))
    path.write_text('{"index": -1, "caption": "x", "keywords": []}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="index"):
        read_annotations(str(path))
    with pytest.raises(FileNotFoundError, match="extract_knowledge"):
        read_annotations(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="missing key"):
        with AnnotationWriter(str(tmp_path / "w.jsonl")) as w:
            w.write({"index": 0})


def test_extract_tool_end_to_end(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    lines = [json.dumps({"image": "a.png", "caption": "一辆红色的汽车"}, ensure_ascii=False), "{broken",
             json.dumps({"image": "b.png", "caption": "A red colored car."}), "",
             json.dumps({"image": "c.png"}), json.dumps({"image": "d.png", "caption": "一只cute猫"}, ensure_ascii=False)]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "dict.txt").write_text("红色/a\n", encoding="utf-8")
    out = str(tmp_path / "out" / "ann.jsonl")
    tool = load_tool()
    assert tool.main(["--data", str(data), "--out", out, "--user-dict", str(tmp_path / "dict.txt"),
                      "--no-progress", "--batch-size", "2"]) == 0
    ann = read_annotations(out)
    assert sorted(ann) == [0, 2, 5]  # 0-based source line numbers; lines 2 and 5 (1-based) were bad
    assert {"text": "红色", "tag": "a", "start": 2, "end": 4, "importance": 3} in ann[0]["keywords"]
    assert [k["text"] for k in ann[2]["keywords"]] == ["A", "red", "colored", "car"]
    size = os.path.getsize(out)
    assert tool.main(["--data", str(data / "train.jsonl"), "--out", out, "--no-progress"]) == 0
    assert os.path.getsize(out) == size  # nothing redone

    # training uses the annotation instead of running LAC; the selection still comes from the config
    cfg = TextualKnowledgeConfig(enabled=True, keyword_tags=["a"])
    from ernie_vilg2.text.tokenizer import build_tokenizer

    tok = build_tokenizer()
    captions = [ann[0]["caption"], ann[2]["caption"]]
    res = build_text_inputs(captions, tok, 12, cfg, np.random.default_rng(0), analyses=[ann[0], ann[2]],
                            training=False)
    tokens = [tok.convert_ids_to_tokens(row.tolist()) for row in res["input_ids"]]
    assert [t for t, m in zip(tokens[0], res["key_token_mask"][0]) if m] == ["红", "色"]
    assert [t for t, m in zip(tokens[1], res["key_token_mask"][1]) if m] == ["red", "color", "##ed"]

    with pytest.raises(SystemExit) as exit_:
        tool.main(["--data", str(tmp_path / "nowhere"), "--out", out, "--no-progress"])
    assert exit_.value.code == 2


# -- bad sources, batched fsync, resume after a kill ----------------------------------------
def _run_tool(*args):
    env = {**os.environ, "GLOG_minloglevel": "2", "PYTHONPATH": REPO_ROOT}
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "extract_knowledge.py"), *map(str, args),
                           "--no-progress"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def _one_error_line(proc):
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.slow
def test_extract_refuses_a_csv_and_a_source_without_records(tmp_path):
    csv_path = tmp_path / "prompts.csv"
    csv_path.write_text("\ufeffPrompt,文本\nA red car.,一辆红色的汽车。\n", encoding="utf-8")
    out = tmp_path / "ann.jsonl"
    error = _one_error_line(_run_tool("--data", csv_path, "--out", out))
    assert "--data" in error and str(csv_path) in error and "expected a JSON Lines dataset" in error
    assert not out.exists()

    bad = tmp_path / "bad.jsonl"  # right name, wrong content: every line is bad
    bad.write_text("Prompt,文本\nA red car.,一辆红色的汽车。\n[1]\n", encoding="utf-8")
    error = _one_error_line(_run_tool("--data", bad, "--out", out))
    assert str(bad) in error and "no valid record in 3 lines (2 malformed JSON, 1 invalid record)" in error
    assert not out.exists()  # no empty annotation file left behind


def test_extract_says_when_most_source_lines_are_bad(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    good = [json.dumps({"image": f"{i}.png", "caption": "一只猫"}, ensure_ascii=False) for i in range(2)]
    data.write_text("\n".join(good + ["{bad", "{bad", "{bad"]) + "\n", encoding="utf-8")
    tool = load_tool()
    assert tool.main(["--data", str(data), "--out", str(tmp_path / "ann.jsonl"), "--no-progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"warning: 3 of 5 source lines of {data} were bad (skipped); "
                       "is --data the dataset you meant?")
    assert sorted(read_annotations(str(tmp_path / "ann.jsonl"))) == [0, 1]

    data.write_text("\n".join(good + ["{bad"]) + "\n", encoding="utf-8")  # a minority: no warning
    assert tool.main(["--data", str(data), "--out", str(tmp_path / "ann2.jsonl"), "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_writer_syncs_in_batches(tmp_path, monkeypatch):
    from ernie_vilg2.knowledge import annotations

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(annotations.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = str(tmp_path / "ann.jsonl")
    with AnnotationWriter(path, sync_every=40) as w:
        for i in range(100):
            w.write(record(i))
        assert len(synced) == 2  # after records 40 and 80, not after each one
    assert len(synced) == 3  # and at close
    assert sorted(read_annotations(path)) == list(range(100))


KILLED_WRITER = """
import sys, time
from ernie_vilg2.knowledge.annotations import AnnotationWriter, make_annotation
w = AnnotationWriter(sys.argv[1], sync_every=5, sync_seconds=3600)
w.open()
start = min(set(range(1000)) - w.done)
for i in range(start, start + 12):
    w.write(make_annotation(i, f"{i}.png", "一辆红色的汽车" * 20, []))
print("written", flush=True)
time.sleep(600)
"""


def test_killed_run_loses_only_the_unsynced_tail_and_resumes(tmp_path):
    """A run killed between syncs keeps every synced record; the rerun completes the file."""
    path = tmp_path / "ann.jsonl"
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    for run in range(2):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                                env=env)
        watchdog = threading.Timer(120, proc.kill)  # a hung child ends the readline below
        watchdog.start()
        try:
            assert proc.stdout.readline().strip() == "written"
        finally:
            watchdog.cancel()
            proc.kill()  # SIGKILL: no close, no flush
            proc.wait(timeout=60)
        with open(path, "a", encoding="utf-8") as f:  # and a torn line, as a crash mid-write leaves it
            f.write('{"index": 999, "caption": "一辆')
        # 12 written, synced after 5 and 10: the last 2 were still in the process's buffer
        assert set(read_annotations(str(path))) == set(range(10 * (run + 1)))
    with AnnotationWriter(str(path)) as w:
        assert w.done == set(range(20))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(20))  # torn tail dropped
