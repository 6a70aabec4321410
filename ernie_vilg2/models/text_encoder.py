"""The shared ERNIE text encoder (PaddleNLP ``ErnieModel``)."""
from __future__ import annotations

import os
import pickle
from typing import Optional

import paddle

from ..utils.integrity import DamagedFileError, check_model_folder


def build_text_encoder(
    vocab_size: int,
    pretrained: Optional[str] = None,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 64,
    pad_token_id: int = 0,
):
    """ERNIE from a local pretrained folder, or a fresh one from the given sizes.

    A pretrained model whose vocabulary is smaller than the tokenizer's (e.g. without
    our POS tokens) gets its embedding table grown, new rows randomly initialised.
    """
    from paddlenlp.transformers import ErnieConfig, ErnieModel

    if pretrained:
        if not os.path.isdir(pretrained):
            raise FileNotFoundError(f"model.text_encoder.pretrained: no such folder: {pretrained}")
        check_model_folder(pretrained)  # a damaged file: one line naming it
        try:
            model = ErnieModel.from_pretrained(pretrained)
        except (ValueError, AssertionError, EOFError, pickle.UnpicklingError) as exc:  # e.g. a damaged .pdparams
            raise DamagedFileError(pretrained, f"could not be loaded as an ERNIE model ({exc})") from None
        if model.config.vocab_size < vocab_size:
            model.resize_token_embeddings(vocab_size)
        return model
    config = ErnieConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ErnieModel(config)


def encode_text(text_encoder, input_ids: paddle.Tensor) -> paddle.Tensor:
    """Token states [B, L, D] used as the U-Net's cross-attention context."""
    return text_encoder(input_ids)[0]
