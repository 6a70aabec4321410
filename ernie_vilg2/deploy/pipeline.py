"""``InferencePipeline``: text to image from an export folder, with Paddle Inference only.

The same sampling loop as :class:`ernie_vilg2.pipelines.ErnieViLG2Pipeline` (classifier-free
guidance with the negative/empty prompt, NumPy initial noise in prompt-major row order, one
expert per step by the timestep router, DDIM or DPM-Solver++), over the exported programs.
It imports neither PPDiffusers nor PaddleNLP: the tokenizer, the schedulers and the router
are the project's own small modules (:mod:`.tokenizer`, :mod:`.schedulers`,
:mod:`ernie_vilg2.models.routing`).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

import numpy as np

from ..models.routing import TimestepRouter
from ..pipelines.checks import check_finite_latents, check_sampling_settings, expert_guidance_scales
from ..text.tokenizer import check_prompts
from .cpu_ops import program_files, use_operators
from .manifest import read_manifest
from .predictor import PredictorSettings, Program, program_inputs
from .schedulers import build_scheduler
from .tokenizer import WordPieceTokenizer


@dataclass
class InferenceOutput:
    """``images``: PIL images, or a float32 NumPy array [B, H, W, 3] in [0, 1]."""

    images: Union[list, np.ndarray]


def _as_list(value, n: int, field: str) -> List[str]:
    values = [value] * n if isinstance(value, str) else list(value)
    if len(values) != n:
        raise ValueError(f"{field}: expected 1 or {n} entries (one per prompt), got {len(values)}")
    return values


def numpy_to_pil(images: np.ndarray) -> list:
    """[B, H, W, 3] floats in [0, 1] to PIL images, rounding as PPDiffusers does."""
    from PIL import Image

    return [Image.fromarray(image) for image in (images * 255).round().astype("uint8")]


class _OnDemandExperts:
    """Expert programs created when first asked for; only the last one asked for is kept."""

    def __init__(self, makers: Sequence[Callable[[], Program]]):
        self._makers = list(makers)
        self._index: Optional[int] = None
        self._program: Optional[Program] = None

    def __len__(self) -> int:
        return len(self._makers)

    def __getitem__(self, index: int) -> Program:
        if index != self._index:
            self._program = None  # release the old predictor before creating the next
            self._program = self._makers[index]()
            self._index = index
        return self._program


class InferencePipeline:
    """Runs an export folder made by ``tools/export_model.py``.

    ``pipe = InferencePipeline.from_export("output/tiny/export", sampler="dpm")`` then
    ``pipe(["红苹果", "a blue heart"], num_inference_steps=25, guidance_scale=3.0, seed=0).images``.
    ``pipe.scheduler`` can be replaced: ``pipe.scheduler = build_scheduler("ddim", pipe.samplers)``.
    """

    def __init__(self, folder: str, manifest: dict, settings: PredictorSettings, sampler: Optional[str] = None,
                 expert_offload: Optional[str] = None):
        if expert_offload not in (None, "disk"):
            raise ValueError(f"expert_offload must be None or 'disk', got {expert_offload!r}")
        self.folder = folder
        self.manifest = manifest
        self.settings = settings
        self.tokenizer = WordPieceTokenizer.from_manifest(folder, manifest["tokenizer"])
        router = manifest["router"]
        # an export without router.boundaries (before they were written) switches uniformly
        self.router = TimestepRouter(router["num_experts"], router["num_train_timesteps"], router.get("boundaries"))
        self.samplers = manifest["samplers"]  # each sampler's settings as the export resolved them
        self.scheduler = build_scheduler(sampler, self.samplers)
        programs, inputs = manifest["programs"], program_inputs(manifest)
        # the experts' and the VAE decoder's programs with the C++ CPU operators, where they run
        self.cpu_ops = use_operators(folder, manifest, settings.device, settings.engine)

        def program(entry, kind, name):
            model, params = program_files(entry, self.cpu_ops)
            return Program(f"{folder}/{model}", f"{folder}/{params}", inputs[kind], settings, name)

        self.text_encoder = program(programs["text_encoder"], "text_encoder", "text_encoder")
        expert_programs = [functools.partial(program, e, "expert", f"expert_{i:02d}")
                           for i, e in enumerate(programs["experts"])]
        self.experts = _OnDemandExperts(expert_programs) if expert_offload else [make() for make in expert_programs]
        self.vae_decoder = program(programs["vae_decoder"], "vae_decoder", "vae_decoder")

    @classmethod
    def from_export(
        cls,
        folder: str,
        sampler: Optional[str] = None,
        settings: Optional[PredictorSettings] = None,
        verify: str = "sha256",
        expert_offload: Optional[str] = None,
        **setting_overrides,
    ) -> "InferencePipeline":
        """Open an export folder: check its manifest and files (``verify``: ``"sha256"`` or
        ``"size"``, see :func:`~ernie_vilg2.deploy.manifest.read_manifest`) and create one
        predictor per program. ``sampler``: ``"ddim"``, ``"dpm"`` or None for the export's
        default (the saved pipeline's sampler; manifest field ``samplers.default``).
        ``expert_offload="disk"`` creates an expert's predictor only when its timesteps come and
        drops the previous one (memory of one expert; sampling visits each expert once).
        ``settings`` or keyword overrides (``device="gpu"``, ``threads=2``,
        ``engine="openvino"``, ...) choose how the programs run (:class:`PredictorSettings`)."""
        settings = dataclasses.replace(settings or PredictorSettings(), **setting_overrides)
        settings.check()
        manifest = read_manifest(folder, verify=verify)
        return cls(folder, manifest, settings, sampler, expert_offload)

    # -- properties -----------------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def image_size(self):
        """(height, width) the programs were exported for."""
        return self.manifest["image"]["height"], self.manifest["image"]["width"]

    # -- parts ------------------------------------------------------------------------------
    def encode_prompt(self, prompts: Sequence[str]) -> np.ndarray:
        return self.text_encoder(self.tokenizer(list(prompts)))

    def denoise(self, latents: np.ndarray, timestep: int, context: np.ndarray) -> np.ndarray:
        """Noise prediction of the expert that owns ``timestep``."""
        expert = self.experts[self.router.expert_index(int(timestep))]
        return expert(latents, np.array([timestep], dtype="float32"), context)

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        scaling = np.float32(self.manifest["latent"]["scaling_factor"])
        images = self.vae_decoder((latents / scaling).astype("float32"))
        images = np.clip(images / 2 + 0.5, 0, 1)
        return images.transpose(0, 2, 3, 1).astype("float32")

    # -- sampling ------------------------------------------------------------------------------
    def check_inputs(self, num_inference_steps: int = 50, guidance_scale=2.1, height: Optional[int] = None,
                     width: Optional[int] = None, num_images_per_prompt: int = 1, seed: Optional[int] = None,
                     output_type: str = "pil"):
        """ErnieViLG2Pipeline's checks and messages (each names its argument), plus the export's
        fixed size; returns (height, width). ``__call__`` runs it first."""
        check_sampling_settings(self.scheduler, num_inference_steps, guidance_scale, num_images_per_prompt, seed,
                                output_type, self.router.num_experts)
        for name, value in (("height", height), ("width", width)):
            built = self.manifest["image"][name]
            if value is not None and value != built:
                raise ValueError(
                    f"{name} must be {built}: the export was built for {self.image_size[0]}x{self.image_size[1]} "
                    f"(manifest field 'image.{name}'), got {value}; re-export with "
                    f"tools/export_model.py --{name} {value}"
                )
        return self.image_size

    def __call__(
        self,
        prompt: Union[str, List[str]],
        negative_prompt: Optional[Union[str, List[str]]] = None,
        num_inference_steps: int = 50,
        guidance_scale: Union[float, Sequence[float]] = 2.1,
        height: Optional[int] = None,
        width: Optional[int] = None,
        generator: Optional[np.random.Generator] = None,
        seed: Optional[int] = None,
        num_images_per_prompt: int = 1,
        latents: Optional[np.ndarray] = None,
        key_token_mask=None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Optional[Callable] = None,
    ):
        """Generate images; the arguments are ErnieViLG2Pipeline's (``latents`` a NumPy array).

        ``key_token_mask`` (key-word emphasis) is not in the exported programs: only None is
        accepted. ``height``/``width`` may only repeat the exported size.
        """
        prompts = check_prompts(prompt)
        self.check_inputs(num_inference_steps, guidance_scale, height, width, num_images_per_prompt, seed, output_type)
        if key_token_mask is not None:
            raise ValueError("key_token_mask: key-word emphasis is not part of the exported programs")

        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        batch = len(prompts)
        scales = expert_guidance_scales(guidance_scale, self.router.num_experts)
        do_cfg = any(scale != 1.0 for scale in scales)
        context = self.encode_prompt(prompts)
        if do_cfg:
            negatives = _as_list(negative_prompt or "", batch // num_images_per_prompt, "negative_prompt")
            negatives = [n for n in negatives for _ in range(num_images_per_prompt)]
            context = np.concatenate([self.encode_prompt(negatives), context])

        lat = self.manifest["latent"]
        shape = [batch, lat["channels"], lat["height"], lat["width"]]
        if latents is None:
            rng = generator if generator is not None else np.random.default_rng(seed)
            latents = rng.standard_normal(shape).astype("float32")
        elif list(np.shape(latents)) != shape:
            raise ValueError(f"latents: expected shape {shape}, got {list(np.shape(latents))}")
        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps)
        latents = np.asarray(latents, dtype="float32") * np.float32(scheduler.init_noise_sigma)

        for i, t in enumerate(scheduler.timesteps):
            model_input = np.concatenate([latents] * 2) if do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise = self.denoise(model_input, int(t), context)
            if do_cfg:
                noise_uncond, noise_text = np.split(noise, 2)
                scale = np.float32(scales[self.router.expert_index(int(t))])
                noise = noise_uncond + scale * (noise_text - noise_uncond)
            with np.errstate(over="ignore", invalid="ignore"):  # reported by the check, in one line
                latents = scheduler.step(noise, int(t), latents)
            check_finite_latents(latents, i, num_inference_steps)
            if callback is not None:
                callback(i, int(t), latents)

        images = self.decode_latents(latents)
        if output_type == "pil":
            images = numpy_to_pil(images)
        if not return_dict:
            return (images,)
        return InferenceOutput(images=images)
