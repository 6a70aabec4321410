"""The whole model, for the pipeline configs of benchmarks/vs_pytorch.py (used by peer_worker.py).

Paddle runs the project's own pieces: a training step as tools/train.py takes it in stage 1
(``DiffusionTrainingModule``: ERNIE forward, and backward when ``train.base.train_text_encoder``;
latents drawn from the VAE posterior cached at the start, as ``train.cache_latents``; noise at
a timestep; the expert U-Net; eps MSE; backward; AdamW with the trainer's clipping and warm-up)
and ``ErnieViLG2Pipeline`` sampling (DDIM, CFG, VAE decode, images as NumPy). PyTorch runs the
same with transformers' ``BertModel`` holding ERNIE's weights (ERNIE's architecture is BERT's:
post-LN, gelu), diffusers' ``UNet2DConditionModel``, ``AutoencoderKL`` and ``DDIMScheduler``, the
sampling loop written out here. Both get the same token ids (our tokenizer), noise and timesteps.
Key-word emphasis and the knowledge loss weights are off: both sides compute one function.

Like peer_worker.py this imports neither framework at module level.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Tuple

import numpy as np

# PaddleNLP ErnieModel parameter -> transformers BertModel parameter (then ".weight"/".bias").
_ERNIE_TO_BERT = (
    (r"embeddings\.(word|position|token_type)_embeddings", r"embeddings.\1_embeddings"),
    (r"embeddings\.layer_norm", "embeddings.LayerNorm"),
    (r"encoder\.layers\.(\d+)\.self_attn\.q_proj", r"encoder.layer.\1.attention.self.query"),
    (r"encoder\.layers\.(\d+)\.self_attn\.k_proj", r"encoder.layer.\1.attention.self.key"),
    (r"encoder\.layers\.(\d+)\.self_attn\.v_proj", r"encoder.layer.\1.attention.self.value"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj", r"encoder.layer.\1.attention.output.dense"),
    (r"encoder\.layers\.(\d+)\.norm1", r"encoder.layer.\1.attention.output.LayerNorm"),
    (r"encoder\.layers\.(\d+)\.linear1", r"encoder.layer.\1.intermediate.dense"),
    (r"encoder\.layers\.(\d+)\.linear2", r"encoder.layer.\1.output.dense"),
    (r"encoder\.layers\.(\d+)\.norm2", r"encoder.layer.\1.output.LayerNorm"),
    (r"pooler\.dense", "pooler.dense"),
)
# ErnieConfig fields that BertConfig takes under the same name.
BERT_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id")


def bert_name(ernie_key: str) -> str:
    """BertModel's name of a PaddleNLP ErnieModel parameter; a ValueError for one BERT lacks."""
    for pattern, replacement in _ERNIE_TO_BERT:
        m = re.fullmatch(pattern + r"\.(weight|bias)", ernie_key)
        if m:
            return m.expand(replacement) + "." + m.group(m.lastindex)
    raise ValueError(f"ERNIE parameter {ernie_key!r} has no BertModel counterpart")


def bert_state(ernie_state: dict, pad_token_id: int) -> dict:
    """BertModel's state of ERNIE's (NumPy arrays in torch layout). Paddle's embedding lookup
    returns zeros for the padding id whatever its row holds; torch's reads the row, so it is
    zeroed here (neither framework's gradient ever changes it)."""
    state = {bert_name(k): v for k, v in ernie_state.items()}
    words = state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"].copy()
    words[pad_token_id] = 0.0
    return state


def bert_config(ernie_config: dict) -> dict:
    """BertConfig keywords of a same-size BERT (dropout off, as our text encoder is built)."""
    if ernie_config.get("use_task_id"):
        raise ValueError("ERNIE with use_task_id has task embeddings that BertModel lacks")
    return {**{k: ernie_config[k] for k in BERT_CONFIG_KEYS}, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}


def latents_from_cache(inputs: dict) -> np.ndarray:
    """The latents DiffusionStep draws from a cached posterior: (mean + std * eps) * scaling factor."""
    return ((inputs["mean"] + inputs["std"] * inputs["eps"]) * inputs["scaling_factor"]).astype("float32")


