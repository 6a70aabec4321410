"""Annotation file (resumable JSONL) and tools/extract_knowledge.py."""
import importlib.util
import json
import os

import numpy as np
import pytest

from ernie_vilg2.knowledge.annotations import AnnotationWriter, make_annotation, read_annotations
from ernie_vilg2.knowledge.textual import TextualKnowledgeConfig, Word, build_text_inputs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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

    assert tool.main(["--data", str(tmp_path / "nowhere"), "--out", out, "--no-progress"]) == 1
