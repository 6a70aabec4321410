"""Exponential moving average of trainable parameters."""
from __future__ import annotations

from typing import Dict

import paddle


class ExponentialMovingAverage:
    def __init__(self, named_params: Dict[str, paddle.Tensor], decay: float):
        self.decay = decay
        self.params = named_params
        self.shadow = {k: p.detach().clone() for k, p in named_params.items()}

    @paddle.no_grad()
    def update(self) -> None:
        for name, param in self.params.items():
            self.shadow[name].set_value(self.decay * self.shadow[name] + (1.0 - self.decay) * param.detach())

    def state_dict(self) -> Dict[str, paddle.Tensor]:
        return self.shadow

    def load_state_dict(self, state: Dict[str, paddle.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[0]}")
        for name in self.shadow:
            self.shadow[name].set_value(state[name])

    @paddle.no_grad()
    def copy_to_params(self) -> None:
        for name, param in self.params.items():
            param.set_value(self.shadow[name])
