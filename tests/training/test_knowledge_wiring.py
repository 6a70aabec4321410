"""Knowledge in training and sampling: what the trainer hands the models."""
import json
import os

import numpy as np
import paddle
import pytest

from ernie_vilg2.models.attention_processor import FastAttnProcessor
from ernie_vilg2.text.tokenizer import POS_TOKENS, build_tokenizer
from ernie_vilg2.training.config import load_config
from ernie_vilg2.training.knowledge import CaptionProcessor

from helpers.paths import REPO_ROOT as REPO

TINY_YAML = os.path.join(REPO, "configs", "tiny.yaml")


def _cfg(tmp_path, *overrides):
    return load_config(TINY_YAML, [f"data.builtin.out_dir={tmp_path / 'data'}", "data.builtin.num_scenes=4",
                                   "data.builtin.num_val_scenes=2", "model.text_encoder.max_length=16",
                                   "textual_knowledge.enabled=false", "visual_knowledge.enabled=false",  # each test turns on its own
                                   *overrides])


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(max_length=16)


def _meta(caption, lang, index=0, boxes=None, labels=None):
    return {"caption": caption, "lang": lang, "index": index,
            "boxes": np.asarray(boxes if boxes is not None else np.zeros((0, 4)), dtype="float32"),
            "labels": labels or [], "synthetic_caption": None}


def test_textual_knowledge_off_gives_plain_tokens_and_no_mask(tmp_path, tokenizer):
    proc = CaptionProcessor(_cfg(tmp_path, "train.caption_dropout=0.0"), tokenizer)
    batch = proc.training_batch([_meta("红苹果在猫脸的左边", "zh")], np.random.default_rng(0), (1, 8, 8))
    assert batch["key_token_mask"] is None and batch["loss_weight"] is None
    assert batch["input_ids"].shape == (1, 16)


def test_textual_knowledge_marks_key_words_and_inserts_pos_tokens(tmp_path, tokenizer):
    cfg = _cfg(tmp_path, "textual_knowledge.enabled=true", "textual_knowledge.pos_token_prob=1.0",
               "train.caption_dropout=0.0")
    proc = CaptionProcessor(cfg, tokenizer)
    batch = proc.training_batch([_meta("a red apple and the cat", "en")], np.random.default_rng(0), (1, 8, 8))
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    mask = batch["key_token_mask"][0]
    assert any(t in POS_TOKENS for t in tokens), tokens
    marked = {t for t, m in zip(tokens, mask) if m > 0}
    assert {"red", "apple", "cat"} <= marked, (tokens, mask)
    assert not marked & {"[CLS]", "[SEP]", "[PAD]", "the", "and"} and not marked & set(POS_TOKENS)


def test_stored_keywords_are_used_instead_of_running_the_analyser(tmp_path, tokenizer, monkeypatch):
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"index": 7, "image": "x.png", "caption": "蓝心",
                               "keywords": [{"text": "蓝心", "tag": "n", "start": 0, "end": 2, "importance": 3}]},
                              ensure_ascii=False) + "\n", encoding="utf-8")
    cfg = _cfg(tmp_path, "textual_knowledge.enabled=true", f"textual_knowledge.annotations={ann}",
               "textual_knowledge.pos_tokens=false", "train.caption_dropout=0.0")
    proc = CaptionProcessor(cfg, tokenizer)
    from ernie_vilg2.knowledge.textual import analysis

    def no_analysis(*args, **kwargs):
        raise AssertionError("the analyser ran although the annotation file has the key words")

    monkeypatch.setattr(analysis.TextAnalyzer, "analyze", no_analysis)
    batch = proc.training_batch([_meta("蓝心", "zh", index=7)], np.random.default_rng(0), (1, 8, 8))
    np.testing.assert_array_equal(batch["key_token_mask"][0][:4], [0, 1, 1, 0])  # [CLS] 蓝 心 [SEP]


def test_processor_installed_for_training_only_unless_configured(tmp_path, tokenizer):
    from ernie_vilg2.models.factory import build_denoiser

    cfg = _cfg(tmp_path, "textual_knowledge.enabled=true", "model.num_experts=2")
    unet = build_denoiser(cfg.model, 32, num_experts=2)
    proc = CaptionProcessor(cfg, tokenizer)
    proc.install(unet, training=True)
    procs = [p for e in unet.experts for p in e.attn_processors.values()]
    assert procs and all(isinstance(p, FastAttnProcessor) and p.w_t == 0.01 for p in procs)
    proc.install(unet, training=False)
    assert all(p.w_t == 0.0 for e in unet.experts for p in e.attn_processors.values())
    cfg = _cfg(tmp_path, "textual_knowledge.enabled=true", "textual_knowledge.apply_at_sampling=true")
    CaptionProcessor(cfg, tokenizer).install(unet, training=False)
    assert all(isinstance(p, FastAttnProcessor) for e in unet.experts for p in e.attn_processors.values())


def test_keyword_emphasis_at_sampling_changes_images_only_when_on(make_tiny_pipeline):
    pipe = make_tiny_pipeline(num_experts=2)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["红苹果在猫脸的左边"]
    mask = np.zeros((1, pipe.max_length), dtype="float32")
    mask[0, 1:4] = 1.0
    kwargs = dict(num_inference_steps=2, guidance_scale=2.0, seed=3, output_type="np")
    plain = pipe(prompts, **kwargs).images
    pipe.unet.set_attn_processor(FastAttnProcessor(0.0))
    np.testing.assert_array_equal(pipe(prompts, key_token_mask=mask, **kwargs).images, plain)
    pipe.unet.set_attn_processor(FastAttnProcessor(5.0))
    emphasised = pipe(prompts, key_token_mask=mask, **kwargs).images
    assert np.abs(emphasised - plain).max() > 1e-4


