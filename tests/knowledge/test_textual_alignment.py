"""Textual knowledge, token side: alignment, POS tokens, build_text_inputs."""
import numpy as np
import pytest

from ernie_vilg2.knowledge.textual import TextualKnowledgeConfig, build_text_inputs
from ernie_vilg2.knowledge.textual.alignment import _strip_accents, insert_pos_tokens, keyword_token_mask, token_char_spans
from ernie_vilg2.knowledge.textual.keywords import KeyWord
from ernie_vilg2.text.tokenizer import build_tokenizer, tokenize


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def cfg(**kw):
    return TextualKnowledgeConfig(enabled=True, **kw)


def marked(tok, out, i):
    """Tokens of sample i whose mask is non-zero."""
    tokens = tok.convert_ids_to_tokens(out["input_ids"][i].tolist())
    return [t for t, m in zip(tokens, out["key_token_mask"][i]) if m > 0]


@pytest.mark.parametrize("text", [
    "一辆红色的汽车。", "an unbelievably photorealistic astronaut", "一只cute猫 sitting在桌子上",
    "Ⅻ ㈱ ½ ﬀ apple 😀猫", "café NAÏVE [n]猫 [N] x", "  lead\tand\ntrail  ", "",
])
def test_token_spans_match_the_tokenizer(tok, text):
    tokens, spans = token_char_spans(tok, text)
    assert tokens == tok.tokenize(text)
    for t, (s, e) in zip(tokens, spans):
        assert 0 <= s < e <= len(text)
        piece = text[s:e]
        assert piece == piece.strip()  # never starts or ends on whitespace
        if t != "[UNK]":  # the token is its characters, lower-cased and without accents
            assert (t[2:] if t.startswith("##") else t) == _strip_accents(piece.lower())


def test_unknown_symbols_are_covered_exactly(tok):
    text = "Ⅻ ㈱ ½ ﬀ apple"
    tokens, spans = token_char_spans(tok, text)
    assert [(t, text[s:e]) for t, (s, e) in zip(tokens, spans)] == [
        ("[UNK]", "Ⅻ"), ("[UNK]", "㈱"), ("[UNK]", "½"), ("[UNK]", "ﬀ"), ("apple", "apple")]


def test_chinese_alignment(tok):
    out = build_text_inputs(["一辆红色的汽车。"], tok, 16, cfg(), np.random.default_rng(0), training=False)
    assert out["texts"] == ["一辆红色的汽车。"]
    assert marked(tok, out, 0) == ["一", "辆", "红", "色", "汽", "车"]  # 的/u and 。/w are not key words
    assert out["key_token_mask"][0, 0] == 0  # [CLS]
    assert out["input_ids"].dtype == np.int64 and out["key_token_mask"].dtype == np.float32


def test_english_wordpiece_alignment(tok):
    out = build_text_inputs(["a photorealistic astronaut"], tok, 16, cfg(), np.random.default_rng(0), training=False)
    # every WordPiece of a key word is marked, the article is not
    assert marked(tok, out, 0) == ["photo", "##rea", "##list", "##ic", "as", "##tro", "##na", "##ut"]


def test_mixed_alignment(tok):
    out = build_text_inputs(["一只cute猫 sitting在桌子上"], tok, 32, cfg(), np.random.default_rng(0), training=False)
    # 上 is a direction noun (LAC f): a spatial key word
    assert marked(tok, out, 0) == ["一", "只", "cut", "##e", "猫", "si", "##tti", "##ng", "桌", "子", "上"]


def test_unknown_token_alignment(tok):
    out = build_text_inputs(["😀猫 ☃ apple"], tok, 16, cfg(), np.random.default_rng(0), training=False)
    tokens = tok.convert_ids_to_tokens(out["input_ids"][0].tolist())
    assert tokens[:6] == ["[CLS]", "[UNK]", "猫", "[UNK]", "apple", "[SEP]"]
    assert out["key_token_mask"][0, :6].tolist() == [0, 0, 1, 0, 1, 0]  # 😀 and ☃ are symbols, not words


def test_truncation_drops_words_past_max_length(tok):
    text = "red car blue sky green tree"
    full = build_text_inputs([text], tok, 16, cfg(), np.random.default_rng(0), training=False)
    cut = build_text_inputs([text], tok, 6, cfg(), np.random.default_rng(0), training=False)
    assert cut["input_ids"].shape == (1, 6)
    assert cut["key_token_mask"][0].tolist() == full["key_token_mask"][0, :5].tolist() + [0.0]  # [SEP] last
    assert marked(tok, cut, 0) == ["red", "car", "blue", "sky"]
    # the direct helper: spans past the window never mark anything
    mask = keyword_token_mask([(0, 3), (4, 7), (8, 12)], [KeyWord(8, 12, "n", "n", 1.0)], 4)
    assert mask.tolist() == [0, 0, 0, 0]


