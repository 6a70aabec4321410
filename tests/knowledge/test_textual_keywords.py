"""Key-word quality: which words are selected, in English and Chinese (docs/knowledge.md).

The hand-checked prompt sets live in tests/fixtures/keywords_{en,zh}.tsv; the other tests pin
one rule each (spatial words, -ly nouns, function verbs, pronouns, typographic quotes).
"""
import logging
import os

import numpy as np
import pytest

from ernie_vilg2.knowledge.textual import (TextAnalyzer, TextualKnowledgeConfig, UserDict, build_text_inputs,
                                           select_keywords)
from ernie_vilg2.knowledge.textual import alignment
from ernie_vilg2.knowledge.textual.english import EnglishTagger, ly_word_tag
from ernie_vilg2.knowledge.textual.tags import DEFAULT_KEYWORD_TAGS, english_importance
from ernie_vilg2.text.tokenizer import build_tokenizer

from helpers.paths import FIXTURES

DATA = FIXTURES


def read_set(name):
    """[(prompt, expected words)] of a TSV test set (comments and notes skipped)."""
    rows = []
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.strip() and not line.startswith("#"):
                prompt, expected = line.split("\t")[:2]
                rows.append((prompt, expected.split()))
    return rows


EN_SET = read_set("keywords_en.tsv")
ZH_SET = read_set("keywords_zh.tsv")


@pytest.fixture(scope="module")
def analyzer():
    return TextAnalyzer()


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def cfg(**kw):
    return TextualKnowledgeConfig(enabled=True, **kw)


def selected(analyzer, prompts):
    out = []
    for prompt, words in zip(prompts, analyzer.analyze(prompts)):
        out.append([prompt[k.start:k.end] for k in select_keywords(words, cfg())])
    return out


def tags_of(words):
    return {w.text: w.tag for w in words}


def test_the_sets_are_large_enough():
    assert len(EN_SET) >= 40 and len(ZH_SET) >= 40


@pytest.mark.parametrize("rows", [EN_SET, ZH_SET], ids=["en", "zh"])
def test_hand_checked_key_words(analyzer, rows):
    prompts = [p for p, _ in rows]
    got = selected(analyzer, prompts)
    wrong = [(p, want, have) for (p, want), have in zip(rows, got) if want != have]
    assert not wrong, "\n".join(f"{p!r}: expected {want}, selected {have}" for p, want, have in wrong)


# ------------------------------------------------------------------------ spatial words


def test_spatial_words_are_direction_nouns_in_both_languages(analyzer):
    en, zh = analyzer.analyze(["a red apple to the left of a cat face, a frog above an octopus",
                               "红苹果在猫脸的左边，青蛙在章鱼的上面，海边"])
    assert tags_of(en)["left"] == "f" and tags_of(en)["above"] == "f"
    assert tags_of(zh)["左边"] == "f" and tags_of(zh)["上面"] == "f" and tags_of(zh)["海边"] == "s"
    for words, spatial in ((en, {"left", "above"}), (zh, {"左边", "上面", "海边"})):
        keys = {w.text: k for w in words for k in select_keywords([w], cfg())}
        assert spatial <= set(keys)
        assert {keys[s].pos for s in spatial} == {"n"}  # POS token [n], as for LAC's f/s
    assert {"f", "s"} <= set(DEFAULT_KEYWORD_TAGS)


@pytest.mark.parametrize("text", ["on the left of a tree", "to the left of a tree", "left of a tree",
                                  "the cat's left paw", "at the top left", "in the left corner"])
def test_left_is_spatial_not_a_verb(text):
    # TextBlob's lexicon says "left" is VBN whatever the context.
    assert tags_of(EnglishTagger().analyze(text))["left"] == "f"


def test_left_as_a_verb_stays_a_verb():
    assert tags_of(EnglishTagger().analyze("the dog left the room"))["left"] == "v"


# ------------------------------------------------------------------------ -ly words


@pytest.mark.parametrize("word", ["dragonfly", "firefly", "housefly", "mayfly", "damselfly", "holly", "brolly"])
def test_unknown_ly_nouns_are_nouns(word):
    # Unknown to TextBlob's lexicon, so its suffix rule called them adverbs (RB -> d).
    assert tags_of(EnglishTagger().analyze(f"a {word} on a leaf"))[word] == "n"


def test_known_ly_nouns_stay_nouns():
    tags = tags_of(EnglishTagger().analyze("a lily, a family, a jelly, a belly and a bully"))
    assert [tags[w] for w in ("lily", "family", "jelly", "belly", "bully")] == ["n"] * 5


@pytest.mark.parametrize("word, penn", [("majestically", "RB"), ("photorealistically", "RB"), ("wholly", "RB"),
                                        ("gleefully", "RB"), ("sparkly", "JJ"), ("dragonfly", "NN")])
def test_ly_word_tag_decides_by_the_stem(word, penn):
    assert ly_word_tag(word) == penn


def test_ly_adverbs_stay_adverbs():
    tags = tags_of(EnglishTagger().analyze("an eagle flying majestically and a dog sleeping gently"))
    assert tags["majestically"] == "d" and tags["gently"] == "d"


# ------------------------------------------------------------ function verbs, pronouns


AUXILIARIES = ("is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "do", "does", "did",
               "can", "could", "will", "would", "shall", "should", "may", "might", "must")


@pytest.mark.parametrize("aux", AUXILIARIES)
def test_auxiliaries_and_modals_are_not_key_words(analyzer, aux):
    prompt = f"the cat {aux} sitting"
    (words,) = analyzer.analyze([prompt])
    assert aux not in [prompt[k.start:k.end] for k in select_keywords(words, cfg())]
    importance = cfg(selector="importance", min_importance=1)
    assert aux not in [prompt[k.start:k.end] for k in select_keywords(words, importance)]


