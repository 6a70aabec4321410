"""One tag set for Chinese and English words.

The shared set is the tag set LAC prints (its README's table): common tags plus the
name tags PER / LOC / ORG / TIME, which LAC prints instead of nr / ns / nt / t (those
older names are accepted as aliases). English Penn-Treebank tags from the TextBlob
tagger are mapped onto it, so key-word selection and POS tokens treat both languages
alike.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from ernie_vilg2.text.normalize import normalize_text
from ernie_vilg2.text.tokenizer import POS_TAGS

# tag -> meaning (LAC's table; names first).
TAGS: Dict[str, str] = {
    "PER": "person name",
    "LOC": "place name",
    "ORG": "organisation name",
    "TIME": "time",
    "n": "common noun",
    "f": "direction noun",
    "s": "place noun",
    "nw": "work title",
    "nz": "other proper noun",
    "v": "verb",
    "vd": "verb used as adverb",
    "vn": "verb used as noun",
    "a": "adjective",
    "ad": "adjective used as adverb",
    "an": "adjective used as noun",
    "d": "adverb",
    "m": "numeral",
    "q": "quantifier",
    "r": "pronoun",
    "p": "preposition",
    "c": "conjunction",
    "u": "particle",
    "xc": "other function word",
    "w": "punctuation",
}

# Older LAC / PKU names of the name tags.
TAG_ALIASES: Dict[str, str] = {"nr": "PER", "ns": "LOC", "nt": "ORG", "t": "TIME"}

# Fine tag -> coarse tag of POS_TAGS (the POS token that may precede the word).
# Names and the other noun kinds are nouns ([n]).
COARSE: Dict[str, str] = {
    "n": "n", "f": "n", "s": "n", "nw": "n", "nz": "n",
    "PER": "n", "LOC": "n", "ORG": "n", "TIME": "n",
    "v": "v", "vd": "v", "vn": "v",
    "a": "a", "ad": "a", "an": "a",
    "m": "m", "q": "q", "r": "r",
}
assert set(COARSE.values()) == set(POS_TAGS)

# Key-word tags by default (docs/knowledge.md has the table and the reasons):
# nouns incl. names and times, direction/place nouns (spatial words: the built-in scenes
# caption exactly these relations), verbs, adjectives, numerals, quantifiers. Not pronouns
# (r: "it", "there", 这个 name nothing visible themselves), adverbs, function words.
DEFAULT_KEYWORD_TAGS: Tuple[str, ...] = (
    "n", "f", "s", "nw", "nz", "PER", "LOC", "ORG", "TIME",
    "v", "vd", "vn",
    "a", "ad", "an",
    "m", "q",
)

VERB_TAGS = frozenset({"v", "vd", "vn"})
# Verbs that carry grammar, not a picture: copulas, auxiliaries, modals and existential
# "have" in English, and their Chinese counterparts (是 "be", 在 "be at", 有/没有 "there
# is / has (not)", modal 会/能/可以/应该 ...). Never key words while tagged as verbs; the
# same word as a noun ("a tin can", "the will") is left alone. Applied at selection
# time, so annotation files written earlier follow it too.
FUNCTION_VERBS = frozenset({
    "be", "am", "is", "are", "was", "were", "been", "being", "'s", "'re", "'m",
    "have", "has", "had", "'ve", "'d",
    "do", "does", "did",
    "can", "could", "will", "would", "shall", "should", "may", "might", "must", "ought", "'ll",
    "ca", "wo", "sha",  # of "can't", "won't", "shan't"
    "是", "在", "有", "没有", "会", "能", "能够", "可以", "可能", "应该", "应当", "必须",
})


def is_function_verb(word: str, tag: str) -> bool:
    """Whether ``word`` tagged ``tag`` is a grammatical verb (:data:`FUNCTION_VERBS`)."""
    return tag in VERB_TAGS and normalize_text(word).lower() in FUNCTION_VERBS  # "it’s"


# Penn Treebank (TextBlob) -> shared tags. Punctuation is decided by the token's
# characters, not here (the lexicon tagger calls "|" or "~" a noun).
PENN_TO_SHARED: Dict[str, str] = {
    "NN": "n", "NNS": "n", "NNP": "nz", "NNPS": "nz", "FW": "nz",
    "VB": "v", "VBD": "v", "VBG": "v", "VBN": "v", "VBP": "v", "VBZ": "v", "MD": "v",
    "JJ": "a", "JJR": "a", "JJS": "a",
    "RB": "d", "RBR": "d", "RBS": "d", "WRB": "d",
    "CD": "m",
    "PRP": "r", "PRP$": "r", "WP": "r", "WP$": "r", "WDT": "r", "EX": "r",
    "DT": "xc", "PDT": "xc", "UH": "xc",
    "IN": "p", "TO": "p",
    "CC": "c",
    "RP": "u", "POS": "u",
}
# Determiners that are pronouns in LAC's terms (这/那 are r): the rest ("a", "the") are
# function words.
DEMONSTRATIVES = frozenset({"this", "that", "these", "those"})

# English has no word-importance model: importance (LAC's 0-3 scale) from the tag, so
# importance selection and weighting also work on English prompts. Like LAC's ranks:
# direction nouns 1 (LAC ranks 左边/上 1), function verbs 0 (是/有/在 0).
_ENGLISH_IMPORTANCE: Dict[Optional[str], int] = {"n": 3, "v": 2, "a": 2, "m": 2, "q": 1, "r": 1}


def normalize_tag(tag: str) -> Optional[str]:
    """The shared tag for ``tag`` (aliases resolved), or None when it is unknown."""
    tag = TAG_ALIASES.get(tag, tag)
    return tag if tag in TAGS else None


def coarse_tag(tag: str) -> Optional[str]:
    """The POS-token tag (one of POS_TAGS) of a shared tag, or None (no POS token)."""
    return COARSE.get(TAG_ALIASES.get(tag, tag))


def penn_to_shared(word: str, penn_tag: str) -> str:
    """Map a Penn Treebank tag of ``word`` onto the shared tag set."""
    if not any(ch.isalnum() for ch in word):
        return "w"
    if penn_tag in ("DT", "PDT") and word.lower() in DEMONSTRATIVES:
        return "r"
    return PENN_TO_SHARED.get(penn_tag, "xc")


def english_importance(word: str, tag: str) -> int:
    """Importance 0-3 of an English word from its shared tag (nouns 3 ... function words 0)."""
    if tag == "f":
        return 1
    if is_function_verb(word, tag):
        return 0
    return _ENGLISH_IMPORTANCE.get(coarse_tag(tag), 0)
