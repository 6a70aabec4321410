"""The MoDE timestep router, free of paddle so that the deployment runner can use it.

Expert ``i`` of ``N`` owns the timesteps ``[b_i, b_{i+1})`` with ``b_0 = 0`` and ``b_N = T``;
the ``N - 1`` inner boundaries come from ``model.expert_boundaries``
(:func:`resolve_boundaries`):

- ``uniform`` (the paper): ``b_i = i*T/N``, i.e. ``expert = clip(t, 0, T-1) * N // T``;
- ``snr``: equal shares of log-SNR (:func:`snr_boundaries`), the rule behind Wan 2.2's
  high-/low-noise boundary, generalised to N experts;
- an explicit list of ``N - 1`` increasing timesteps in ``[1, T-1]``.
"""
from __future__ import annotations

import numbers
from typing import List, Optional, Sequence, Tuple

import numpy as np

BOUNDARY_RULES = ("uniform", "snr")


def uniform_boundaries(num_experts: int, num_train_timesteps: int) -> List[int]:
    if num_train_timesteps % num_experts:
        raise ValueError(f"num_experts ({num_experts}) must divide num_train_timesteps ({num_train_timesteps}) "
                         "so that every expert owns an equal stage")
    stage = num_train_timesteps // num_experts
    return [i * stage for i in range(1, num_experts)]


def snr_boundaries(alphas_cumprod: Sequence[float], num_experts: int) -> List[int]:
    """Boundaries that split the schedule's log-SNR range into ``num_experts`` equal shares.

    With ``λ(t) = log(ᾱ_t / (1 - ᾱ_t))`` (decreasing in t), boundary ``b_i`` is the first
    timestep whose log-SNR is at or below ``λ(0) - i/N * (λ(0) - λ(T-1))``, so expert ``i``
    denoises the i-th equal slice of log-SNR. A schedule too short to give every expert a
    timestep of its own is refused."""
    alpha_bar = np.asarray(alphas_cumprod, dtype=np.float64)
    if alpha_bar.ndim != 1 or len(alpha_bar) < 2 or not np.all((alpha_bar > 0) & (alpha_bar < 1)):
        raise ValueError("snr boundaries need the schedule's alphas_cumprod: at least 2 values in (0, 1)")
    log_snr = np.log(alpha_bar) - np.log1p(-alpha_bar)
    if not np.all(np.diff(log_snr) < 0):
        raise ValueError("snr boundaries need a noise schedule whose SNR falls at every timestep")
    top, bottom = log_snr[0], log_snr[-1]
    levels = top - (top - bottom) * np.arange(1, num_experts) / num_experts
    boundaries = [int(np.argmax(log_snr <= level)) for level in levels]
    if any(b <= previous for previous, b in zip([0] + boundaries, boundaries)):
        raise ValueError(f"snr boundaries {boundaries}: {len(alpha_bar)} timesteps are too few to give each of "
                         f"{num_experts} experts a share of log-SNR; use fewer experts or list the boundaries")
    return boundaries


def check_boundaries(boundaries, num_experts: int, num_train_timesteps: int) -> List[int]:
    """``boundaries`` as a list of ints, or ValueError saying what is wrong with it."""
    if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, Sequence):
        raise ValueError(f"expected {BOUNDARY_RULES} or a list of {num_experts - 1} timesteps, got {boundaries!r}")
    if len(boundaries) != num_experts - 1:
        raise ValueError(f"expected {num_experts - 1} boundaries (one fewer than the {num_experts} experts), "
                         f"got {len(boundaries)}")
    if not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in boundaries):
        raise ValueError(f"expected integer timesteps, got {list(boundaries)!r}")
    values = [int(b) for b in boundaries]
    if any(not 1 <= b <= num_train_timesteps - 1 for b in values):
        raise ValueError(f"every boundary must be in [1, {num_train_timesteps - 1}], got {values}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"boundaries must be strictly increasing, got {values}")
    return values


def resolve_boundaries(rule, num_experts: int, num_train_timesteps: int,
                       alphas_cumprod: Optional[Sequence[float]] = None) -> List[int]:
    """The ``N - 1`` inner boundaries of ``rule`` (``uniform``, ``snr`` or a list);
    ``snr`` needs the training schedule's ``alphas_cumprod``."""
    if rule == "uniform":
        return uniform_boundaries(num_experts, num_train_timesteps)
    if rule == "snr":
        if alphas_cumprod is None or len(alphas_cumprod) != num_train_timesteps:
            raise ValueError(f"snr boundaries need the {num_train_timesteps} alphas_cumprod of the training schedule")
        return snr_boundaries(alphas_cumprod, num_experts)
    return check_boundaries(rule, num_experts, num_train_timesteps)


class TimestepRouter:
    """Timestep-to-expert routing: expert ``i`` owns ``[b_i, b_{i+1})``; ``boundaries`` None
    is the paper's uniform split (``N`` must divide ``T``)."""

    def __init__(self, num_experts: int, num_train_timesteps: int, boundaries: Optional[Sequence[int]] = None):
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if num_train_timesteps < num_experts:
            raise ValueError(f"num_train_timesteps ({num_train_timesteps}) must be >= num_experts ({num_experts})")
        self.num_experts = num_experts
        self.num_train_timesteps = num_train_timesteps
        if boundaries is None:
            self.boundaries = uniform_boundaries(num_experts, num_train_timesteps)
        else:
            self.boundaries = check_boundaries(boundaries, num_experts, num_train_timesteps)
        self.edges = [0, *self.boundaries, num_train_timesteps]

    def expert_index(self, timestep):
        """Expert of each timestep: a number (Python or NumPy scalar) gives an int; an array
        (NumPy or a paddle Tensor, duck-typed) gives an int64 array of the same kind."""
        if isinstance(timestep, numbers.Number):
            t = min(max(int(timestep), 0), self.num_train_timesteps - 1)
            return sum(t >= b for b in self.boundaries)
        t = timestep.astype("int64")
        index = (t * 0).astype("int64")
        for b in self.boundaries:  # the count of boundaries at or below t (clipping changes no count)
            index = index + (t >= b).astype("int64")
        return index

    def stage(self, expert: int) -> Tuple[int, int]:
        """Half-open timestep range ``[lo, hi)`` that ``expert`` handles."""
        if not 0 <= expert < self.num_experts:
            raise IndexError(f"expert {expert} out of range 0..{self.num_experts - 1}")
        return self.edges[expert], self.edges[expert + 1]

    def stage_lengths(self) -> List[int]:
        return [hi - lo for lo, hi in zip(self.edges, self.edges[1:])]
