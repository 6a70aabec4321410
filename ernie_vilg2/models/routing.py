"""The MoDE timestep router, free of paddle so that the deployment runner can use it.

Expert ``i`` of ``N`` owns the timesteps ``[i*T/N, (i+1)*T/N)``: ``expert = clip(t, 0, T-1) * N // T``
(equivalently ``t // (T / N)``).
"""
from __future__ import annotations

import numbers
from typing import Tuple


class TimestepRouter:
    """Uniform timestep-to-expert routing: expert ``i`` owns ``[i*T/N, (i+1)*T/N)``."""

    def __init__(self, num_experts: int, num_train_timesteps: int):
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if num_train_timesteps < 1 or num_train_timesteps % num_experts:
            raise ValueError(
                f"num_experts ({num_experts}) must divide num_train_timesteps ({num_train_timesteps}) "
                "so that every expert owns an equal stage"
            )
        self.num_experts = num_experts
        self.num_train_timesteps = num_train_timesteps
        self.stage_length = num_train_timesteps // num_experts

    def expert_index(self, timestep):
        """Expert of each timestep: a number (Python or NumPy scalar) gives an int; an array
        (NumPy or a paddle Tensor, duck-typed) gives an int64 array of the same kind."""
        if isinstance(timestep, numbers.Number):
            t = min(max(int(timestep), 0), self.num_train_timesteps - 1)
            return t // self.stage_length
        t = timestep.astype("int64").clip(0, self.num_train_timesteps - 1)
        return t // self.stage_length

    def stage(self, expert: int) -> Tuple[int, int]:
        """Half-open timestep range ``[lo, hi)`` that ``expert`` handles."""
        if not 0 <= expert < self.num_experts:
            raise IndexError(f"expert {expert} out of range 0..{self.num_experts - 1}")
        return expert * self.stage_length, (expert + 1) * self.stage_length
