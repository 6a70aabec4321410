"""Textual knowledge, lexical side: LAC runner, English tagger, user dictionary, ViLG-300."""
import csv

import pytest

from ernie_vilg2.config import ConfigError, from_dict
from ernie_vilg2.knowledge.textual import (TextAnalyzer, TextualKnowledgeConfig, UserDict, select_keywords)
from ernie_vilg2.knowledge.textual.english import EnglishTagger, english_tokens
from ernie_vilg2.knowledge.textual.lac import LacRunner
from ernie_vilg2.knowledge.textual.tags import coarse_tag, penn_to_shared


@pytest.fixture(scope="module")
def lac():
    return LacRunner()


@pytest.fixture(scope="module")
def analyzer():
    return TextAnalyzer()


def pairs(words):
    return [(w.text, w.tag) for w in words]


# ------------------------------------------------------------------- LAC runner

# Examples documented by the LAC project (README of LAC 2.x: "词性标注与实体识别",
# "词语重要性", "定制化功能").
LAC_README = {
    "百度是一家高科技公司": ([("百度", "ORG"), ("是", "v"), ("一家", "m"), ("高科技", "n"), ("公司", "n")],
                    [3, 0, 2, 3, 1]),
    "LAC是个优秀的分词工具": ([("LAC", "nz"), ("是", "v"), ("个", "q"), ("优秀", "a"), ("的", "u"), ("分词", "n"),
                       ("工具", "n")], [3, 0, 0, 2, 0, 3, 1]),
}


def test_lac_reproduces_readme_tags_and_importance(lac):
    texts = list(LAC_README)
    for text, words in zip(texts, lac.analyze(texts, with_importance=True)):
        expected_pairs, expected_rank = LAC_README[text]
        assert pairs(words) == expected_pairs
        assert [w.importance for w in words] == expected_rank
        assert all(text[w.start:w.end] == w.text for w in words)


def test_lac_customization_example_before_dictionary(lac):
    # README: 春天/TIME 的/u 花开/v 秋天/TIME 的/u 风/n 以及/c 冬天/TIME 的/u 落阳/n. The model
    # files shipped in LAC 2.1.2 tag 落阳 "vn" (as the C++ README of the project documents).
    (words,) = lac.analyze(["春天的花开秋天的风以及冬天的落阳"])
    assert pairs(words) == [("春天", "TIME"), ("的", "u"), ("花开", "v"), ("秋天", "TIME"), ("的", "u"), ("风", "n"),
                            ("以及", "c"), ("冬天", "TIME"), ("的", "u"), ("落阳", "vn")]


def test_lac_batch_equals_single_and_handles_empty(lac):
    texts = ["一只戴着墨镜的柯基", "", "百度是一家高科技公司", "   "]
    batched = lac.analyze(texts, with_importance=True)
    assert batched[1] == []
    for text, words in zip(texts, batched):
        if text:
            assert words == lac.analyze([text], with_importance=True)[0]
    assert LacRunner(batch_size=1).analyze(texts) == lac.analyze(texts)
    assert "".join(w.text for w in batched[0]) == texts[0]


def test_lac_without_importance_leaves_it_unset(lac):
    (words,) = lac.analyze(["百度是一家高科技公司"])
    assert all(w.importance is None for w in words)


# ---------------------------------------------------------------- English tagger


def test_english_tokens_keep_offsets_and_split_contractions():
    text = "A girl's cat can't jump over 3.5 black-and-white fences."
    spans = english_tokens(text)
    assert [text[s:e] for s, e in spans] == ["A", "girl", "'s", "cat", "ca", "n't", "jump", "over", "3.5",
                                             "black-and-white", "fences", "."]


def test_english_tagger_maps_to_shared_tags():
    words = EnglishTagger().analyze("An astronaut riding a red horse, by Van Gogh")
    tags = dict(pairs(words))
    assert tags["astronaut"] == "n" and tags["horse"] == "n"
    assert tags["riding"] == "v" and tags["red"] == "a"
    assert tags["An"] == "xc" and tags["a"] == "xc" and tags[","] == "w" and tags["by"] == "p"
    assert tags["Van"] == "nz"  # proper noun -> noun key word, POS token [n]
    assert coarse_tag("nz") == "n" and coarse_tag("PER") == "n" and coarse_tag("p") is None
    assert penn_to_shared("this", "DT") == "r" and penn_to_shared("|", "NN") == "w"


# ----------------------------------------------------------- mixed and analyzer


def test_mixed_prompt_runs_have_offsets_into_the_original(analyzer):
    text = "一只cute猫 sitting在桌子上"
    (words,) = analyzer.analyze([text])
    assert all(text[w.start:w.end] == w.text for w in words)
    found = pairs(words)
    assert ("cute", "a") in found and ("sitting", "v") in found
    assert ("猫", "n") in found and ("桌子", "n") in found


def test_symbols_do_not_glue_to_chinese_words(analyzer):
    # LAC alone makes "😀猫" one word; the analyzer keeps emoji out of its input.
    (words,) = analyzer.analyze(["我爱😀猫 ☃"])
    assert pairs(words) == [("我", "r"), ("爱", "v"), ("猫", "n")]
    assert words[-1].start == 3


