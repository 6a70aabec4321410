"""Textual knowledge (paper sec. 3.1): key words of a caption get emphasis and POS tokens.

Pipeline: caption -> words with tags (:class:`TextAnalyzer`: LAC for Chinese, TextBlob for
English, user dictionary) -> key words (:func:`select_keywords`) -> optional POS tokens
"[n]"/"[a]"/... before them -> token ids and a key-token mask (:func:`build_text_inputs`)
that the U-Net's cross-attention processor uses to scale key-word scores by (1 + w_t).
This package knows nothing of models; the mask is a plain array.
"""
from .analysis import TextAnalyzer, get_analyzer
from .config import TextualKnowledgeConfig
from .inputs import analyse_captions, build_text_inputs
from .keywords import KeyWord, select_keywords
from .lac import LacRunner
from .user_dict import UserDict, load_user_dict
from .words import Word

__all__ = [
    "KeyWord",
    "LacRunner",
    "TextAnalyzer",
    "TextualKnowledgeConfig",
    "UserDict",
    "Word",
    "analyse_captions",
    "build_text_inputs",
    "get_analyzer",
    "load_user_dict",
    "select_keywords",
]
