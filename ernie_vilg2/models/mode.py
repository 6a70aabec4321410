"""Mixture of Denoising Experts (MoDE).

ERNIE-ViLG 2.0 splits the denoising process 0..T-1 into N equal stages and gives
each stage its own U-Net. A fixed router sends timestep ``t`` to expert
``t * N // T`` (equivalently ``t // (T / N)``), so one expert runs per sampling step
and the per-step compute equals one U-Net, while capacity grows N-fold. diffusers'
Wan pipeline picks one of two experts by a timestep boundary; this generalises it
to N equal stages. With N = 1 the model is a plain U-Net.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, List, Optional, Union

import paddle
from ppdiffusers import ModelMixin, UNet2DConditionModel  # noqa: F401  (ModelMixin: pipeline loading)
from ppdiffusers.configuration_utils import ConfigMixin, register_to_config
from ppdiffusers.models.unet_2d_condition import UNet2DConditionOutput

from ..utils.integrity import check_model_folder
from .attention_processor import FastAttnProcessor
from .routing import TimestepRouter  # noqa: F401  (paddle-free, shared with ernie_vilg2.deploy; re-exported)


def _take(value: Any, index: paddle.Tensor, batch: int):
    """Row-select batch-shaped tensors; pass everything else through."""
    if isinstance(value, paddle.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return paddle.gather(value, index, axis=0)
    return value


class MixtureOfDenoisingExperts(ModelMixin, ConfigMixin):
    """A bank of ``num_experts`` UNet2DConditionModel experts behind a timestep router.

    ``unet`` is the keyword config of each expert (all experts share it), so the model
    saves and loads like any PPDiffusers model (``config.json`` + safetensors).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, num_experts: int = 1, num_train_timesteps: int = 1000, unet: Optional[Dict] = None):
        super().__init__()
        self.router = TimestepRouter(num_experts, num_train_timesteps)
        self.experts = paddle.nn.LayerList([UNet2DConditionModel(**(unet or {})) for _ in range(num_experts)])
        # The stock attention's function with less time and memory (see attention_processor.py).
        self.set_attn_processor(FastAttnProcessor())

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """PPDiffusers' loading, after checking a local folder's config and weight files so
        that a damaged one is a one-line DamagedFileError naming it."""
        folder = os.path.join(os.fspath(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        if os.path.isdir(folder):
            check_model_folder(folder)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, num_experts: int, num_train_timesteps: int = 1000):
        """Branch a trained U-Net into ``num_experts`` identical experts (stage 2 init)."""
        unet_config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
        model = cls(num_experts=num_experts, num_train_timesteps=num_train_timesteps, unet=unet_config)
        state = unet.state_dict()
        for expert in model.experts:
            expert.set_state_dict(copy.deepcopy(state))
        return model

    @classmethod
    def branch(cls, model: "MixtureOfDenoisingExperts", num_experts: int) -> "MixtureOfDenoisingExperts":
        """Branch a single-expert model into ``num_experts`` experts."""
        if model.num_experts != 1:
            raise ValueError(f"can only branch a single-expert model, this one has {model.num_experts}")
        return cls.from_unet(model.experts[0], num_experts, model.config.num_train_timesteps)

    # -- properties -----------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def in_channels(self) -> int:
        return self.experts[0].config.in_channels

    @property
    def sample_size(self) -> int:
        return self.experts[0].config.sample_size

    def expert_for_timestep(self, timestep) -> UNet2DConditionModel:
        return self.experts[self.router.expert_index(timestep)]

    def set_attn_processor(self, processor) -> None:
        """Install one attention processor (or a factory result) in every expert."""
        for expert in self.experts:
            expert.set_attn_processor(processor)

    def enable_gradient_checkpointing(self) -> None:
        for expert in self.experts:
            expert.enable_gradient_checkpointing()

    # -- forward --------------------------------------------------------------------
    def forward(
        self,
        sample: paddle.Tensor,
        timestep: Union[paddle.Tensor, int],
        encoder_hidden_states: paddle.Tensor,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        return_dict: bool = True,
    ):
        batch = sample.shape[0]
        if not isinstance(timestep, paddle.Tensor) or timestep.ndim == 0 or timestep.shape[0] == 1:
            # Sampling: one timestep for the whole batch -> exactly one expert runs.
            t = timestep if isinstance(timestep, paddle.Tensor) else paddle.to_tensor(timestep)
            expert = self.expert_for_timestep(int(t.reshape([-1])[0]))
            out = expert(sample, t, encoder_hidden_states, cross_attention_kwargs=cross_attention_kwargs).sample
        else:
            out = self._routed_forward(sample, timestep, encoder_hidden_states, cross_attention_kwargs, batch)
        if not return_dict:
            return (out,)
        return UNet2DConditionOutput(sample=out)

    def _routed_forward(self, sample, timesteps, encoder_hidden_states, cross_attention_kwargs, batch):
        """Training: split the batch by expert, run only the experts used, restore order."""
        experts = self.router.expert_index(timesteps).numpy().tolist()
        if len(set(experts)) == 1:
            return self.experts[experts[0]](
                sample, timesteps, encoder_hidden_states, cross_attention_kwargs=cross_attention_kwargs
            ).sample
        outputs: List[paddle.Tensor] = []
        order: List[int] = []
        for e in sorted(set(experts)):
            rows = [i for i, x in enumerate(experts) if x == e]
            index = paddle.to_tensor(rows, dtype="int64")
            kwargs = None
            if cross_attention_kwargs:
                kwargs = {k: _take(v, index, batch) for k, v in cross_attention_kwargs.items()}
            outputs.append(
                self.experts[e](
                    paddle.gather(sample, index, axis=0),
                    paddle.gather(timesteps, index, axis=0),
                    paddle.gather(encoder_hidden_states, index, axis=0),
                    cross_attention_kwargs=kwargs,
                ).sample
            )
            order.extend(rows)
        inverse = paddle.argsort(paddle.to_tensor(order, dtype="int64"))
        return paddle.gather(paddle.concat(outputs, axis=0), inverse, axis=0)
