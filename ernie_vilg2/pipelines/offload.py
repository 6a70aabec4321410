"""Offloading for sampling: a bank of experts larger than the device (or the host) memory.

:class:`ExpertOffload` keeps one expert of a :class:`MixtureOfDenoisingExperts` resident on
the device, in a *slot* (one U-Net module) that takes the expert's place in
``unet.experts`` while it is active. The other experts are

- ``"cpu"``: on the host (pinned memory when the device is a GPU, so the copy in is a DMA);
  the slot gets a device copy of the active expert. On a CPU the host *is* the device:
  there is no slot, the experts run where they are and only the bookkeeping is done
  (nothing copied, no memory added);
- ``"disk"``: not in memory at all (built under ``paddle.LazyGuard``: structure without
  storage); the slot is filled from the saved safetensors file(s), one tensor at a time,
  so host memory holds one expert however many the bank has.

A forward pre-hook on the mixture loads the expert of the call's timestep when it is not
the active one, releasing the previous one (the slot's storage is replaced tensor by
tensor). Sampling visits timesteps in decreasing order and expert ``i`` owns the
contiguous range ``[i*T/N, (i+1)*T/N)``, so a sampling run activates each expert at most
once: at most N loads and N - 1 switches per run (counted in :attr:`ExpertOffload.run`).

:class:`ModelCpuOffload` is diffusers' ``enable_model_cpu_offload``: text encoder, U-Net
and VAE live on the host and each is moved to the device only while it runs.

The moves are real on a GPU; on a CPU-only machine host and device are one, so the
"cpu" variants cost nothing and do nothing, and "disk" is what lowers host memory.
"""
from __future__ import annotations

import logging
import os
import struct
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import paddle
from ppdiffusers import UNet2DConditionModel

from ..models.expert_bank import MixtureOfDenoisingExperts
from ..models.speedups import apply_speedups
from ..utils.integrity import DamagedFileError, check_safetensors, read_json_file

logger = logging.getLogger(__name__)

EXPERT_OFFLOADS = ("cpu", "disk")
WEIGHTS_NAME = "diffusion_paddle_model.safetensors"  # what ppdiffusers' save_pretrained writes
INDEX_NAME = WEIGHTS_NAME + ".index.json"  # ... and its index when it shards a large model

# safetensors dtype -> NumPy dtype; bfloat16 travels as uint16, as Paddle reads it.
_NUMPY_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "uint16", "I64": "int64",
                 "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def execution_device() -> str:
    """Where sampling runs: Paddle's current device (``paddle.set_device``), e.g. "gpu:0"."""
    return paddle.get_device()


def host_place(device: str):
    """Where offloaded weights live: pinned host memory next to a GPU (fast, asynchronous
    copies in), plain host memory otherwise."""
    return paddle.CUDAPinnedPlace() if device.startswith("gpu") else paddle.CPUPlace()


def is_host(device: str) -> bool:
    return device.startswith("cpu")


