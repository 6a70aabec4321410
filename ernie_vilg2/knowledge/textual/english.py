"""English part-of-speech tagging with TextBlob's bundled lexicon tagger.

Why TextBlob and not spaCy: its tagger (``textblob.en.tag``: Pattern's lexicon of ~100k
words plus Brill-style suffix and context rules) ships inside the wheel and needs no
download, while spaCy needs a
model package (``en_core_web_sm``) that is published on GitHub releases, not on PyPI, so
it cannot be installed here; TextBlob is also already a dependency and tags a prompt in
well under a millisecond. It has no named-entity recogniser: proper nouns (NNP) become
``nz``, which is still a noun key word.

TextBlob's own tokenizer mangles contractions ("can't" -> "ca", "n", "'", "t") and
gives no offsets, so we tokenize ourselves (Penn style, with character offsets) and
pass the tokens space-joined with ``tokenize=False``.

``textblob.en.tag`` is a lexicon lookup plus suffix rules for unknown words: the Brill
context rules that ship in the wheel (en-context.txt) are not applied by it (applying them
all was 17x slower and broke other words of ViLG-300: "during" -> VB, "grasshopper" -> VBG).
So a word always gets its lexicon tag ("left" is VBN even in "on the left of") and any
unknown word ending in -ly is an adverb ("dragonfly"). :func:`refine_tags` repairs these
with a few rules of our own that look at one neighbour at most:

* an unknown ``-ly`` word is an adverb only if it derives from an adjective
  ("majestically" <- "majestic", "gently" <- "gentle"); from a noun or verb it is an
  adjective ("sparkly" <- "spark"); with no known stem it is a noun ("dragonfly",
  "firefly", "holly");
* a base-form verb or modal right after an article or possessive is a noun ("the can",
  "a bear");
* "'s" after a pronoun is the verb "is" ("it's"), elsewhere the possessive particle.

Spatial words (:data:`SPATIAL_WORDS`: left, right, top, above, behind ...) get the
direction-noun tag ``f`` of LAC (左边, 上面, 后面), whatever their Penn tag (NN, JJ, RB,
IN); a verb reading ("the dog left the room") stays a verb unless an article, possessive,
preposition or adjective comes before it or "of" after it ("on the left of", "top left",
"left of the tree").
"""
from __future__ import annotations

import re
from typing import List, Tuple

from .tags import english_importance, penn_to_shared
from .words import Word

# Penn-style tokens: "do"+"n't", "girl"+"'s", words with inner hyphens/dots ("3.5",
# "black-and-white", "U.S"), any other non-space character alone.
_TOKEN = re.compile(
    r"[^\W_]+(?=n't\b)"  # "do" of "don't"
    r"|n't\b"
    r"|'(?:s|re|ve|ll|d|m)\b"
    r"|[^\W_]+(?:[-.][^\W_]+)*"
    r"|\S",
    re.IGNORECASE,
)


def english_tokens(text: str) -> List[Tuple[int, int]]:
    """Character spans of the Penn-style tokens of ``text``."""
    return [m.span() for m in _TOKEN.finditer(text)]


# Words whose job is to name a position or direction: the English side of LAC's direction
# nouns (f). Not on/in/at/over: in prompts they mostly mark grammar ("in the style of",
# "on fire", "at night", "over the years").
SPATIAL_WORDS = frozenset({
    "left", "right", "top", "bottom", "above", "below", "under", "underneath", "beneath",
    "behind", "front", "inside", "outside", "middle", "center", "centre", "beside", "between",
    "near", "atop",
})
_ARTICLES = frozenset({"a", "an", "the"})
_NOUN_CONTEXT_TAGS = frozenset({"DT", "PDT", "PRP$", "POS", "IN", "TO", "JJ", "CD"})
_BASE_VERB_TAGS = frozenset({"VB", "VBP", "MD"})
_ADJECTIVE_TAGS = frozenset({"JJ", "JJR", "JJS", "VBN", "VBG"})
_NOUN_OR_VERB_TAGS = frozenset({"NN", "NNS", "VB", "VBP", "VBZ", "VBD"})
# Suffixes of adjectives (as in TextBlob's own suffix rules) for adverbs of unknown stems.
_ADJECTIVE_SUFFIXES = ("able", "al", "ful", "ible", "ient", "ish", "ive", "less", "ic", "ous", "ant", "ent",
                       "ed", "ing")


def _lexicon():
    from textblob.en import lexicon  # lazy: only English prompts need it

    return lexicon


def _pattern_tag(tokens: List[str]) -> List[str]:
    from textblob.en import tag  # lazy: only English prompts need it

    if not tokens:
        return []
    tagged = tag(" ".join(tokens), tokenize=False)
    if len(tagged) != len(tokens):  # defensive: never misalign tags and offsets
        tagged = [tag(t, tokenize=False)[0] for t in tokens]
    return [penn for _, penn in tagged]


def ly_word_tag(word: str) -> str:
    """Penn tag of an unknown word ending in -ly (which TextBlob's suffix rule calls RB)."""
    lexicon = _lexicon()
    stem = word.lower()[:-2]
    bases = [stem, stem + "e", stem + "le", stem + "l"]  # quick-ly, tru-ly, gent-ly, ful-ly
    if stem.endswith("i"):
        bases.append(stem[:-1] + "y")  # happi-ly
    if stem.endswith("ical"):
        bases.append(stem[:-2])  # basic-al-ly
    if any(lexicon.get(b) in _ADJECTIVE_TAGS for b in bases) or stem.endswith(_ADJECTIVE_SUFFIXES):
        return "RB"
    if lexicon.get(stem) in _NOUN_OR_VERB_TAGS:
        return "JJ"  # spark-ly, crumb-ly: adjectives
    return "NN"  # dragonfly, firefly, holly: no stem, a noun


def refine_tags(tokens: List[str], penn: List[str]) -> List[str]:
    """TextBlob's Penn tags with the rules of the module docstring applied (a new list)."""
    out = list(penn)
    for i, (token, tag) in enumerate(zip(tokens, penn)):
        lower = token.lower()
        if tag == "RB" and lower.endswith("ly") and token not in _lexicon():  # RB by the suffix rule
            out[i] = ly_word_tag(token)
        elif i and tag in _BASE_VERB_TAGS and (tokens[i - 1].lower() in _ARTICLES or out[i - 1] in ("PRP$", "POS")):
            out[i] = "NN"
        elif i and lower == "'s" and out[i - 1] in ("PRP", "EX", "WP"):
            out[i] = "VBZ"
    return out


def is_spatial(tokens: List[str], penn: List[str], i: int) -> bool:
    """Whether token ``i`` is a spatial word here (see the module docstring)."""
    if tokens[i].lower() not in SPATIAL_WORDS:
        return False
    if not penn[i].startswith("VB"):
        return True
    before = penn[i - 1] if i else None
    after = tokens[i + 1].lower() if i + 1 < len(tokens) else None
    return before in _NOUN_CONTEXT_TAGS or after == "of"


class EnglishTagger:
    """Words of an English text with shared tags; importance from the tag (0-3)."""

    def analyze(self, text: str) -> List[Word]:
        spans = english_tokens(text)
        tokens = [text[s:e] for s, e in spans]
        penn = refine_tags(tokens, _pattern_tag(tokens))
        words = []
        for i, ((s, e), token) in enumerate(zip(spans, tokens)):
            shared = "f" if is_spatial(tokens, penn, i) else penn_to_shared(token, penn[i])
            words.append(Word(token, shared, s, e, english_importance(token, shared)))
        return words