# --------------------------------------------------------------- user dictionary


def test_user_dictionary_readme_example(tmp_path):
    # README dictionary with its custom tag SEASON replaced by a tag of the shared set.
    path = tmp_path / "custom.txt"
    path.write_text("春天/nz\n花/n 开/v\n秋天的风\n落 阳\n", encoding="utf-8")
    (words,) = TextAnalyzer(user_dict=str(path)).analyze(["春天的花开秋天的风以及冬天的落阳"])
    assert pairs(words) == [("春天", "nz"), ("的", "u"), ("花", "n"), ("开", "v"), ("秋天的风", "n"), ("以及", "c"),
                            ("冬天", "TIME"), ("的", "u"), ("落", "vn"), ("阳", "vn")]


def test_user_dictionary_marks_colours_as_adjectives(tmp_path, analyzer):
    cfg = TextualKnowledgeConfig(enabled=True)
    text = "一辆红色的汽车"
    (plain,) = analyzer.analyze([text])
    assert ("红色", "n") in pairs(plain)  # what LAC says
    path = tmp_path / "colours.txt"
    path.write_text("# colours\n红色/a\n粉红色 a\nice cream\tn\n", encoding="utf-8")
    custom = TextAnalyzer(user_dict=str(path))
    (words,) = custom.analyze([text])
    assert ("红色", "a") in pairs(words)
    assert [k.pos for k in select_keywords(words, cfg) if text[k.start:k.end] == "红色"] == ["a"]
    (words,) = custom.analyze(["一辆粉红色的汽车"])
    assert ("粉红色", "a") in pairs(words)
    (words,) = custom.analyze(["Ice Cream on a table, icecreamy"])
    assert ("Ice Cream", "n") in pairs(words)


def test_user_dictionary_english_matches_whole_words_only():
    ud = UserDict.from_lines(["cat/v"])
    words = EnglishTagger().analyze("a cat and a catalog")
    out = ud.apply("a cat and a catalog", words)
    assert ("cat", "v") in pairs(out) and ("catalog", "n") in pairs(out)


def test_user_dictionary_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("红色/a\n春天/SEASON\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.txt:2: unknown tag 'SEASON'"):
        TextAnalyzer(user_dict=str(path))
    with pytest.raises(FileNotFoundError):
        TextAnalyzer(user_dict=str(tmp_path / "missing.txt"))


# ------------------------------------------------------------------------ config


def test_config_validation(tmp_path):
    cfg = from_dict(TextualKnowledgeConfig, {"enabled": True, "keyword_tags": ["n", "nr"]}, "textual_knowledge")
    assert cfg.keyword_tags == ["n", "PER"]  # alias resolved
    for bad, field in [({"pos_token_prob": 1.5}, "pos_token_prob"), ({"w_t": -0.1}, "w_t"),
                       ({"keyword_tags": ["n", "xyz"]}, "keyword_tags"), ({"selector": "tfidf"}, "selector"),
                       ({"min_importance": 4}, "min_importance"),
                       ({"user_dict": str(tmp_path / "none.txt")}, "user_dict"),
                       ({"annotations": str(tmp_path)}, "annotations"), ({"pos_tokens": "yes"}, "pos_tokens")]:
        with pytest.raises(ConfigError) as err:
            from_dict(TextualKnowledgeConfig, bad, "textual_knowledge")
        assert err.value.field == f"textual_knowledge.{field}"


def test_importance_selector_and_weighting(lac):
    (words,) = lac.analyze(["LAC是个优秀的分词工具"], with_importance=True)  # importance 3 0 0 2 0 3 1
    cfg = TextualKnowledgeConfig(enabled=True, selector="importance", min_importance=2, importance_weighting=True)
    keys = select_keywords(words, cfg)
    assert [(k.start, k.end, round(k.weight, 3)) for k in keys] == [(0, 3, 1.0), (5, 7, 0.667), (8, 10, 1.0)]
    pos_keys = select_keywords(words, TextualKnowledgeConfig(enabled=True))
    # 的/u is not a content word, 是/v is a function verb
    assert [k.tag for k in pos_keys] == ["nz", "q", "a", "n", "n"]
    assert all(k.weight == 1.0 for k in pos_keys)


# ----------------------------------------------------------------------- ViLG-300


def test_vilg300_prompts_parse_and_have_keywords(vilg300_csv, analyzer):
    with open(vilg300_csv, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 300
    cfg = TextualKnowledgeConfig(enabled=True)
    for column in ("Prompt", "文本"):
        prompts = [row[column] for row in rows]
        analysed = analyzer.analyze(prompts, with_importance=True)
        for prompt, words in zip(prompts, analysed):
            assert words, prompt
            assert all(prompt[w.start:w.end] == w.text and w.importance in (0, 1, 2, 3) for w in words), prompt
            assert select_keywords(words, cfg), f"no key word in {prompt!r}"
