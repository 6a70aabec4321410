"""Baidu LAC (Chinese lexical analysis) run through Paddle Inference by our own runner.

``import LAC`` fails on Paddle 3 (its ``lac.py`` imports ``paddle.fluid``), but the
package's model files still load with ``paddle.inference``. This runner reproduces what
LAC 2.1.2 feeds its models, so its output equals LAC's:

1. A rough dictionary segmentation (``conf/small_seg.dic``: fewest pieces, then longest)
   decides which multi-character pieces are fed as one id; single ASCII letters/digits
   are glued back into runs ("LAC").
2. A piece found in ``conf/word.dic`` becomes one id, any other piece one id per
   character; characters first go through ``conf/q2b.dic`` (traditional/full-width ->
   simplified/half-width); unknown ones get the OOV id.
3. ``lac_model`` (BiGRU-CRF) gives one ``X-B`` / ``X-I`` tag per id
   (``conf/tag.dic``; where an id is listed twice the later name wins, so 16 is PER,
   not nr). Tags are spread back over the characters of multi-character pieces, and a
   word starts at each ``-B``; its tag is the last character's.
4. ``rank_model`` (optional) takes the same ids plus the tag ids and gives each id an
   importance 0-3 (0 redundant ... 3 core word); a word's importance is the maximum
   over its characters.

Several sentences run in one predictor call, separated by LoD offsets. Predictors are
created lazily and cached per process and model folder (creation takes ~0.3 s).
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
import threading
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .words import Word

_ASCII_ALNUM = re.compile(r"[a-zA-Z0-9]")
_PREDICTORS: Dict[Tuple[int, str], object] = {}
_PREDICTOR_LOCK = threading.Lock()


def lac_package_dir() -> str:
    """Folder of the installed ``LAC`` package (located without importing it)."""
    spec = importlib.util.find_spec("LAC")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the LAC package (its model files) is not installed: pip install LAC==2.1.2 "
            "(it cannot be imported on Paddle 3; only its files are used)"
        )
    return spec.submodule_search_locations[0]


def default_model_dir(name: str = "lac_model") -> str:
    """``lac_model`` (tagger) or ``rank_model`` (importance) inside the LAC package."""
    return os.path.join(lac_package_dir(), name)


def _read_pairs(path: str) -> List[Tuple[str, str]]:
    """Tab-separated two-column file; lines with another column count are skipped (as LAC does)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LAC model file missing: {path}")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            # Only the newline goes: a key may be a space character.
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) == 2:
                pairs.append((parts[0], parts[1]))
    return pairs


class _Segmenter:
    """The dictionary segmentation LAC uses to choose word-level input ids.

    Every dictionary word of length k scores log(k) - log(total); a character outside the
    dictionary scores -log(total). The best path therefore has the fewest pieces, ties
    broken by the product of their lengths and then by the longer first piece.
    """

    def __init__(self, dict_path: str):
        if not os.path.isfile(dict_path):
            raise FileNotFoundError(f"LAC model file missing: {dict_path}")
        words, prefixes, total = set(), set(), 0
        with open(dict_path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) != 2:
                    continue
                word, count = parts
                words.add(word)
                prefixes.update(word[:i] for i in range(1, len(word)))
                total += int(count)
        self.words = words
        self.prefixes = prefixes | words
        self.log_total = math.log(total)

    def cut(self, text: str) -> List[str]:
        n = len(text)
        # best[i] = (score of the best path over text[i:], end index of its first piece)
        best: List[Tuple[float, int]] = [(0.0, 0)] * (n + 1)
        for i in range(n - 1, -1, -1):
            candidates = [(-self.log_total + best[i + 1][0], i)]
            j = i + 2
            while j <= n and text[i:j] in self.prefixes:
                if text[i:j] in self.words:
                    candidates.append((math.log(j - i) - self.log_total + best[j][0], j - 1))
                j += 1
            best[i] = max(candidates)
        pieces, ascii_run, i = [], "", 0
        while i < n:
            j = best[i][1] + 1
            piece = text[i:j]
            if len(piece) == 1 and _ASCII_ALNUM.match(piece):
                ascii_run += piece
            else:
                if ascii_run:
                    pieces.append(ascii_run)
                    ascii_run = ""
                pieces.append(piece)
            i = j
        if ascii_run:
            pieces.append(ascii_run)
        return pieces


class LacVocab:
    """The ``conf/`` files of a LAC model folder: ids for text, names for tag ids."""

    def __init__(self, model_dir: str):
        conf = os.path.join(model_dir, "conf")
        self.word2id = {word: int(i) for i, word in _read_pairs(os.path.join(conf, "word.dic"))}
        self.q2b = dict(_read_pairs(os.path.join(conf, "q2b.dic")))
        self.id2tag = {int(i): tag for i, tag in _read_pairs(os.path.join(conf, "tag.dic"))}
        if "OOV" not in self.word2id:
            raise ValueError(f"{conf}/word.dic has no OOV entry")
        self.oov_id = self.word2id["OOV"]
        self.segmenter = _Segmenter(os.path.join(conf, "small_seg.dic"))

    def _char_id(self, piece: str) -> int:
        return self.word2id.get(self.q2b.get(piece, piece), self.oov_id)

    def encode(self, text: str) -> Tuple[List[int], List[int]]:
        """Input ids of ``text`` and the number of characters each id covers."""
        ids, lengths = [], []
        for piece in self.segmenter.cut(text):
            if piece in self.word2id:
                ids.append(self._char_id(piece))
                lengths.append(len(piece))
            else:
                ids.extend(self._char_id(ch) for ch in piece)
                lengths.extend([1] * len(piece))
        return ids, lengths