def test_w_v_zero_weighted_loss_equals_plain_loss():
    from ernie_vilg2.knowledge.visual import loss_weight_map
    from ernie_vilg2.training.losses import per_sample_weighted_mse

    rng = np.random.default_rng(0)
    pred, target = (paddle.to_tensor(rng.standard_normal([3, 4, 8, 8]).astype("float32")) for _ in range(2))
    boxes = np.array([[2, 3, 20, 25]], dtype="float32")
    flat = np.stack([loss_weight_map(boxes, 32, 8, 0.0)] * 3)
    plain = per_sample_weighted_mse(pred, target)
    np.testing.assert_allclose(per_sample_weighted_mse(pred, target, paddle.to_tensor(flat)).numpy(),
                               plain.numpy(), rtol=1e-6)
    np.testing.assert_allclose(plain.numpy(), ((pred - target) ** 2).mean(axis=[1, 2, 3]).numpy(), rtol=1e-6)
    # With w_v > 0 the loss is the weighted mean: errors inside the box count 1 + w_v times.
    weight = np.stack([loss_weight_map(boxes, 32, 8, 1.0)] * 3)
    se = ((pred - target) ** 2).numpy()
    w = np.broadcast_to(weight, se.shape)
    expected = (se * w).sum(axis=(1, 2, 3)) / w.sum(axis=(1, 2, 3))
    np.testing.assert_allclose(per_sample_weighted_mse(pred, target, paddle.to_tensor(weight)).numpy(), expected,
                               rtol=1e-5)


def test_stored_detections_drive_weights_and_enrichment(tmp_path, tokenizer):
    """extract-then-train: boxes from the annotation file, not from the record."""
    ann = tmp_path / "ann.jsonl"
    objects = [{"box": [0, 0, 16, 16], "label": "frog", "label_zh": "青蛙", "score": 0.9}]
    ann.write_text(json.dumps({"index": 3, "image": "x.png", "caption": "a red apple", "keywords": [],
                               "objects": objects}) + "\n",
                   encoding="utf-8")
    cfg = _cfg(tmp_path, "visual_knowledge.enabled=true", f"visual_knowledge.annotations={ann}",
               "visual_knowledge.use_ground_truth=false", "visual_knowledge.weight_prob=1.0",
               "visual_knowledge.w_v=0.5", "train.caption_dropout=0.0")
    proc = CaptionProcessor(cfg, tokenizer)  # labels.json found beside the built-in data
    meta = _meta("a red apple", "en", index=3, boxes=[[20, 20, 30, 30]], labels=["red apple"])
    batch = proc.training_batch([meta], np.random.default_rng(0), (1, 8, 8))
    weight = batch["loss_weight"][0, 0]
    assert weight.shape == (8, 8)
    np.testing.assert_allclose(weight[:4, :4], 1.5)  # the stored box (top-left quarter)
    np.testing.assert_allclose(weight[5:, 5:], 1.0)  # the record's own box is ignored
    text = " ".join(tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())).replace(" ##", "")
    assert "apple , frog" in text  # the detected label missing from the caption was appended


def test_a_samples_own_knowledge_is_used_and_rows_do_not_depend_on_each_other(tmp_path, tokenizer, monkeypatch):
    """A shard's sidecar knowledge travels with its sample (meta["knowledge"]); each row draws from
    its own generator, so a rank's rows come out as they would in the whole batch."""
    cfg = _cfg(tmp_path, "textual_knowledge.enabled=true", "textual_knowledge.pos_token_prob=0.5",
               "visual_knowledge.enabled=true", "visual_knowledge.weight_prob=0.5", "visual_knowledge.w_v=0.5",
               "train.caption_dropout=0.3")
    proc = CaptionProcessor(cfg, tokenizer)
    keywords = [{"text": "蓝心", "tag": "n", "start": 0, "end": 2, "importance": 3}]
    stored = _meta("蓝心", "zh", index=None)
    stored["knowledge"] = {"caption": "蓝心", "keywords": keywords,
                           "objects": [{"box": [0, 0, 16, 16], "label": "blue heart"}]}
    from ernie_vilg2.knowledge.textual import analysis

    def no_analysis(*args, **kwargs):
        raise AssertionError("the analyser ran although the sample carries its key words")

    monkeypatch.setattr(analysis.TextAnalyzer, "analyze", no_analysis)
    rows = [stored] * 6
    whole = proc.training_rows(rows, [np.random.default_rng(s) for s in range(6)], (1, 8, 8))
    part = proc.training_rows(rows[3:], [np.random.default_rng(s) for s in range(3, 6)], (1, 8, 8))
    np.testing.assert_array_equal(whole["input_ids"][3:], part["input_ids"])
    np.testing.assert_array_equal(whole["key_token_mask"][3:], part["key_token_mask"])
    np.testing.assert_array_equal(whole["loss_weight"][3:], part["loss_weight"])
    assert len({tuple(ids) for ids in whole["input_ids"].tolist()}) > 1  # the rows' draws differ
    weighted = [w for w in whole["loss_weight"] if (w != 1).any()]
    assert weighted and all(np.allclose(w[0, :4, :4], 1.5) for w in weighted)  # the stored object's box
