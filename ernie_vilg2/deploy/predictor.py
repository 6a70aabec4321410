"""Paddle Inference predictors for the exported programs, with settings that work on this stack.

CPU (verified on Paddle 3.3.1): ``engine="paddle"`` (default): Paddle's native kernels, oneDNN
off, IR optimisation on, no ``enable_memory_optim`` (it fails on PIR programs); the outputs
equal the dynamic graph bit for bit. ``engine="onednn"``: oneDNN kernels, possible because the
exporter rewrote the two ops oneDNN gets wrong or cannot run (:mod:`.rewrites`); about 1e-6
relative from the dynamic graph and the fastest CPU choice (deploy/README.md has the numbers).
``engine="openvino"``: Paddle's OpenVINO subgraph engine. ``threads`` sets the CPU math
library's threads.

GPU (``paddlepaddle-gpu``, same code): ``enable_use_gpu``; ``engine="tensorrt"`` converts each
program once with ``paddle.tensorrt.convert`` (Paddle 3's PIR-TRT path; dynamic batch from 1
to ``max_batch``) into ``trt_cache_dir`` and runs the converted program. TensorRT is
optional and never required; it was not run in this project's CI (no GPU there).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

DEVICES = ("cpu", "gpu")
ENGINES = ("paddle", "onednn", "openvino", "tensorrt")


@dataclass
class PredictorSettings:
    """How the programs run. Defaults: the CPU settings above, Paddle's native engine."""

    device: str = "cpu"
    threads: Optional[int] = None  # CPU math library threads (Paddle's default: 1)
    ir_optim: bool = True
    engine: str = "paddle"  # "paddle", "onednn" / "openvino" (CPU) or "tensorrt" (GPU)
    gpu_id: int = 0
    gpu_memory_mb: int = 256  # initial GPU memory pool
    tensorrt_precision: str = "fp32"  # or "fp16"
    max_batch: int = 16  # TensorRT shape range: rows per call (CFG doubles the batch)
    trt_cache_dir: Optional[str] = None  # default: <export>/tensorrt

    def check(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise ValueError(f"threads must be >= 1, got {self.threads!r}")
        if self.engine in ("onednn", "openvino") and self.device != "cpu":
            raise ValueError(f"engine {self.engine!r} runs on the CPU only (device='cpu')")
        if self.engine == "tensorrt" and self.device != "gpu":
            raise ValueError("engine 'tensorrt' needs device='gpu'")
        if self.tensorrt_precision not in ("fp32", "fp16"):
            raise ValueError(f"tensorrt_precision must be 'fp32' or 'fp16', got {self.tensorrt_precision!r}")
        if self.device == "gpu":
            import paddle

            if not paddle.is_compiled_with_cuda():
                raise ValueError("device 'gpu': this Paddle build has no CUDA (install paddlepaddle-gpu)")


# An input's name, dtype and shape with "B" for the dynamic batch (TensorRT shape ranges).
InputSignature = Tuple[str, str, Sequence]


class Program:
    """One exported program behind a predictor: ``program(*arrays) -> output 0`` (NumPy)."""

    def __init__(self, model_file: str, params_file: str, inputs: Sequence[InputSignature],
                 settings: PredictorSettings, name: str):
        from paddle import inference

        self.name = name
        if settings.engine == "tensorrt":
            model_file, params_file = _tensorrt_program(model_file, params_file, inputs, settings, name)
        config = inference.Config(model_file, params_file)
        config.disable_glog_info()
        config.switch_ir_optim(settings.ir_optim)
        if settings.device == "cpu":
            config.disable_gpu()
            if settings.engine == "onednn":
                config.enable_onednn()
            else:
                config.disable_onednn()
            if settings.threads:
                config.set_cpu_math_library_num_threads(settings.threads)
            if settings.engine == "openvino":
                config.enable_openvino_engine(inference.PrecisionType.Float32)
        else:
            config.enable_use_gpu(settings.gpu_memory_mb, settings.gpu_id)
        self.predictor = inference.create_predictor(config)
        names = list(self.predictor.get_input_names())
        expected = [n for n, _, _ in inputs]
        if sorted(names) != sorted(expected):
            raise ValueError(f"{model_file}: program inputs are {names}, expected {expected}")
        self._inputs = [self.predictor.get_input_handle(n) for n, _, _ in inputs]
        self._output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        for handle, array in zip(self._inputs, arrays):
            array = np.ascontiguousarray(array)
            handle.reshape(list(array.shape))
            handle.copy_from_cpu(array)
        self.predictor.run()
        return self._output.copy_to_cpu()


def _tensorrt_program(model_file: str, params_file: str, inputs: Sequence[InputSignature],
                      settings: PredictorSettings, name: str) -> Tuple[str, str]:
    """Convert a program with Paddle 3's PIR-TRT once; return the converted program's files."""
    cache = settings.trt_cache_dir or os.path.join(os.path.dirname(os.path.dirname(model_file)), "tensorrt")
    prefix = os.path.join(cache, f"{name}-{settings.tensorrt_precision}-b{settings.max_batch}")
    if not os.path.isfile(prefix + ".json"):
        try:
            import paddle.tensorrt as trt
            from paddle.tensorrt.export import Input, PrecisionMode, TensorRTConfig
        except ImportError as exc:
            raise ValueError(f"engine 'tensorrt': this Paddle build has no TensorRT support ({exc})") from None

        def shape(dims, batch):
            return [batch if d == "B" else d for d in dims]

        specs = []
        for input_name, dtype, dims in inputs:
            spec = Input(min_input_shape=shape(dims, 1), optim_input_shape=shape(dims, settings.max_batch),
                         max_input_shape=shape(dims, settings.max_batch), input_data_type=dtype, name=input_name)
            specs.append(spec)
        config = TensorRTConfig(inputs=specs)
        config.precision_mode = PrecisionMode.FP16 if settings.tensorrt_precision == "fp16" else PrecisionMode.FP32
        config.save_model_dir = prefix
        os.makedirs(cache, exist_ok=True)
        trt.convert(os.path.splitext(model_file)[0], config)
    return prefix + ".json", prefix + ".pdiparams"


def program_inputs(manifest: Dict) -> Dict[str, List[InputSignature]]:
    """The inputs of each program, as the export folder contract defines them."""
    lat = manifest["latent"]
    length = manifest["tokenizer"]["max_length"]
    hidden = manifest["programs"]["text_encoder"].get("hidden_size", -1)
    sample = ("B", lat["channels"], lat["height"], lat["width"])
    return {
        "text_encoder": [("input_ids", "int64", ("B", length))],
        "expert": [("sample", "float32", sample), ("timestep", "float32", (1,)),
                   ("encoder_hidden_states", "float32", ("B", length, hidden))],
        "vae_decoder": [("latents", "float32", sample)],
    }