def test_pos_tokens_inserted_before_key_words(tok):
    keys = [KeyWord(0, 2, "m", "m", 1.0), KeyWord(2, 4, "n", "n", 1.0), KeyWord(5, 7, "TIME", "n", 1.0),
            KeyWord(7, 8, "f", None, 1.0)]
    text, moved = insert_pos_tokens("一辆红色的汽车里", keys)
    assert text == "[m]一辆[n]红色的[n]汽车里"
    assert [text[k.start:k.end] for k in moved] == ["一辆", "红色", "汽车", "里"]
    text, moved = insert_pos_tokens("a red car", [KeyWord(2, 5, "a", "a", 1.0), KeyWord(6, 9, "n", "n", 1.0)])
    assert text == "a [a] red [n] car" and [text[k.start:k.end] for k in moved] == ["red", "car"]

    out = build_text_inputs(["a red car", "一辆红色的汽车"], tok, 16, cfg(pos_token_prob=1.0),
                            np.random.default_rng(0), training=True)
    assert out["texts"] == ["a [a] red [n] car", "[m]一辆[n]红色的[n]汽车"]
    tokens = tok.convert_ids_to_tokens(out["input_ids"][0].tolist())
    assert tokens[:7] == ["[CLS]", "a", "[a]", "red", "[n]", "car", "[SEP]"]
    assert out["key_token_mask"][0, :7].tolist() == [0, 0, 0, 1, 0, 1, 0]  # POS tokens are not emphasised
    assert marked(tok, out, 1) == ["一", "辆", "红", "色", "汽", "车"]
    # never when not training, never when switched off
    for training, on in ((False, True), (True, False)):
        out = build_text_inputs(["a red car"], tok, 16, cfg(pos_token_prob=1.0, pos_tokens=on),
                                np.random.default_rng(0), training=training)
        assert out["texts"] == ["a red car"]


def test_pos_insertion_rate_is_close_to_p(tok):
    rng = np.random.default_rng(123)
    captions = ["a red car", "一辆红色的汽车"] * 200
    out = build_text_inputs(captions, tok, 16, cfg(pos_token_prob=0.3), rng, training=True)
    rate = np.mean([t != c for t, c in zip(out["texts"], captions)])
    assert abs(rate - 0.3) < 0.07  # 400 Bernoulli(0.3) draws: std 0.023
    # same generator state -> same choices
    again = build_text_inputs(captions, tok, 16, cfg(pos_token_prob=0.3), np.random.default_rng(123))
    assert again["texts"] == out["texts"]


def test_disabled_and_empty_captions(tok):
    captions = ["一辆红色的汽车", "", "a red car"]
    off = build_text_inputs(captions, tok, 12, TextualKnowledgeConfig(enabled=False), np.random.default_rng(0))
    assert off["texts"] == captions and not off["key_token_mask"].any()
    np.testing.assert_array_equal(off["input_ids"], tokenize(tok, captions, 12))
    on = build_text_inputs(captions, tok, 12, cfg(pos_token_prob=1.0), np.random.default_rng(0))
    assert on["texts"][1] == "" and not on["key_token_mask"][1].any()
    assert on["key_token_mask"][0].any() and on["key_token_mask"][2].any()


def test_importance_weighting_values(tok):
    out = build_text_inputs(["LAC是个优秀的分词工具"], tok, 16,
                            cfg(selector="importance", min_importance=1, importance_weighting=True),
                            np.random.default_rng(0), training=False)
    tokens = tok.convert_ids_to_tokens(out["input_ids"][0].tolist())
    weights = {t: round(float(m), 3) for t, m in zip(tokens, out["key_token_mask"][0]) if m > 0}
    # LAC importance: LAC 3, 优秀 2, 分词 3, 工具 1 -> importance / 3
    assert weights == {"la": 1.0, "##c": 1.0, "优": 0.667, "秀": 0.667, "分": 1.0, "词": 1.0, "工": 0.333, "具": 0.333}


