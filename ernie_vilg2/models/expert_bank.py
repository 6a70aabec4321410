"""Mixture of Denoising Experts (MoDE).

ERNIE-ViLG 2.0 splits the denoising process 0..T-1 into N equal stages and gives
each stage its own U-Net. A fixed router sends timestep ``t`` to expert
``t * N // T`` (equivalently ``t // (T / N)``), so one expert runs per sampling step
and the per-step compute equals one U-Net, while capacity grows N-fold. diffusers'
Wan pipeline picks one of two experts by a timestep boundary; this generalises it
to N stages, equal or placed by ``expert_boundaries`` (:mod:`.routing`). With N = 1 the
model is a plain U-Net.

A bank may hold only some of the N experts (``expert_ids``), e.g. the experts one group of
ranks trains: the router still maps every ``t`` to its expert id, and the parameter names
keep the ids (``experts.3.conv_in.weight``), so a full bank's state dict is the same as
ever and the parts of several partial banks fit together.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import paddle
from ppdiffusers import ModelMixin, UNet2DConditionModel  # noqa: F401  (ModelMixin: pipeline loading)
from ppdiffusers.configuration_utils import ConfigMixin, register_to_config
from ppdiffusers.models.unet_2d_condition import UNet2DConditionOutput

from ..utils.integrity import check_model_folder
from .routing import TimestepRouter  # noqa: F401  (paddle-free, shared with ernie_vilg2.deploy; re-exported)


def _take(value: Any, index: paddle.Tensor, batch: int):
    """Row-select batch-shaped tensors; pass everything else through."""
    if isinstance(value, paddle.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return paddle.gather(value, index, axis=0)
    return value


def check_local_folder(pretrained_model_name_or_path, kwargs: Dict) -> None:
    """Before PPDiffusers' loading: a local folder's config and weight files, so that a damaged
    one is a one-line DamagedFileError naming it."""
    folder = os.path.join(os.fspath(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
    if os.path.isdir(folder):
        check_model_folder(folder)


class ExpertBank(paddle.nn.Layer):
    """Experts by id. Sublayers are named by their ids, so a full bank names its parameters
    as a LayerList would (``0.conv_in.weight`` ...) and a partial one keeps the global ids.
    Iterating yields the experts in id order; ``bank[i]`` is expert ``i``."""

    def __init__(self, experts: Dict[int, paddle.nn.Layer]):
        super().__init__()
        for expert_id in sorted(experts):
            self.add_sublayer(str(expert_id), experts[expert_id])

    @property
    def ids(self) -> List[int]:
        return [int(name) for name in self._sub_layers]

    def __getitem__(self, expert_id: int) -> paddle.nn.Layer:
        try:
            return self._sub_layers[str(int(expert_id))]
        except KeyError:
            raise KeyError(f"expert {expert_id} is not in this bank (it holds experts {self.ids})") from None

    def __setitem__(self, expert_id: int, expert: paddle.nn.Layer) -> None:
        """Put another layer in expert ``expert_id``'s place (expert offload swaps them)."""
        self[expert_id]  # only a held id: the KeyError above names the bank's ids
        self._sub_layers[str(int(expert_id))] = expert

    def __iter__(self) -> Iterator[paddle.nn.Layer]:
        return iter(self._sub_layers.values())

    def __len__(self) -> int:
        return len(self._sub_layers)


class MixtureOfDenoisingExperts(ModelMixin, ConfigMixin):
    """A bank of ``num_experts`` UNet2DConditionModel experts behind a timestep router.

    ``unet`` is the keyword config of each expert (all experts share it), so the model
    saves and loads like any PPDiffusers model (``config.json`` + safetensors).
    ``expert_ids`` (not part of the config) builds only those experts of the N; such a
    partial bank trains and runs the timesteps of its experts but cannot be saved as a model.
    The experts are PPDiffusers' U-Nets as they come; :func:`~ernie_vilg2.models.speedups.apply_speedups`
    gives them the project's faster attention and layers.
    """

    config_name = "config.json"
    ignore_for_config = ["expert_ids"]

    @register_to_config
    def __init__(self, num_experts: int = 1, num_train_timesteps: int = 1000, unet: Optional[Dict] = None,
                 expert_ids: Optional[Sequence[int]] = None, expert_boundaries: Optional[Sequence[int]] = None):
        super().__init__()
        # expert_boundaries: the N-1 timesteps where the experts switch; None = uniform (t * N // T)
        self.router = TimestepRouter(num_experts, num_train_timesteps, expert_boundaries)
        ids = range(num_experts) if expert_ids is None else sorted(set(int(i) for i in expert_ids))
        for i in ids:
            if not 0 <= i < num_experts:
                raise ValueError(f"expert_ids: expert {i} out of range 0..{num_experts - 1}")
        self.experts = ExpertBank({i: UNet2DConditionModel(**(unet or {})) for i in ids})

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        check_local_folder(pretrained_model_name_or_path, kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self.is_partial:
            raise ValueError(f"this bank holds experts {self.expert_ids} of {self.num_experts}; a saved model needs "
                             "all of them (a saved folder loads as the whole bank)")
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, num_experts: int, num_train_timesteps: int = 1000,
                  expert_ids: Optional[Sequence[int]] = None, expert_boundaries: Optional[Sequence[int]] = None):
        """Branch a trained U-Net into ``num_experts`` identical experts (stage 2 init);
        ``expert_ids``: build only these of them; ``expert_boundaries``: where they switch."""
        unet_config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
        model = cls(num_experts=num_experts, num_train_timesteps=num_train_timesteps, unet=unet_config,
                    expert_ids=expert_ids,
                    expert_boundaries=None if expert_boundaries is None else [int(b) for b in expert_boundaries])
        state = unet.state_dict()
        for expert in model.experts:
            expert.set_state_dict(copy.deepcopy(state))
        return model

    @classmethod
    def branch(cls, model: "MixtureOfDenoisingExperts", num_experts: int, expert_ids: Optional[Sequence[int]] = None,
               expert_boundaries: Optional[Sequence[int]] = None) -> "MixtureOfDenoisingExperts":
        """Branch a single-expert model into ``num_experts`` experts (or only ``expert_ids`` of them),
        switching at ``expert_boundaries`` (None: uniform)."""
        if model.num_experts != 1:
            raise ValueError(f"can only branch a single-expert model, this one has {model.num_experts}")
        return cls.from_unet(model.experts[0], num_experts, model.config.num_train_timesteps, expert_ids,
                             expert_boundaries)

    # -- properties -----------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        """N, the experts the router divides the timesteps among (held or not)."""
        return self.router.num_experts

    @property
    def expert_ids(self) -> List[int]:
        """The experts this bank holds."""
        return self.experts.ids

    @property
    def is_partial(self) -> bool:
        return len(self.experts) < self.num_experts

    @property
    def in_channels(self) -> int:
        return next(iter(self.experts)).config.in_channels

    @property
    def sample_size(self) -> int:
        return next(iter(self.experts)).config.sample_size

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
