"""The shared ERNIE text encoder (PaddleNLP ``ErnieModel``).

Where the U-Net attends to a context of another width than ERNIE's hidden size (a pretrained
U-Net made for another text encoder, or ``model.unet.cross_attention_dim`` set), the encoder
is :class:`ErnieWithContextProjection`: ERNIE followed by a learned linear projection of its
token states, saved and loaded with it, and trained where the text encoder is trained
(``train.<stage>.train_text_encoder``).
"""
from __future__ import annotations

import os
import pickle
import warnings
from typing import Optional

import paddle

from ..utils.integrity import DamagedFileError, check_model_folder


_PROJECTED_CLASS = []  # made on first use: importing this module imports no PaddleNLP


def _projected_class():
    if not _PROJECTED_CLASS:
        from paddlenlp.transformers import ErnieModel

        class ErnieWithContextProjection(ErnieModel):
            """ERNIE whose token states are projected to ``config.context_dim`` (the U-Net's context)."""

            def __init__(self, config):
                super().__init__(config)
                self.context_projection = paddle.nn.Linear(config.hidden_size, config.context_dim)

            def forward(self, input_ids, *args, **kwargs):
                outputs = super().forward(input_ids, *args, **kwargs)
                if isinstance(outputs, tuple):
                    return (self.context_projection(outputs[0]),) + tuple(outputs[1:])
                outputs.last_hidden_state = self.context_projection(outputs.last_hidden_state)
                return outputs

        ErnieWithContextProjection.__module__ = __name__  # a saved pipeline's model_index.json names it here
        _PROJECTED_CLASS.append(ErnieWithContextProjection)
    return _PROJECTED_CLASS[0]


def __getattr__(name):
    if name == "ErnieWithContextProjection":  # PPDiffusers' pipeline loading looks it up by name
        return _projected_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def context_width(text_encoder) -> int:
    """Width of the token states :func:`encode_text` returns."""
    config = text_encoder.config
    return int(getattr(config, "context_dim", None) or config.hidden_size)


def with_context_projection(text_encoder, context_dim: int):
    """``text_encoder`` as is if its states are ``context_dim`` wide, else ERNIE (its weights)
    followed by a new projection to ``context_dim``."""
    if context_width(text_encoder) == context_dim:
        return text_encoder
    if isinstance(text_encoder, _projected_class()):
        raise ValueError(f"the text encoder projects to {context_width(text_encoder)}, the U-Net attends to "
                         f"{context_dim}")
    from paddlenlp.transformers import ErnieConfig

    projected = _projected_class()(ErnieConfig(**{**text_encoder.config.to_dict(), "context_dim": context_dim}))
    with warnings.catch_warnings():  # the projection is new: "Skip loading for context_projection.*"
        warnings.filterwarnings("ignore", message="Skip loading for context_projection")
        projected.set_state_dict(text_encoder.state_dict())
    return projected


def build_text_encoder(
    vocab_size: int,
    pretrained: Optional[str] = None,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 64,
    pad_token_id: int = 0,
    context_dim: Optional[int] = None,
):
    """ERNIE from a local pretrained folder, or a fresh one from the given sizes; with
    ``context_dim`` other than its hidden size, followed by a new projection to it.

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
        return with_context_projection(model, context_dim or context_width(model))
    sizes = dict(
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
    if context_dim and context_dim != hidden_size:  # built as such: no weights to copy (also under LazyGuard)
        return _projected_class()(ErnieConfig(**sizes, context_dim=context_dim))
    return ErnieModel(ErnieConfig(**sizes))


def encode_text(text_encoder, input_ids: paddle.Tensor) -> paddle.Tensor:
    """Token states [B, L, D] used as the U-Net's cross-attention context."""
    return text_encoder(input_ids)[0]