# -- expert weights on disk ---------------------------------------------------------------
class ExpertWeightsFile:
    """The experts' tensors in a saved MixtureOfDenoisingExperts folder (``experts.<i>.<name>``
    in ``diffusion_paddle_model.safetensors``, or in the shards its index lists).

    Tensors are read with plain file reads into one NumPy array at a time, not through a
    memory map: mapped pages count in the process's resident memory while the map is open,
    which would add a second copy of the expert during each load.
    """

    def __init__(self, folder: str):
        self.folder = os.fspath(folder)
        single, index = os.path.join(self.folder, WEIGHTS_NAME), os.path.join(self.folder, INDEX_NAME)
        if os.path.isfile(single):
            files = [single]
        elif os.path.isfile(index):
            weight_map = (read_json_file(index) or {}).get("weight_map")
            if not isinstance(weight_map, dict):
                raise DamagedFileError(index, "not a safetensors index (expected a 'weight_map' object)")
            files = sorted({os.path.join(self.folder, f) for f in weight_map.values()})
        else:
            raise FileNotFoundError(
                f"{self.folder}: expert_offload='disk' reads the experts from {WEIGHTS_NAME} (or its index); "
                "neither is there"
            )
        self.source = files[0] if len(files) == 1 else index  # what errors name
        # key -> (file, absolute byte offset, byte count, numpy dtype, shape)
        self.entries: Dict[str, Tuple[str, int, int, str, List[int]]] = {}
        for path in files:
            tensors = check_safetensors(path)  # a damaged file: one line naming it
            with open(path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
            for key, entry in tensors.items():
                if entry.get("dtype") not in _NUMPY_DTYPES:
                    raise DamagedFileError(path, f"tensor {key!r}: unsupported dtype {entry.get('dtype')!r}")
                start, end = entry["data_offsets"]
                self.entries[key] = (path, 8 + header_len + start, end - start, _NUMPY_DTYPES[entry["dtype"]],
                                     list(entry["shape"]))

    def check(self, num_experts: int, expert: UNet2DConditionModel) -> None:
        """Every tensor of every expert is in the file(s) with the module's shape: a wrong
        folder fails when offloading starts, not in the middle of a sampling run."""
        for i in range(num_experts):
            for name, param in expert.state_dict().items():
                key = f"experts.{i}.{name}"
                if key not in self.entries:
                    raise DamagedFileError(self.source, f"tensor {key!r} not found (expected one per expert tensor)")
                if self.entries[key][4] != list(param.shape):
                    raise DamagedFileError(self.entries[key][0],
                                           f"tensor {key!r}: shape {self.entries[key][4]}, the model expects "
                                           f"{list(param.shape)}")

    def tensors(self, index: int, names) -> Iterator[Tuple[str, np.ndarray]]:
        """(name, array) of expert ``index``, read one at a time (each array is a fresh copy)."""
        handles = {}
        try:
            for name in names:
                path, offset, size, dtype, shape = self.entries[f"experts.{index}.{name}"]
                f = handles.get(path) or handles.setdefault(path, open(path, "rb"))
                f.seek(offset)
                yield name, np.frombuffer(f.read(size), dtype=dtype).reshape(shape)
        finally:
            for f in handles.values():
                f.close()


def _load_array(param, array: np.ndarray) -> None:
    """Fill ``param`` (allocated or lazy) from a host array, on the current device."""
    saved = "bfloat16" if array.dtype == np.uint16 else array.dtype.name
    if saved != str(param.dtype).split(".")[-1]:
        # The file was saved in another precision (e.g. bf16 weights, fp32 model): cast on the host.
        array = paddle.to_tensor(array, dtype=saved, place=paddle.CPUPlace()).astype(param.dtype).numpy()
    param.set_value(array)  # a fresh tensor on the device; the previous storage is released


# -- one expert on the device ----------------------------------------------------------------
@dataclass
class RunStats:
    """One sampling run: the experts its steps used, in order, and the loads into the slot."""

    experts: Tuple[int, ...] = ()  # a new entry each time the step's expert changes
    loads: int = 0  # experts copied into the slot (the first may still be there from the last run)
    load_seconds: float = 0.0

    @property
    def switches(self) -> int:
        """Changes of expert between consecutive steps: <= N - 1 (see the module docstring)."""
        return max(len(self.experts) - 1, 0)


def _lazy_copy(expert: UNet2DConditionModel) -> UNet2DConditionModel:
    """A module shaped like ``expert`` with no storage (filled by the first load)."""
    with paddle.LazyGuard():
        slot = UNet2DConditionModel.from_config(expert.config)
    apply_speedups(slot)  # the experts' layers (its attention processors are the active expert's)
    slot.train(expert.training)
    return slot


def _refuse_call(layer, args, kwargs):
    raise RuntimeError(
        "this expert is offloaded (ErnieViLG2Pipeline expert offload): call the mixture "
        "(pipe.unet(sample, t, ...)), which loads the expert of t, or pipe.disable_expert_offload() first"
    )


class ExpertOffload:
    """Keeps one expert of ``unet`` on the device; see the module docstring.

    ``weights`` (an :class:`ExpertWeightsFile`) selects "disk": the experts in ``unet`` are
    then lazy (no storage) and read from it; without it, "cpu": ``unet``'s experts are
    moved to the host. ``copy`` forces (or skips) the slot for "cpu"; by default it is used
    when the device is not the host (tests force it to run the GPU path on a CPU).
    """

    def __init__(self, unet, weights: Optional[ExpertWeightsFile] = None, copy: Optional[bool] = None):
        self.unet = unet
        self.offload = "disk" if weights is not None else "cpu"
        self.weights = weights
        self.device = execution_device()
        self.experts = list(unet.experts)  # the host experts ("cpu") or lazy stand-ins ("disk")
        if weights is not None:
            weights.check(len(self.experts), self.experts[0])
        elif not is_host(self.device):
            for expert in self.experts:
                expert.to(device=host_place(self.device))
        uses_slot = weights is not None or (copy if copy is not None else not is_host(self.device))
        # Without a slot ("cpu" on a CPU) every expert already is where it runs: only bookkeeping.
        self.slot = _lazy_copy(self.experts[0]) if uses_slot else None
        self.active: Optional[int] = None
        self.run = RunStats()
        self._hooks = [unet.register_forward_pre_hook(self._before_forward, with_kwargs=True)]
        if self.slot is not None:
            self._hooks += [e.register_forward_pre_hook(_refuse_call, with_kwargs=True) for e in self.experts]

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def begin_run(self) -> None:
        """Start counting a new sampling run (the active expert stays loaded)."""
        self.run = RunStats()

    def _before_forward(self, unet, args, kwargs):
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        t = np.asarray(timestep.numpy() if isinstance(timestep, paddle.Tensor) else timestep).reshape(-1)
        experts = sorted({int(unet.router.expert_index(int(v))) for v in t})
        if len(experts) != 1:
            raise RuntimeError(
                f"expert offload holds one expert at a time, but this batch's timesteps need experts {experts}: "
                "call pipe.disable_expert_offload() to run several experts in one call (e.g. for training)"
            )
        index = experts[0]
        if not self.run.experts or self.run.experts[-1] != index:
            if index in self.run.experts:  # only a sampler whose timesteps go back up does this
                logger.warning("expert offload: expert %d is needed again in this run (timesteps not "
                               "decreasing): it is loaded again", index)
            self.run.experts += (index,)
        self.activate(index)

    def activate(self, index: int) -> None:
        """Make expert ``index`` the one on the device (a no-op if it already is)."""
        if index == self.active:
            return
        if self.slot is None:
            self.active = index
            return
        start = time.perf_counter()
        if self.active is not None:
            # Attention processors set through the mixture meanwhile reached the slot only: keep them.
            self.experts[self.active].set_attn_processor(self.slot.attn_processors)
            self.unet.experts[self.active] = self.experts[self.active]
        source = self.experts[index]
        state = self.slot.state_dict()
        if self.weights is not None:
            for name, array in self.weights.tensors(index, list(state)):
                _load_array(state[name], array)
        else:
            host = source.state_dict()
            for name, param in state.items():
                param.set_value(host[name].to(self.device))  # a device copy; the old one is released
        self.slot.set_attn_processor(source.attn_processors)  # e.g. key-word emphasis installed on all experts
        self.unet.experts[index] = self.slot
        self.active = index
        self.run.loads += 1
        self.run.load_seconds += time.perf_counter() - start

    def remove(self) -> None:
        """Put every expert back in ``unet`` on the device (for "disk": read all of them)."""
        for hook in self._hooks:
            hook.remove()
        for i, expert in enumerate(self.experts):
            if i == self.active and self.slot is not None:
                self.unet.experts[i] = self.slot  # already holds expert i
                continue
            if self.weights is not None:
                state = expert.state_dict()
                for name, array in self.weights.tensors(i, list(state)):
                    _load_array(state[name], array)
            elif not is_host(self.device):
                expert.to(device=self.device)
            self.unet.experts[i] = expert
        self.active = None


# -- per-component offload --------------------------------------------------------------------
class ModelCpuOffload:
    """diffusers' ``enable_model_cpu_offload``: the pipeline's models live on the host and
    :meth:`onload` moves one to the device (and the others back) just before it runs.
    With expert offload on, the U-Net is left to it (only its active expert is on the device)."""

    def __init__(self, pipe, sequence: List[str]):
        self.pipe = pipe
        self.sequence = sequence
        self.device = execution_device()
        self.host = paddle.CPUPlace()
        self.offload_all()

    def _movable(self) -> List[str]:
        skip = {"unet"} if getattr(self.pipe.unet, "_expert_offload", None) is not None else set()
        return [name for name in self.sequence if name not in skip]

    def onload(self, name: str) -> None:
        if is_host(self.device):
            return  # host and device are one: nothing to move
        for other in self._movable():
            target = self.device if other == name else self.host
            getattr(self.pipe, other).to(device=target)

    def offload_all(self) -> None:
        if is_host(self.device):
            return
        for name in self._movable():
            getattr(self.pipe, name).to(device=self.host)


def check_offloadable(denoiser_class: str) -> None:
    """Expert offload moves full experts; LoRA experts (one base U-Net) have none to move."""
    if denoiser_class == "LoRAExperts":
        raise ValueError("expert_offload: LoRA experts share one base U-Net (the bank is about one U-Net of memory), "
                         "so there is nothing to offload; merge them into full experts first "
                         "(tools/merge_lora_experts.py) to offload those")


def lazy_mixture(folder: str):
    """A MixtureOfDenoisingExperts from ``folder``'s config with no storage (LazyGuard)."""
    config = MixtureOfDenoisingExperts.load_config(folder)
    with paddle.LazyGuard():
        return MixtureOfDenoisingExperts.from_config(config)