@lru_cache(maxsize=None)
def _vocab(model_dir: str) -> LacVocab:
    return LacVocab(model_dir)


def get_predictor(model_dir: str):
    """The Paddle Inference predictor of ``model_dir/model``, created once per process.

    Keyed by process id too: a predictor must not be shared with forked data-loader
    workers.
    """
    key = (os.getpid(), os.path.abspath(model_dir))
    with _PREDICTOR_LOCK:
        predictor = _PREDICTORS.get(key)
        if predictor is None:
            from paddle import inference

            model_path = os.path.join(model_dir, "model")
            if not os.path.isfile(os.path.join(model_path, "__model__")):
                raise FileNotFoundError(f"no LAC inference model (model/__model__) in {model_dir}")
            config = inference.Config(model_path)
            # The legacy program fails in the new IR passes; plain execution is what LAC used.
            config.switch_ir_optim(False)
            config.disable_glog_info()
            config.set_cpu_math_library_num_threads(1)
            predictor = inference.create_predictor(config)
            _PREDICTORS[key] = predictor
        return predictor


def _run(predictor, feeds: Sequence[Tuple[np.ndarray, List[int]]]) -> Tuple[np.ndarray, List[int]]:
    """Feed (ids [N,1], lod) pairs in input order; return the first output and its LoD."""
    for name, (data, lod) in zip(predictor.get_input_names(), feeds):
        handle = predictor.get_input_handle(name)
        handle.reshape(list(data.shape))
        handle.copy_from_cpu(data)
        handle.set_lod([lod])
    predictor.run()
    output = predictor.get_output_handle(predictor.get_output_names()[0])
    return output.copy_to_cpu().reshape(-1), output.lod()[0]


class LacRunner:
    """Batched LAC tagging (and optional importance) of Chinese sentences.

    ``analyze(["百度是一家高科技公司"])`` ->
    ``[[Word("百度", "ORG", 0, 2), Word("是", "v", 2, 3), Word("一家", "m", 3, 5), ...]]``.
    """

    def __init__(self, model_dir: Optional[str] = None, rank_model_dir: Optional[str] = None,
                 batch_size: int = 64):
        self.model_dir = model_dir or default_model_dir("lac_model")
        self.rank_model_dir = rank_model_dir or default_model_dir("rank_model")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    @property
    def vocab(self) -> LacVocab:
        # Loaded on first Chinese text (about 0.5 s), shared by runners of the same folder.
        return _vocab(os.path.abspath(self.model_dir))

    def analyze(self, texts: Sequence[str], with_importance: bool = False) -> List[List[Word]]:
        """Words of every text (empty list for an empty text), offsets into that text."""
        results: List[List[Word]] = [[] for _ in texts]
        todo = [i for i, t in enumerate(texts) if t]
        for k in range(0, len(todo), self.batch_size):
            chunk = todo[k:k + self.batch_size]
            for i, words in zip(chunk, self._analyze_batch([texts[i] for i in chunk], with_importance)):
                results[i] = words
        return results

    def _analyze_batch(self, texts: List[str], with_importance: bool) -> List[List[Word]]:
        all_ids, lengths, lod = [], [], [0]
        for text in texts:
            ids, piece_lengths = self.vocab.encode(text)
            all_ids.extend(ids)
            lengths.append(piece_lengths)
            lod.append(lod[-1] + len(ids))
        words_in = np.asarray(all_ids, dtype="int64").reshape(-1, 1)
        tag_ids, out_lod = _run(get_predictor(self.model_dir), [(words_in, lod)])
        if list(out_lod) != lod:
            raise RuntimeError(f"LAC returned LoD {out_lod}, expected {lod}")
        importance = None
        if with_importance:
            importance, _ = _run(get_predictor(self.rank_model_dir),
                                 [(words_in, lod), (tag_ids.reshape(-1, 1).astype("int64"), lod)])
        out = []
        for s, text in enumerate(texts):
            span = slice(lod[s], lod[s + 1])
            ranks = None if importance is None else importance[span]
            out.append(self._words(text, tag_ids[span], lengths[s], ranks))
        return out

    def _words(self, text: str, tag_ids: np.ndarray, lengths: List[int], ranks) -> List[Word]:
        # Spread per-id tags (and importance) over the characters.
        char_tags, char_rank = [], []
        for k, (tag_id, length) in enumerate(zip(tag_ids.tolist(), lengths)):
            name = self.vocab.id2tag.get(int(tag_id), "O")
            base = name[:-2] if name.endswith(("-B", "-I")) else name
            char_tags.append(name)
            char_tags.extend([base + "-I"] * (length - 1))
            if ranks is not None:
                char_rank.extend([int(ranks[k])] * length)
        words: List[Word] = []
        start = 0
        for i in range(1, len(text) + 1):
            if i == len(text) or char_tags[i].endswith("-B"):
                tag = char_tags[i - 1]
                tag = tag[:-2] if tag.endswith(("-B", "-I")) else "xc"  # "O": no label
                rank = max(char_rank[start:i]) if ranks is not None else None
                words.append(Word(text[start:i], tag, start, i, rank))
                start = i
        return words
