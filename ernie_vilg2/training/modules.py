"""Training-time wrappers: one ``nn.Layer`` per stage whose forward returns the loss.

Distributed wrappers (DataParallel / Fleet) synchronise the gradients of the layer they
wrap only for computations that run through its ``forward``, so each stage packs all
its trainable parts into one of these.
"""
from __future__ import annotations

from typing import Optional

import paddle

from ..models.text_encoder import encode_text
from .losses import per_sample_weighted_mse


class VAETrainingModule(paddle.nn.Layer):
    """Reconstruction (L1) + ``kl_weight`` * KL of an AutoencoderKL."""

    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight

    def forward(self, pixels: paddle.Tensor, noise: paddle.Tensor):
        posterior = self.vae.encode(pixels).latent_dist
        # Reparameterise with our own noise so the step is reproducible from the step seed.
        z = posterior.mean + posterior.std * noise
        recon = self.vae.decode(z).sample
        rec_loss = (recon - pixels).abs().mean()
        kl = posterior.kl().mean() / float(z[0].numel())
        return rec_loss + self.kl_weight * kl, rec_loss, kl


class DiffusionTrainingModule(paddle.nn.Layer):
    """Noise the latents at ``timesteps``, predict with the routed experts, return per-sample loss."""

    def __init__(self, text_encoder, unet, alphas_cumprod: paddle.Tensor, prediction_type: str = "epsilon"):
        super().__init__()
        self.text_encoder = text_encoder
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod.astype("float32"), persistable=False)
        self.prediction_type = prediction_type

    def forward(
        self,
        input_ids: paddle.Tensor,
        latents: paddle.Tensor,
        noise: paddle.Tensor,
        timesteps: paddle.Tensor,
        loss_weight: Optional[paddle.Tensor] = None,
        key_token_mask: Optional[paddle.Tensor] = None,
    ) -> paddle.Tensor:
        context = encode_text(self.text_encoder, input_ids)
        acp = paddle.gather(self.alphas_cumprod, timesteps).reshape([-1, 1, 1, 1])
        noisy = acp.sqrt() * latents + (1.0 - acp).sqrt() * noise
        kwargs = {"key_token_mask": key_token_mask} if key_token_mask is not None else None
        pred = self.unet(noisy, timesteps, context, cross_attention_kwargs=kwargs).sample
        if self.prediction_type == "epsilon":
            target = noise
        else:  # v-prediction
            target = acp.sqrt() * noise - (1.0 - acp).sqrt() * latents
        return per_sample_weighted_mse(pred, target, loss_weight)