# -- init (project venv) -------------------------------------------------------------------------
def init(spec: dict, torch_layout: Callable) -> dict:
    """Build configs/tiny.yaml's pipeline the way tools/train.py does (seeded), save it for the
    Paddle workers, write the torch-named weights and the inputs; return the spec's additions."""
    import paddle

    from ernie_vilg2.models.expert_bank import MixtureOfDenoisingExperts
    from ernie_vilg2.models.factory import build_noise_scheduler
    from ernie_vilg2.pipelines.building import build_pipeline
    from ernie_vilg2.text.tokenizer import tokenize
    from ernie_vilg2.training.config import load_config

    p = spec["pipeline"]
    cfg = load_config(p["config"])
    paddle.seed(spec["seed"])
    pipe = build_pipeline(cfg.model, cfg.data.resolution, num_experts=cfg.model.num_experts, sampler="ddim")
    pipe.save_pretrained(p["folder"])
    # Stage 1 trains one U-Net of the experts' config.
    MixtureOfDenoisingExperts.from_unet(pipe.unet.experts[0], 1, cfg.model.num_train_timesteps).save_pretrained(
        p["base_unet"])

    ernie = bert_state(torch_layout(pipe.text_encoder), pipe.text_encoder.config.pad_token_id)
    weights = {f"text_encoder.{k}": v for k, v in ernie.items()}
    weights.update({f"vae.{k}": v for k, v in torch_layout(pipe.vae).items()})
    for i, expert in zip(pipe.unet.expert_ids, pipe.unet.experts):
        weights.update({f"unet.{i}.{k}": v for k, v in torch_layout(expert).items()})
    np.savez(spec["weights"], **weights)

    rng = np.random.default_rng(spec["seed"])
    batch, prompts = cfg.train.batch_size, list(cfg.sample.prompts)
    latent = [cfg.model.vae.latent_channels] + [cfg.data.resolution // cfg.model.vae.scale_factor] * 2
    length = pipe.max_length
    np.savez(
        spec["inputs"],
        ids=tokenize(pipe.tokenizer, [prompts[i % len(prompts)] for i in range(batch)], length),
        pixels=rng.uniform(-1, 1, (batch, 3, cfg.data.resolution, cfg.data.resolution)).astype("float32"),
        eps=rng.standard_normal([batch] + latent).astype("float32"),
        noise=rng.standard_normal([batch] + latent).astype("float32"),
        t=rng.integers(0, cfg.model.num_train_timesteps, batch).astype("int64"),
        sample_ids=tokenize(pipe.tokenizer, prompts, length),
        uncond_ids=tokenize(pipe.tokenizer, [cfg.sample.negative_prompt or ""] * len(prompts), length),
        latents=rng.standard_normal([len(prompts)] + latent).astype("float32"),
    )
    stage = cfg.train.base
    schedule = dict(build_noise_scheduler(cfg.model).config)
    ddim = dict(pipe.scheduler.config)
    return dict(
        bert=bert_config(pipe.text_encoder.config.to_dict()),
        unet=dict(pipe.unet.config.unet),
        vae={k: pipe.vae.config[k] for k in ("in_channels", "out_channels", "down_block_types", "up_block_types",
                                            "block_out_channels", "layers_per_block", "latent_channels",
                                            "norm_num_groups", "sample_size", "scaling_factor")},
        noise_schedule={k: schedule[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                                 "prediction_type")},
        ddim={k: ddim[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample",
                                   "set_alpha_to_one", "steps_offset", "prediction_type", "timestep_spacing")},
        num_experts=cfg.model.num_experts,
        optimizer=dict(lr=stage.lr, betas=list(stage.betas), weight_decay=stage.weight_decay,
                       warmup_steps=stage.warmup_steps, max_grad_norm=stage.max_grad_norm),
        train_text_encoder=stage.train_text_encoder,
        prompts=prompts, negative_prompt=cfg.sample.negative_prompt,
        sample_steps=cfg.sample.steps, guidance=cfg.sample.guidance_scale,
    )


# -- Paddle: the project's training step and pipeline --------------------------------------------
def paddle_train(spec: dict, inputs: dict, set_variant: Callable) -> Tuple[np.ndarray, Callable]:
    import paddle
    from ppdiffusers import AutoencoderKL

    from ernie_vilg2.models.expert_bank import MixtureOfDenoisingExperts
    from ernie_vilg2.models.factory import build_noise_scheduler
    from ernie_vilg2.models.text_encoder import build_text_encoder, encode_text
    from ernie_vilg2.training.batches import encode_images
    from ernie_vilg2.training.config import load_config
    from ernie_vilg2.training.loop import build_optimizer, trainable_parameters
    from ernie_vilg2.training.modules import DiffusionTrainingModule

    p = spec["pipeline"]
    cfg = load_config(p["config"])
    stage = cfg.train.base
    # What ExperimentRunner.run_base + _train_diffusion hold: the frozen VAE, ERNIE, one U-Net.
    vae = AutoencoderKL.from_pretrained(os.path.join(p["folder"], "vae"))
    text_encoder = build_text_encoder(spec["bert"]["vocab_size"], pretrained=os.path.join(p["folder"], "text_encoder"))
    unet = MixtureOfDenoisingExperts.from_pretrained(p["base_unet"])
    set_variant(unet)
    vae.eval()
    for param in vae.parameters():
        param.stop_gradient = True
    for param in text_encoder.parameters():
        param.stop_gradient = not stage.train_text_encoder
    module = DiffusionTrainingModule(text_encoder, unet, build_noise_scheduler(cfg.model).alphas_cumprod,
                                     cfg.model.prediction_type)
    module.train()
    mean, std = encode_images(vae, inputs["pixels"])  # the latent cache
    cache = dict(inputs, mean=mean, std=std, scaling_factor=vae.config.scaling_factor)
    optimizer, schedule = build_optimizer(trainable_parameters(module), stage)
    with paddle.no_grad():
        check = encode_text(text_encoder, paddle.to_tensor(inputs["ids"])).numpy()

    def step():  # Trainer.train's step on DiffusionStep's tensors
        losses = module(paddle.to_tensor(inputs["ids"]), paddle.to_tensor(latents_from_cache(cache)),
                        paddle.to_tensor(inputs["noise"]), paddle.to_tensor(inputs["t"]))
        loss = losses.mean()
        value = float(loss)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad(set_to_zero=False)
        schedule.step()
        return value

    return check, step


def paddle_sample(spec: dict, inputs: dict, set_variant: Callable) -> Tuple[np.ndarray, Callable]:
    import paddle

    from ernie_vilg2.pipelines.loading import load_pipeline

    pipe = load_pipeline(spec["pipeline"]["folder"])
    pipe.set_progress_bar_config(disable=True)
    set_variant(pipe.unet)
    latents = paddle.to_tensor(inputs["latents"])

    def step():
        return pipe(spec["prompts"], negative_prompt=spec["negative_prompt"] or None,
                    num_inference_steps=spec["sample_steps"], guidance_scale=spec["guidance"], latents=latents,
                    output_type="np").images

    return step(), step


# -- PyTorch: transformers' BERT + diffusers ----------------------------------------------------
def _torch_modules(spec: dict, arrays: dict, experts):
    """BertModel, AutoencoderKL and the U-Nets of ``experts`` from the torch-named weights."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import BertConfig, BertModel

    def load(module, prefix):
        state = {k[len(prefix):]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()
                 if k.startswith(prefix)}
        module.load_state_dict(state, strict=True)
        return module

    bert = load(BertModel(BertConfig(**spec["bert"])), "text_encoder.")
    vae = load(AutoencoderKL(**spec["vae"]), "vae.")
    unets = [load(UNet2DConditionModel(**spec["unet"]), f"unet.{i}.") for i in experts]
    return bert, vae, unets


def _encode(bert, ids, pad):
    """ErnieModel's masking: padding tokens are never attended to."""
    return bert(ids, attention_mask=(ids != pad).long()).last_hidden_state


def torch_train(spec: dict, inputs: dict, arrays: dict) -> Tuple[np.ndarray, Callable]:
    import torch
    from diffusers import DDPMScheduler

    bert, vae, (unet,) = _torch_modules(spec, arrays, [0])
    pad, opt = spec["bert"]["pad_token_id"], spec["optimizer"]
    vae.eval().requires_grad_(False)
    bert.train().requires_grad_(spec["train_text_encoder"])
    unet.train()
    with torch.no_grad():
        posterior = vae.encode(torch.from_numpy(inputs["pixels"])).latent_dist
        cache = dict(inputs, mean=posterior.mean.numpy(), std=posterior.std.numpy(),
                     scaling_factor=vae.config.scaling_factor)
        check = _encode(bert, torch.from_numpy(inputs["ids"]), pad).numpy()
    alphas_cumprod = DDPMScheduler(**spec["noise_schedule"]).alphas_cumprod.float()
    params = [q for q in list(bert.parameters()) + list(unet.parameters()) if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opt["lr"], betas=tuple(opt["betas"]), weight_decay=opt["weight_decay"])
    warmup = opt["warmup_steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)

    def step():
        ids, t = torch.from_numpy(inputs["ids"]), torch.from_numpy(inputs["t"])
        latents, noise = torch.from_numpy(latents_from_cache(cache)), torch.from_numpy(inputs["noise"])
        context = _encode(bert, ids, pad)
        acp = alphas_cumprod[t].reshape(-1, 1, 1, 1)
        noisy = acp.sqrt() * latents + (1.0 - acp).sqrt() * noise
        loss = torch.nn.functional.mse_loss(unet(noisy, t, context).sample, noise)
        value = float(loss.detach())
        loss.backward()
        if opt["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(params, opt["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        return value

    return check, step


def torch_sample(spec: dict, inputs: dict, arrays: dict) -> Tuple[np.ndarray, Callable]:
    import torch
    from diffusers import DDIMScheduler

    n = spec["num_experts"]
    bert, vae, unets = _torch_modules(spec, arrays, range(n))
    for module in [bert, vae] + unets:
        module.eval()
    scheduler = DDIMScheduler(**spec["ddim"])
    pad, guidance = spec["bert"]["pad_token_id"], spec["guidance"]
    stage_length = spec["ddim"]["num_train_timesteps"] // n
    cond_ids, uncond_ids = torch.from_numpy(inputs["sample_ids"]), torch.from_numpy(inputs["uncond_ids"])
    start = torch.from_numpy(inputs["latents"])

    @torch.no_grad()
    def step():
        context = torch.cat([_encode(bert, uncond_ids, pad), _encode(bert, cond_ids, pad)])
        scheduler.set_timesteps(spec["sample_steps"])
        x = start * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            unet = unets[min(int(t), spec["ddim"]["num_train_timesteps"] - 1) // stage_length]  # the MoDE router
            eps = unet(scheduler.scale_model_input(torch.cat([x, x]), t), t, context).sample
            uncond, cond = eps.chunk(2)
            x = scheduler.step(uncond + guidance * (cond - uncond), t, x).prev_sample
        images = vae.decode(x / vae.config.scaling_factor).sample
        return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()

    return step(), step


def prepare(framework: str, mode: str, spec: dict, arrays: dict, inputs: dict,
            set_variant: Callable) -> Tuple[np.ndarray, Callable]:
    """(check output, step function) of one worker: the text encoder's output for train, the
    images for sample; a step is one training step or one whole sampling run."""
    if mode not in ("train", "sample"):
        raise SystemExit(f"error: --mode must be train or sample, got {mode!r}")
    if framework == "paddle":
        return (paddle_train if mode == "train" else paddle_sample)(spec, inputs, set_variant)
    return (torch_train if mode == "train" else torch_sample)(spec, inputs, arrays)
