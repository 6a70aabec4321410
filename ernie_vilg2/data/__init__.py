"""Datasets: the built-in offline emoji data, the users' JSON lines, MS-COCO and webdataset
shards, and the loader that streams them to training.

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
    "open_source": ".sources",
    "ShardReader": ".shards",
    "iter_shard": ".shards",
    "list_shards": ".shards",
    "load_image": ".shards",
    "read_sidecar": ".shards",
    "sidecar_path": ".shards",
    "ShardWriter": ".shard_writer",
    "export_shards": ".shard_writer",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
