"""Text-to-image sampling with the ERNIE text encoder and a mixture of denoising experts."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import List, Optional, Sequence, Union

import numpy as np
import paddle
from ppdiffusers import AutoencoderKL, DiffusionPipeline
from ppdiffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..models.expert_bank import MixtureOfDenoisingExperts
from ..models.fast_layers import use_fast_layers
from ..models.lora_experts import LoRAExperts
from ..models.speedups import apply_speedups
from ..models.text_encoder import encode_text
from ..text.tokenizer import check_prompts, tokenize
from ..utils.integrity import check_pipeline_folder
from .checks import check_finite_latents, check_sampling_settings, expert_guidance_scales
from .offload import (EXPERT_OFFLOADS, ExpertOffload, ExpertWeightsFile, ModelCpuOffload, check_offloadable,
                      lazy_mixture)

logger = logging.getLogger(__name__)


def _as_list(value, n: int, field: str) -> List[str]:
    values = [value] * n if isinstance(value, str) else list(value)
    if len(values) != n:
        raise ValueError(f"{field}: expected 1 or {n} entries (one per prompt), got {len(values)}")
    return values


def _check_offload_name(value, field: str = "expert_offload") -> None:
    if value is not None and value not in EXPERT_OFFLOADS:
        raise ValueError(f"{field} must be one of {EXPERT_OFFLOADS} or None, got {value!r}")


@contextlib.contextmanager
def _host_device():
    """Create tensors on the host meanwhile (Paddle's default device otherwise)."""
    previous = paddle.get_device()
    paddle.set_device("cpu")
    try:
        yield
    finally:
        paddle.set_device(previous)


class ErnieViLG2Pipeline(DiffusionPipeline):
    """ERNIE-ViLG 2.0 text-to-image pipeline.

    Components: ``vae`` (AutoencoderKL), ``text_encoder`` (PaddleNLP ErnieModel),
    ``tokenizer`` (ErnieTokenizer), ``unet`` (MixtureOfDenoisingExperts, or LoRAExperts) and ``scheduler``
    (DDIM or DPM-Solver++). Each denoising step routes its timestep to exactly one
    expert, so sampling costs the same per step for any number of experts.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae: AutoencoderKL, text_encoder, tokenizer,
                 unet: Union[MixtureOfDenoisingExperts, LoRAExperts], scheduler):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        apply_speedups(unet)  # the experts' faster attention and layers (models/speedups.py)
        use_fast_layers(vae)  # its convolutions on CPU as the experts' (models/fast_layers.py)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, expert_offload: Optional[str] = None, **kwargs):
        """PPDiffusers' loading, after checking a local folder's JSON and weight files, so
        that a damaged file is a one-line DamagedFileError naming it, not a library traceback.

        ``expert_offload`` keeps one expert on the device (see :meth:`enable_expert_offload`):
        "cpu" loads the experts into host memory, "disk" loads none of them (each is read
        from ``unet/diffusion_paddle_model.safetensors`` when sampling needs it), so host
        memory holds one expert whatever the size of the bank.
        """
        path = os.fspath(pretrained_model_name_or_path)
        _check_offload_name(expert_offload)
        if expert_offload is not None and not os.path.isdir(path):
            raise ValueError(f"expert_offload needs a local pipeline folder, got {path!r}")
        if os.path.isdir(path):
            check_pipeline_folder(path)
        if expert_offload is not None:
            check_offloadable(MixtureOfDenoisingExperts.load_config(os.path.join(path, "unet")).get("_class_name"))
        weights = None
        if expert_offload == "disk":
            weights = ExpertWeightsFile(os.path.join(path, "unet"))
            kwargs["unet"] = lazy_mixture(os.path.join(path, "unet"))
        elif expert_offload == "cpu":
            with _host_device():  # never the whole bank on the device, not even while loading
                kwargs["unet"] = MixtureOfDenoisingExperts.from_pretrained(path, subfolder="unet")
        pipe = super().from_pretrained(path, **kwargs)
        if expert_offload is not None:
            pipe._start_expert_offload(ExpertOffload(pipe.unet, weights))
        return pipe

    @classmethod
    def load_config(cls, *args, **kwargs):
        """ConfigMixin's, with the denoiser's module read as the class's module: a saved
        ``model_index.json`` names the module the class had when the folder was saved (e.g.
        ``ernie_vilg2.models.mode``), and PPDiffusers imports that module."""
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        for name, entry in config.items():
            if (isinstance(entry, list) and len(entry) == 2 and entry[1] == MixtureOfDenoisingExperts.__name__
                    and isinstance(entry[0], str) and entry[0].startswith("ernie_vilg2.")):
                config[name] = [MixtureOfDenoisingExperts.__module__, entry[1]]
        return loaded

    # -- offloading (sampling a bank larger than memory) ---------------------------------------
    @property
    def expert_offload(self) -> Optional[ExpertOffload]:
        """The expert offload state (``.offload``, ``.active``, ``.run`` = the last run's loads
        and switches), or None when every expert is in memory."""
        return getattr(self.unet, "_expert_offload", None)

    def enable_expert_offload(self, offload: str = "cpu") -> None:
        """Keep only the active expert on the device; the others stay on the host ("cpu",
        pinned memory next to a GPU). An expert is copied in when the first step of its
        timestep range runs, replacing the previous one: at most N loads and N - 1 switches
        per sampling run. Costs one expert copy per switch; on a CPU, where host and device
        are one, it copies nothing. "disk" (experts read from the saved file, not kept in
        host memory) is chosen when loading: ``from_pretrained(folder, expert_offload="disk")``.
        """
        _check_offload_name(offload, "offload")
        current = self.expert_offload
        if current is not None:
            if current.offload == offload:
                return
            raise ValueError(f"offload: expert offload is already on with {current.offload!r}; "
                             "call disable_expert_offload() first")
        check_offloadable(type(self.unet).__name__)
        if offload == "disk":
            raise ValueError(
                "offload='disk' reads the experts from their saved safetensors file: save the pipeline "
                "(save_pretrained) and load it with ErnieViLG2Pipeline.from_pretrained(folder, expert_offload='disk')"
            )
        self._start_expert_offload(ExpertOffload(self.unet))

    def disable_expert_offload(self) -> None:
        """Put every expert back on the device (for "disk": reads all of them into memory)."""
        offload = self.expert_offload
        if offload is not None:
            offload.remove()
            self.unet._expert_offload = None

    def _start_expert_offload(self, offload: ExpertOffload) -> None:
        self.unet._expert_offload = offload
        logger.info("expert offload (%s): %d experts, one on %s at a time", offload.offload,
                    offload.num_experts, offload.device)

    def enable_model_cpu_offload(self) -> None:
        """diffusers' model CPU offload: the text encoder, the U-Net and the VAE live on the host
        and each is moved to the device (Paddle's current one) only while it runs. With expert
        offload on as well, the U-Net's experts are left to it. On a CPU: nothing to move."""
        self._model_cpu_offload = ModelCpuOffload(self, self.model_cpu_offload_seq.split("->"))

    def _onload(self, name: str) -> None:
        offload = getattr(self, "_model_cpu_offload", None)
        if offload is not None:
            offload.onload(name)

    def to(self, *args, **kwargs):
        if self.expert_offload is not None:
            raise ValueError("to(): the experts are offloaded (expert_offload); they follow Paddle's current "
                             "device: call disable_expert_offload() before moving or casting the pipeline")
        return super().to(*args, **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        offload = self.expert_offload
        if offload is not None and offload.offload == "disk":
            raise ValueError(
                f"save_pretrained: the experts are not in memory (expert_offload='disk'); they are in "
                f"{offload.weights.folder}: copy the model folder, or load it without expert_offload to save it"
            )
        return super().save_pretrained(save_directory, **kwargs)

    @property
    def max_length(self) -> int:
        return int(min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings))

    def encode_prompt(self, prompts: List[str]) -> paddle.Tensor:
        ids = tokenize(self.tokenizer, prompts, self.max_length)
        return encode_text(self.text_encoder, paddle.to_tensor(ids))

    def decode_latents(self, latents: paddle.Tensor) -> np.ndarray:
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        images = (images / 2 + 0.5).clip(0, 1)
        return images.transpose([0, 2, 3, 1]).astype("float32").numpy()

    def check_inputs(self, num_inference_steps: int = 50, guidance_scale=2.1, height: Optional[int] = None,
                     width: Optional[int] = None, num_images_per_prompt: int = 1, seed: Optional[int] = None,
                     output_type: str = "pil"):
        """Validate the sampling settings (each error names its argument); return (height, width)
        with the model's resolution filled in. ``__call__`` runs it first; callers that loop
        over many batches run it once before the first."""
        check_sampling_settings(self.scheduler, num_inference_steps, guidance_scale, num_images_per_prompt, seed,
                                output_type, self.unet.num_experts)
        default_size = self.unet.sample_size * self.vae_scale_factor
        height = default_size if height is None else height
        width = default_size if width is None else width
        for name, value in (("height", height), ("width", width)):
            if value <= 0 or value % self.vae_scale_factor:
                raise ValueError(f"{name} must be a positive multiple of {self.vae_scale_factor}, got {value}")
        return height, width

    @paddle.no_grad()
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
        latents: Optional[paddle.Tensor] = None,
        key_token_mask: Optional[np.ndarray] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback=None,
    ):
        """Generate images.

        ``seed`` (or a ``numpy.random.Generator``) draws the initial noise with NumPy, so
        a seed gives the same images on CPU and GPU. ``key_token_mask`` ([B, max_length],
        from the textual-knowledge module) enables key-word emphasis at sampling when the
        experts carry a knowledge attention processor. ``guidance_scale`` 1 disables CFG;
        a list of one scale per expert guides each step with its expert's scale (CFG then runs
        unless every scale is 1).
        """
        prompts = check_prompts(prompt)
        height, width = self.check_inputs(num_inference_steps, guidance_scale, height, width,
                                          num_images_per_prompt, seed, output_type)

        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        batch = len(prompts)
        scales = expert_guidance_scales(guidance_scale, self.unet.num_experts)
        do_cfg = any(scale != 1.0 for scale in scales)
        self._onload("text_encoder")
        context = self.encode_prompt(prompts)
        cross_attention_kwargs = None
        if key_token_mask is not None:
            mask = np.repeat(np.asarray(key_token_mask, dtype="float32"), num_images_per_prompt, axis=0)
            cross_attention_kwargs = {"key_token_mask": paddle.to_tensor(mask)}
        if do_cfg:
            negatives = _as_list(negative_prompt or "", len(prompts) // num_images_per_prompt, "negative_prompt")
            negatives = [n for n in negatives for _ in range(num_images_per_prompt)]
            uncond = encode_text(
                self.text_encoder, paddle.to_tensor(tokenize(self.tokenizer, negatives, self.max_length))
            )
            context = paddle.concat([uncond, context])
            if cross_attention_kwargs:
                m = cross_attention_kwargs["key_token_mask"]
                cross_attention_kwargs["key_token_mask"] = paddle.concat([paddle.zeros_like(m), m])

        shape = [batch, self.unet.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor]
        if latents is None:
            rng = generator if generator is not None else np.random.default_rng(seed)
            latents = paddle.to_tensor(rng.standard_normal(shape).astype("float32"))
        elif list(latents.shape) != shape:
            raise ValueError(f"latents: expected shape {shape}, got {list(latents.shape)}")
        self.scheduler.set_timesteps(num_inference_steps)
        latents = latents * self.scheduler.init_noise_sigma

        self._onload("unet")
        if self.expert_offload is not None:
            self.expert_offload.begin_run()
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = paddle.concat([latents] * 2) if do_cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            noise = self.unet(model_input, t, context, cross_attention_kwargs=cross_attention_kwargs).sample
            if do_cfg:
                noise_uncond, noise_text = noise.chunk(2)
                scale = scales[self.unet.router.expert_index(int(t))]
                noise = noise_uncond + scale * (noise_text - noise_uncond)
            latents = self.scheduler.step(noise, t, latents).prev_sample
            check_finite_latents(latents, i, num_inference_steps)
            if callback is not None:
                callback(i, t, latents)

        self._onload("vae")
        images = self.decode_latents(latents)
        if getattr(self, "_model_cpu_offload", None) is not None:
            self._model_cpu_offload.offload_all()  # the device is free between calls
        if output_type == "pil":
            images = self.numpy_to_pil(images)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