def test_precomputed_analyses_are_used_and_checked(tok):
    caption = "一辆红色的汽车"
    analyses = [[{"text": "汽车", "tag": "n", "start": 5, "end": 7, "importance": 3}],
                {"keywords": [{"text": "red", "tag": "a", "start": 2, "end": 5, "importance": 2}]},
                None,
                [{"text": "汽车", "tag": "n", "start": 0, "end": 2, "importance": 3}]]  # stale: re-analysed
    captions = [caption, "a red car", caption, caption]
    out = build_text_inputs(captions, tok, 12, cfg(), np.random.default_rng(0), analyses=analyses, training=False)
    assert marked(tok, out, 0) == ["汽", "车"]  # only what the annotation says
    assert marked(tok, out, 1) == ["red"]
    assert marked(tok, out, 2) == ["一", "辆", "红", "色", "汽", "车"]  # analysed on the fly
    assert marked(tok, out, 3) == marked(tok, out, 2)
    with pytest.raises(ValueError, match="analyses: 1 entries for 4 captions"):
        build_text_inputs(captions, tok, 12, cfg(), np.random.default_rng(0), analyses=[None])
    with pytest.raises(ValueError, match=r"analyses\[0\]\[0\].tag"):
        build_text_inputs([caption], tok, 12, cfg(), np.random.default_rng(0),
                          analyses=[[{"text": "汽车", "tag": "zz", "start": 5, "end": 7}]])
    with pytest.raises(TypeError):
        build_text_inputs("a red car", tok, 12, cfg(), np.random.default_rng(0))


def test_falls_back_to_paddlenlp_offsets_when_replay_disagrees(tok, monkeypatch, caplog):
    import weakref

    from ernie_vilg2.knowledge.textual import alignment, inputs

    def broken(tokenizer, text):
        raise alignment._Unsupported("test")

    monkeypatch.setattr(inputs, "_ROW_MEMOS", weakref.WeakKeyDictionary())  # rows aligned by earlier tests
    monkeypatch.setattr(alignment, "token_char_spans", broken)
    monkeypatch.setattr(alignment, "_warned_fallback", False)
    out = build_text_inputs(["一辆红色的汽车", "a red car"], tok, 16, cfg(), np.random.default_rng(0), training=False)
    assert marked(tok, out, 0) == ["一", "辆", "红", "色", "汽", "车"]
    assert marked(tok, out, 1) == ["red", "car"]
    assert "falls back to PaddleNLP offsets" in caplog.text


def test_repeated_captions_are_analysed_and_aligned_once_with_the_same_rows(tok, monkeypatch):
    import weakref

    from ernie_vilg2.knowledge.textual import alignment, inputs
    from ernie_vilg2.knowledge.textual.analysis import get_analyzer

    captions = ["一只红色的苹果在香蕉的左边", "a red apple to the left of a banana", "", "一只红色的苹果在香蕉的左边"]
    analyzer = get_analyzer()
    monkeypatch.setattr(analyzer, "_memo", inputs.LruDict(8))
    monkeypatch.setattr(inputs, "_ROW_MEMOS", weakref.WeakKeyDictionary())
    calls = {"analysed": [], "aligned": 0}
    analyse, align = analyzer._analyze, alignment.token_char_spans

    def counting_analyse(texts, with_importance):
        calls["analysed"].append(list(texts))
        return analyse(texts, with_importance)

    def counting_align(tokenizer, text):
        calls["aligned"] += 1
        return align(tokenizer, text)

    monkeypatch.setattr(analyzer, "_analyze", counting_analyse)
    monkeypatch.setattr(alignment, "token_char_spans", counting_align)
    first = build_text_inputs(captions, tok, 24, cfg(pos_token_prob=1.0), np.random.default_rng(0))
    assert calls == {"analysed": [captions[:2]], "aligned": 2}  # the repeat within the batch too; "" has no words
    again = build_text_inputs(captions, tok, 24, cfg(pos_token_prob=1.0), np.random.default_rng(0))
    assert calls == {"analysed": [captions[:2]], "aligned": 2}
    plain = build_text_inputs(captions, tok, 24, cfg(pos_token_prob=0.0), np.random.default_rng(0))
    assert calls["analysed"] == [captions[:2]] and calls["aligned"] == 4  # without POS tokens: other texts
    for key in ("input_ids", "key_token_mask"):
        np.testing.assert_array_equal(first[key], again[key])
    assert first["texts"] == again["texts"] and first["texts"] != plain["texts"]
    assert "[n]" in first["texts"][0] and marked(tok, first, 1) == ["red", "apple", "left", "ba", "##nan", "##a"]
    # Each row is what a batch of that caption alone gives (no memo).
    monkeypatch.setattr(inputs, "_ROW_MEMOS", weakref.WeakKeyDictionary())
    monkeypatch.setattr(analyzer, "_memo", inputs.LruDict(8))
    alone = build_text_inputs(captions[1:2], tok, 24, cfg(pos_token_prob=0.0), np.random.default_rng(0))
    np.testing.assert_array_equal(alone["input_ids"][0], plain["input_ids"][1])
    np.testing.assert_array_equal(alone["key_token_mask"][0], plain["key_token_mask"][1])
    empty = build_text_inputs([], tok, 24, cfg(), np.random.default_rng(0))
    assert empty["input_ids"].shape == (0, 24) and empty["key_token_mask"].shape == (0, 24)
