"""Typographic quotes and dashes are normalised before tokenizing (no [UNK], same offsets)."""
from ernie_vilg2.text.normalize import normalize_text
from ernie_vilg2.text.tokenizer import build_tokenizer, tokenize


def test_normalize_is_one_to_one():
    text = "the corgi’s “hat” — red ‘ok’ 1−2"
    out = normalize_text(text)
    assert out == "the corgi's \"hat\" - red 'ok' 1-2"
    assert len(out) == len(text)
    assert normalize_text("红苹果在猫脸的左边") == "红苹果在猫脸的左边"


def test_typographic_prompt_tokenizes_like_ascii_without_unk():
    tok = build_tokenizer(max_length=16)
    curly = tokenize(tok, ["the corgi’s “hat” — red"], 16)
    ascii_ = tokenize(tok, ["the corgi's \"hat\" - red"], 16)
    assert (curly == ascii_).all()
    assert tok.unk_token_id not in curly


def test_other_apostrophes_become_ascii_without_unk():
    # ʼ (a letter: "corgiʼs" would be one unknown word), ´ and ` are typed as apostrophes too.
    tok = build_tokenizer(max_length=16)
    ascii_ = tokenize(tok, ["the corgi's hat"], 16)
    for apostrophe in "ʼ´`":
        text = f"the corgi{apostrophe}s hat"
        assert normalize_text(text) == "the corgi's hat"
        assert (tokenize(tok, [text], 16) == ascii_).all()


def test_fresh_tokenizer_equals_the_saved_and_loaded_one(tmp_path):
    from paddlenlp.transformers import ErnieTokenizer

    fresh = build_tokenizer(max_length=16)
    fresh.save_pretrained(str(tmp_path))
    loaded = ErnieTokenizer.from_pretrained(str(tmp_path))
    prompts = ["[CLS]x [MASK] [n]猫 [SEP]", "a [PAD] b [UNK]", "红苹果在猫脸的左边"]
    assert len(fresh) == len(loaded)
    assert (tokenize(fresh, prompts, 16) == tokenize(loaded, prompts, 16)).all()
