"""The deploy runner's pure-Python tokenizer gives exactly the ids of a saved pipeline's
tokenizer (PaddleNLP ErnieTokenizer + POS tokens, loaded as ErnieViLG2Pipeline loads it)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from ernie_vilg2.deploy.export import TOKENIZER_PROBES, tokenizer_spec, write_vocab
from ernie_vilg2.deploy.tokenizer import WordPieceTokenizer
from ernie_vilg2.text.tokenizer import tokenize
from ernie_vilg2.utils.prompts import read_prompts

TRICKY = [
    "红苹果在猫脸的左边", "a red apple to the left of a cat face", "一只red apple在桌子上",
    "Hello, WORLD!!", "[n]猫 [a]红色的 [N] [CLS] [cls] [MASK]x", "naïve café ÉCOLE Ångström",
    "“smart” ‘quotes’ — dashes – and corgi’s", "Ｆｕｌｌ　ｗｉｄｔｈ １２３ ＡＢＣ", "emoji 🍎😀🐱‍👤 and ♥ ★ ©",
    "x² µ ½ 〇 ŋ Ø", "tab\tnew\nline\r\x00nul\ufffd\u200bzw\u00adsoft", "ΣΑΣ ΟΔΟΣ", "日本語のテキスト 한국어",
    "supercalifragilisticexpialidocious unaffable", "a" * 101, "  leading and trailing spaces  ",
    "数字123和english混合ABC", "(括号)[brackets]{braces}<angle>", "[n][v][a]", "[", "x[n", "[unk] [UNK]",
]


@pytest.fixture(scope="module")
def saved_tokenizer(tiny_pipeline_dir):
    """The tokenizer as a loaded pipeline has it (what the exporter reads)."""
    from ppdiffusers.transformers import ErnieTokenizer

    return ErnieTokenizer.from_pretrained(f"{tiny_pipeline_dir}/tokenizer")


@pytest.fixture(scope="module")
def exported_tokenizer(saved_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy_tokenizer")
    write_vocab(saved_tokenizer, str(folder / "tokenizer" / "vocab.txt"))
    return str(folder), tokenizer_spec(saved_tokenizer, 16)


def _ours(exported, max_length):
    folder, spec = exported
    return WordPieceTokenizer.from_manifest(folder, {**spec, "max_length": max_length})


def test_vocab_file_holds_every_id_including_the_pos_tokens(exported_tokenizer, saved_tokenizer):
    folder, spec = exported_tokenizer
    lines = open(f"{folder}/{spec['vocab']}", encoding="utf-8").read().split("\n")[:-1]
    assert len(lines) == len(saved_tokenizer) == 21128 + 6
    assert lines[-6:] == ["[n]", "[v]", "[a]", "[m]", "[q]", "[r]"]
    assert saved_tokenizer.convert_tokens_to_ids(lines[-6:]) == list(range(21128, 21134))
    assert set(spec["never_split"]) >= {"[n]", "[CLS]", "[SEP]", "[PAD]", "[UNK]"}


@pytest.mark.parametrize("max_length", [16, 77])
def test_ids_equal_the_training_tokenizer_on_tricky_text(exported_tokenizer, saved_tokenizer, max_length):
    ours = _ours(exported_tokenizer, max_length)(TRICKY + list(TOKENIZER_PROBES))
    ref = tokenize(saved_tokenizer, TRICKY + list(TOKENIZER_PROBES), max_length)
    assert ours.dtype == np.int64 and ours.shape == ref.shape
    for text, a, b in zip(TRICKY + list(TOKENIZER_PROBES), ours, ref):
        assert a.tolist() == b.tolist(), text


def test_ids_equal_the_training_tokenizer_on_vilg300(exported_tokenizer, saved_tokenizer, vilg300_csv):
    prompts = read_prompts(vilg300_csv, column="文本") + read_prompts(vilg300_csv, column="Prompt")
    assert len(prompts) == 600
    np.testing.assert_array_equal(_ours(exported_tokenizer, 64)(prompts), tokenize(saved_tokenizer, prompts, 64))


def test_overlong_prompt_is_cut_to_max_length_with_a_warning(exported_tokenizer, caplog):
    ours = _ours(exported_tokenizer, 16)
    with caplog.at_level(logging.WARNING):
        ids = ours(["红" * 40, "红"])
    assert ids[0, 0] == ours.cls_id and ids[0, -1] == ours.sep_id and (ids[0, 1:-1] == ids[1, 1]).all()
    assert ids[1, 2] == ours.sep_id and (ids[1, 3:] == ours.pad_id).all()
    assert [r for r in caplog.records if "truncated" in r.getMessage()]


def test_unknown_special_token_in_the_manifest_is_named(exported_tokenizer):
    folder, spec = exported_tokenizer
    with pytest.raises(ValueError, match="tokenizer.cls_token"):
        WordPieceTokenizer.from_manifest(folder, {**spec, "cls_token": "<s>"})