def test_a_function_word_as_a_noun_is_a_key_word(analyzer):
    assert selected(analyzer, ["the can is on the shelf"]) == [["can", "shelf"]]


def test_english_importance_mirrors_lac():
    # LAC ranks 是/有 0 and direction nouns 1; English nouns 3, verbs 2.
    assert english_importance("is", "v") == 0 and english_importance("left", "f") == 1
    assert english_importance("sitting", "v") == 2 and english_importance("cat", "n") == 3


def test_zai_and_zhege_are_not_key_words(analyzer):
    prompt = "这个绿色立方体在底部。"  # ViLG-300
    tags = tags_of(analyzer.analyze([prompt])[0])
    assert tags["在"] == "v" and tags["这个"] == "r"  # what LAC says
    assert selected(analyzer, [prompt]) == [["绿色", "立方体", "底部"]]


def test_pronouns_are_not_key_words(analyzer):
    got = selected(analyzer, ["There is a cat on its bed and it is small", "它们在这个房子里"])
    assert got == [["cat", "bed", "small"], ["房子", "里"]]
    assert "r" not in DEFAULT_KEYWORD_TAGS
    with_r = [w.text for w in analyzer.analyze(["它在这里"])[0] if select_keywords([w], cfg(keyword_tags=["r"]))]
    assert "它" in with_r  # r is still a tag a config may select


# ------------------------------------------------------------------ typographic quotes


@pytest.mark.parametrize("apostrophe", ["’", "'", "ʼ", "´", "`"])
def test_possessive_apostrophe_is_a_particle_not_a_pronoun(analyzer, apostrophe):
    prompt = f"a corgi{apostrophe}s face"
    (words,) = analyzer.analyze([prompt])
    assert [(w.text, w.tag) for w in words] == [("a", "xc"), ("corgi", "n"), (f"{apostrophe}s", "u"), ("face", "n")]
    assert all(prompt[w.start:w.end] == w.text for w in words)  # the caption's own characters


def test_contraction_its_is_a_function_verb(analyzer):
    (words,) = analyzer.analyze(["It’s a cat"])
    assert [(w.text, w.tag) for w in words] == [("It", "r"), ("’s", "v"), ("a", "xc"), ("cat", "n")]
    assert selected(analyzer, ["It’s a cat"]) == [["cat"]]


def test_curly_quotes_align_without_unk_or_fallback(tok, monkeypatch, caplog):
    monkeypatch.setattr(alignment, "_warned_fallback", False)
    with caplog.at_level(logging.WARNING):
        out = build_text_inputs(["a corgi’s “vintage” face"], tok, 24, cfg(), np.random.default_rng(0),
                                training=False)
    assert "falls back" not in caplog.text
    tokens = tok.convert_ids_to_tokens(out["input_ids"][0].tolist())
    assert "[UNK]" not in tokens
    assert [t for t, m in zip(tokens, out["key_token_mask"][0]) if m] == ["co", "##r", "##gi", "vi", "##nt", "##age", "face"]


def test_precomputed_words_with_curly_quotes_still_match(tok, caplog):
    caption = "a corgi’s face"
    stored = [w.to_dict() for w in TextAnalyzer().analyze([caption])[0]]  # as extract_knowledge writes it
    with caplog.at_level(logging.WARNING):
        out = build_text_inputs([caption], tok, 16, cfg(), np.random.default_rng(0), analyses=[stored],
                                training=False)
    assert "stale annotation" not in caplog.text
    assert out["key_token_mask"][0].sum() == 4  # co ##r ##gi face


def test_user_dictionary_matches_across_quote_styles():
    for entry, caption in (("rock 'n' roll\tn", "a rock ’n’ roll band"), ("rock ’n’ roll\tn", "a rock 'n' roll band")):
        words = TextAnalyzer(user_dict=UserDict.from_lines([entry])).analyze([caption])[0]
        assert (caption[2:15], "n") in [(w.text, w.tag) for w in words]


# ----------------------------------------------------------- WordPiece fragments


def test_emphasis_covers_every_fragment_of_every_key_word(analyzer, tok):
    # The vocabulary is the Chinese BERT one: many English words are split
    # (giraffe -> gi ##ra ##ff ##e); a key word's emphasis must cover all its pieces.
    out = build_text_inputs(["a giraffe to the left of a dragonfly"], tok, 32, cfg(), np.random.default_rng(0),
                            training=False)
    tokens = tok.convert_ids_to_tokens(out["input_ids"][0].tolist())
    assert [t for t, m in zip(tokens, out["key_token_mask"][0]) if m] == \
        ["gi", "##ra", "##ff", "##e", "left", "dragon", "##fly"]
    prompts = [p for p, _ in EN_SET + ZH_SET]
    out = build_text_inputs(prompts, tok, 64, cfg(), np.random.default_rng(0), training=False)
    split_words = 0
    for i, (prompt, words) in enumerate(zip(prompts, analyzer.analyze(prompts))):
        spans = alignment.aligned_spans(tok, out["texts"][i], out["input_ids"][i], 64)
        keys = select_keywords(words, cfg())
        for k in keys:
            pieces = [j for j, (s, e) in enumerate(spans) if s < k.end and k.start < e]
            assert pieces and all(out["key_token_mask"][i][j + 1] == 1 for j in pieces), (prompt, k)
            split_words += len(pieces) > 1
        outside = [j for j, (s, e) in enumerate(spans) if not any(s < k.end and k.start < e for k in keys)]
        assert not out["key_token_mask"][i][[j + 1 for j in outside]].any(), prompt
    assert split_words > 50  # the property was exercised on many split words
