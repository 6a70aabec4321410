"""Datasets: the built-in offline emoji data and the users' JSON-lines format.

Names are imported lazily so that reading the config (``ernie_vilg2.data.config``) or
preparing the built-in data does not import Paddle.
"""
from ..utils.lazy import lazy_getattr

_EXPORTS = {
    "BuiltinDataConfig": ".config",
    "DataConfig": ".config",
    "DEMO_EMOJI_FILTER": ".emoji_catalog",
    "EmojiEntry": ".emoji_catalog",
    "load_emoji_catalog": ".emoji_catalog",
    "DatasetError": ".jsonl",
    "JsonlDataset": ".jsonl",
    "collate_samples": ".jsonl",
    "prepare_builtin_dataset": ".prepare",
    "RELATIONS": ".scenes",
    "SCENE_CLASSES": ".scenes",
    "relation_holds": ".scenes",
    "build_dataset": ".builder",
    "dataset_path": ".builder",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
