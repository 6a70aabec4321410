"""LoRA experts: N timestep experts as one shared base U-Net plus one low-rank adapter set each.

A full bank of N experts costs N U-Nets; here every expert is the base U-Net with its own
low-rank update ``W + (alpha / r) * down_e @ up_e`` on the target linear layers (the attention
projections by default), so a bank of 10 costs about one U-Net and stage 2 trains only the
adapters. The router is the full bank's (:class:`~.routing.TimestepRouter`).

Each adapter is PPDiffusers' :class:`~ppdiffusers.models.lora.LoRALinearLayer` (its
initialisation, ``network_alpha`` scaling and weight layout). The switching is ours:
PPDiffusers' ``LoRACompatibleLinear`` holds one adapter, while a training batch mixes
timesteps and so needs a different adapter per row. Every target layer keeps its adapters as
a sublayer (``to_q.lora_experts.3.down.weight``) and adds the active one's output through a
forward post-hook; the bank's forward sets which adapter each row uses, then runs the base
once for the whole batch (a full bank runs one U-Net per expert present in the batch).

:meth:`LoRAExperts.merge` writes the experts out as a full
:class:`~.expert_bank.MixtureOfDenoisingExperts` (base + adapter each), which the exporter,
both runners, expert offload and the diffusers export take unchanged.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import paddle
from ppdiffusers import ModelMixin, UNet2DConditionModel
from ppdiffusers.configuration_utils import ConfigMixin, register_to_config
from ppdiffusers.models.activations import GEGLU
from ppdiffusers.models.lora import LoRALinearLayer
from ppdiffusers.models.unet_2d_condition import UNet2DConditionOutput

from .expert_bank import ExpertBank, MixtureOfDenoisingExperts, check_local_folder
from .routing import TimestepRouter

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTERS = "lora_experts"  # the sublayer name of a target layer's adapters


def find_targets(unet: paddle.nn.Layer, targets: Sequence[str]) -> List[str]:
    """Names of ``unet``'s linear layers whose name is a target or ends with ``.target``
    (diffusers' rule for ``target_modules``). A target matching nothing, or matching a layer
    that is not a linear one, is a ValueError naming it."""
    layers = dict(unet.named_sublayers())
    found: List[str] = []
    for target in targets:
        names = [n for n in layers if n == target or n.endswith("." + target)]
        if not names:
            raise ValueError(f"targets: {target!r} names no layer of the U-Net (e.g. to_q, to_k, to_v, to_out.0, "
                             "proj_in, ff.net.2)")
        for name in names:
            layer = layers[name]
            parent = layers.get(name.rsplit(".", 1)[0]) if "." in name else None
            if not isinstance(layer, paddle.nn.Linear) or isinstance(parent, GEGLU):
                # GEGLU's projection is computed from its weights directly, not by calling it
                raise ValueError(f"targets: {target!r} matches {name} ({type(layer).__name__}"
                                 f"{' in a GEGLU' if isinstance(parent, GEGLU) else ''}); LoRA experts adapt "
                                 "linear layers")
            found.append(name)
    return sorted(set(found))


class ExpertAdapters(ExpertBank):
    """The adapters of one target layer by expert id, and which one each row uses."""

    def __init__(self, in_features: int, out_features: int, num_experts: int, rank: int,
                 alpha: Optional[float]):
        super().__init__({e: LoRALinearLayer(in_features, out_features, rank, alpha) for e in range(num_experts)})
        self.scale = 1.0 if alpha is None else alpha / rank
        # None: no adapter; an int: that expert's for every row; (row positions, expert ids):
        # expert ids[positions[b]] for row b
        self.active: Union[None, int, Tuple[paddle.Tensor, List[int]]] = None

    def weight_delta(self, expert: int) -> paddle.Tensor:
        """``scale * down @ up``, in the layout of the target's ``[in, out]`` weight."""
        adapter = self[expert]
        return self.scale * paddle.matmul(adapter.down.weight, adapter.up.weight)

    def delta(self, x: paddle.Tensor) -> Optional[paddle.Tensor]:
        if self.active is None:
            return None
        if isinstance(self.active, int):
            return self[self.active](x)
        positions, ids = self.active
        if x.shape[0] != positions.shape[0]:
            raise ValueError(f"a LoRA target got {x.shape[0]} rows, the router {positions.shape[0]} timesteps")
        downs = paddle.gather(paddle.stack([self[e].down.weight for e in ids]), positions)  # [B, in, r]
        ups = paddle.gather(paddle.stack([self[e].up.weight for e in ids]), positions)  # [B, r, out]
        rows = x.reshape([x.shape[0], -1, x.shape[-1]])
        out = paddle.bmm(paddle.bmm(rows, downs), ups)
        if self.scale != 1.0:
            out = out * self.scale
        return out.reshape([*x.shape[:-1], out.shape[-1]])


def _add_active_adapter(layer, inputs, output):
    """Forward post-hook of a target layer: its output plus the active adapter's. A module-level
    function that reads the adapters from the layer it is called on, so a deep copy of the
    model hooks its own adapters."""
    delta = getattr(layer, ADAPTERS).delta(inputs[0])
    return output if delta is None else output + delta


class LoRAExperts(ModelMixin, ConfigMixin):
    """``num_experts`` timestep experts: ``base`` (a UNet2DConditionModel, frozen) with a LoRA
    adapter set per expert on the ``lora_targets`` layers, behind a timestep router.

    Saves and loads as a PPDiffusers model folder (config.json + safetensors holding the base
    and every adapter). The base is frozen at construction (``stop_gradient``), as PEFT does:
    training the bank trains the adapters.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, num_experts: int = 1, num_train_timesteps: int = 1000, unet: Optional[Dict] = None,
                 expert_boundaries: Optional[Sequence[int]] = None, lora_rank: int = 4,
                 lora_alpha: Optional[float] = None, lora_targets: Sequence[str] = DEFAULT_TARGETS):
        super().__init__()
        if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1:
            raise ValueError(f"lora_rank must be a positive integer, got {lora_rank!r}")
        if lora_alpha is not None and not lora_alpha > 0:
            raise ValueError(f"lora_alpha must be positive or None, got {lora_alpha!r}")
        self.router = TimestepRouter(num_experts, num_train_timesteps, expert_boundaries)
        self.base = UNet2DConditionModel(**(unet or {}))
        for p in self.base.parameters():
            p.stop_gradient = True
        self._targets = []
        for name in find_targets(self.base, list(lora_targets)):
            layer = self.base.get_sublayer(name)
            in_features, out_features = layer.weight.shape
            layer.add_sublayer(ADAPTERS, ExpertAdapters(in_features, out_features, num_experts, lora_rank,
                                                        lora_alpha))
            layer.register_forward_post_hook(_add_active_adapter)
            self._targets.append(name)

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        check_local_folder(pretrained_model_name_or_path, kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, num_experts: int, num_train_timesteps: int = 1000,
                  expert_boundaries: Optional[Sequence[int]] = None, lora_rank: int = 4,
                  lora_alpha: Optional[float] = None, lora_targets: Sequence[str] = DEFAULT_TARGETS):
        """``num_experts`` experts over a copy of ``unet`` (stage 2 init). The adapters' up
        projections start at zero, so every expert starts equal to ``unet``."""
        unet_config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
        model = cls(num_experts=num_experts, num_train_timesteps=num_train_timesteps, unet=unet_config,
                    expert_boundaries=None if expert_boundaries is None else [int(b) for b in expert_boundaries],
                    lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=list(lora_targets))
        model.base.set_state_dict({**model.base.state_dict(), **copy.deepcopy(unet.state_dict())})
        return model

    # -- the bank's interface (as MixtureOfDenoisingExperts) -----------------------------
    @property
    def num_experts(self) -> int:
        return self.router.num_experts

    @property
    def in_channels(self) -> int:
        return self.base.config.in_channels

    @property
    def sample_size(self) -> int:
        return self.base.config.sample_size

    @property
    def target_names(self) -> List[str]:
        """The base's layers that carry adapters."""
        return list(self._targets)

    def adapters(self, target: str) -> ExpertAdapters:
        return getattr(self.base.get_sublayer(target), ADAPTERS)

    def set_attn_processor(self, processor) -> None:
        self.base.set_attn_processor(processor)

    def enable_gradient_checkpointing(self) -> None:
        self.base.enable_gradient_checkpointing()

    def adapter_parameters(self) -> int:
        """Parameters of all adapters (the bank's cost beyond its base)."""
        return sum(int(p.numel()) for t in self._targets for p in self.adapters(t).parameters())

    # -- forward --------------------------------------------------------------------
    def select(self, experts: Union[int, Sequence[int]]) -> None:
        """Make every target use expert ``experts`` (an int) or row ``b`` use ``experts[b]``.
        The choice stays until the next call, so a recomputed block (gradient checkpointing)
        in the backward pass uses the adapters of its forward."""
        if isinstance(experts, int):
            active = experts
        else:
            ids = sorted(set(experts))
            active = ids[0] if len(ids) == 1 else (
                paddle.to_tensor([ids.index(e) for e in experts], dtype="int64"), ids)
        for target in self._targets:
            self.adapters(target).active = active

    def forward(
        self,
        sample: paddle.Tensor,
        timestep: Union[paddle.Tensor, int],
        encoder_hidden_states: paddle.Tensor,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        return_dict: bool = True,
    ):
        if not isinstance(timestep, paddle.Tensor) or timestep.ndim == 0 or timestep.shape[0] == 1:
            t = timestep if isinstance(timestep, paddle.Tensor) else paddle.to_tensor(timestep)
            self.select(self.router.expert_index(int(t.reshape([-1])[0])))
        else:  # training: the row's timestep picks the row's adapter
            t = timestep
            self.select(self.router.expert_index(timestep).numpy().tolist())
        out = self.base(sample, t, encoder_hidden_states, cross_attention_kwargs=cross_attention_kwargs).sample
        if not return_dict:
            return (out,)
        return UNet2DConditionOutput(sample=out)

    # -- merging --------------------------------------------------------------------
    def merge(self) -> MixtureOfDenoisingExperts:
        """A full bank whose expert ``e`` is the base with adapter ``e`` folded into its weights
        (``W + scale * down_e @ up_e``): the same function, in the format of full experts."""
        unet_config = {k: v for k, v in dict(self.base.config).items() if not k.startswith("_")}
        boundaries = self.config.expert_boundaries
        bank = MixtureOfDenoisingExperts(num_experts=self.num_experts,
                                         num_train_timesteps=self.config.num_train_timesteps, unet=unet_config,
                                         expert_boundaries=None if boundaries is None else list(boundaries))
        base = {k: v for k, v in self.base.state_dict().items() if f".{ADAPTERS}." not in k}
        with paddle.no_grad():
            for e in range(self.num_experts):
                state = dict(base)
                for target in self._targets:
                    key = f"{target}.weight"
                    state[key] = base[key] + self.adapters(target).weight_delta(e).astype(base[key].dtype)
                bank.experts[e].set_state_dict(state)
        bank.train(self.training)
        return bank
