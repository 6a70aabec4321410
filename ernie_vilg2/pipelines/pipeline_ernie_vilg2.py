"""Text-to-image sampling with the ERNIE text encoder and a mixture of denoising experts."""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Union

import numpy as np
import paddle
from ppdiffusers import AutoencoderKL, DiffusionPipeline
from ppdiffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..models.mode import MixtureOfDenoisingExperts
from ..models.text_encoder import encode_text
from ..text.tokenizer import check_prompts, tokenize
from .checks import check_sampling_settings

logger = logging.getLogger(__name__)


def _as_list(value, n: int, field: str) -> List[str]:
    values = [value] * n if isinstance(value, str) else list(value)
    if len(values) != n:
        raise ValueError(f"{field}: expected 1 or {n} entries (one per prompt), got {len(values)}")
    return values


class ErnieViLG2Pipeline(DiffusionPipeline):
    """ERNIE-ViLG 2.0 text-to-image pipeline.

    Components: ``vae`` (AutoencoderKL), ``text_encoder`` (PaddleNLP ErnieModel),
    ``tokenizer`` (ErnieTokenizer), ``unet`` (MixtureOfDenoisingExperts) and ``scheduler``
    (DDIM or DPM-Solver++). Each denoising step routes its timestep to exactly one
    expert, so sampling costs the same per step for any number of experts.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae: AutoencoderKL, text_encoder, tokenizer, unet: MixtureOfDenoisingExperts, scheduler):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """PPDiffusers' loading, after checking a local folder's JSON and weight files, so
        that a damaged file is a one-line DamagedFileError naming it, not a library traceback."""
        from .loading import check_pipeline_folder

        if os.path.isdir(os.fspath(pretrained_model_name_or_path)):
            check_pipeline_folder(os.fspath(pretrained_model_name_or_path))
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

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

    def check_inputs(self, num_inference_steps: int = 50, guidance_scale: float = 2.1, height: Optional[int] = None,
                     width: Optional[int] = None, num_images_per_prompt: int = 1, seed: Optional[int] = None,
                     output_type: str = "pil"):
        """Validate the sampling settings (each error names its argument); return (height, width)
        with the model's resolution filled in. ``__call__`` runs it first; callers that loop
        over many batches run it once before the first."""
        check_sampling_settings(self.scheduler, num_inference_steps, guidance_scale, num_images_per_prompt, seed,
                                output_type)
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
        guidance_scale: float = 2.1,
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
        experts carry a knowledge attention processor. ``guidance_scale`` 1 disables CFG.
        """
        prompts = check_prompts(prompt)
        height, width = self.check_inputs(num_inference_steps, guidance_scale, height, width,
                                          num_images_per_prompt, seed, output_type)

        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        batch = len(prompts)
        do_cfg = guidance_scale != 1.0
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

        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = paddle.concat([latents] * 2) if do_cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            noise = self.unet(model_input, t, context, cross_attention_kwargs=cross_attention_kwargs).sample
            if do_cfg:
                noise_uncond, noise_text = noise.chunk(2)
                noise = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            latents = self.scheduler.step(noise, t, latents).prev_sample
            if callback is not None:
                callback(i, t, latents)

        images = self.decode_latents(latents)
        if output_type == "pil":
            images = self.numpy_to_pil(images)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
