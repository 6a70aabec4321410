"""Runs the training stages of one experiment: VAE, base U-Net (stage 1), experts (stage 2).

The run folder's layout and which stages it holds finished: :mod:`.run_folder`.
A finished stage is skipped on ``--resume``; an interrupted one continues from its
newest intact checkpoint. The requested config is checked against the checkpoints'
(:mod:`.resume`): model changes are refused, other changes need ``allow_config_change``.
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional

import numpy as np
import paddle

from ..config import ConfigError, to_dict
from ..data.sources import LatentShardSet, ShardSet
from ..models.factory import branch_denoiser, build_noise_scheduler, build_sampler, build_vae, expert_boundaries
from ..pipelines.loading import load_pipeline
from ..pipelines.pipeline_ernie_vilg2 import ErnieViLG2Pipeline
from ..utils.images import make_grid
from ..utils.io import atomic_save_image
from .batches import LatentSource, StoredLatents, StreamedLatents, estimate_scaling_factor, shard
from .checkpoint import set_aside_damaged
from .config import STAGES, ExperimentConfig
from .data_feed import StageBatches, check_latent_vae, open_training_data, report_read_problems, scaling_pixels
from .diffusion_step import DiffusionStep, TimestepSampler
from .distributed import DistContext, init_distributed, job_layout, launch_position
from .expert_parallel import assemble_bank, remove_final_experts, write_final_experts
from .knowledge import CaptionProcessor
from .loop import LoopSettings, Trainer
from .modules import DiffusionTrainingModule, VAETrainingModule
from .resume import ResumePlan, checkpoint_dir, plan_resume
from .run_folder import (RunLock, check_output_dir, final_model_dir, record_config_changes, save_atomically,
                         saved_state, stage_dir, stage_done, stages_to_run, write_run_config)
from .starting_point import models_from_config

logger = logging.getLogger(__name__)

class ExperimentRunner:
    def __init__(self, cfg: ExperimentConfig, resume: bool = False, ctx: Optional[DistContext] = None,
                 allow_config_change: bool = False):
        self.cfg = cfg
        self.resume = resume
        self.allow_config_change = allow_config_change
        self._ctx = ctx
        self.writer = None
        self._dataset = None
        self._warned = set()  # data problems warned of in this run (each once, whichever stage meets it)
        self.plan = ResumePlan()

    @property
    def ctx(self) -> DistContext:
        """The job's ranks, joined (process groups created) on first use: only once the run folder
        shows there is something to train."""
        if self._ctx is None:
            self._ctx = init_distributed(self.cfg)
        return self._ctx

    @property
    def dataset(self):
        """The training data (a MapDataset, or a ShardSet of streamed shards), opened once."""
        if self._dataset is None:
            self._dataset = open_training_data(self.cfg)
        return self._dataset

    def _batches(self, stage: str, batch_size: int) -> StageBatches:
        return StageBatches(self.dataset, self.cfg, stage, batch_size, self.ctx.rank, self.ctx.world_size,
                            warned=self._warned)

    # -- orchestration -----------------------------------------------------------------
    def run(self, stages: Optional[List[str]] = None) -> Optional[str]:
        cfg = self.cfg
        if cfg.train.mixed_precision != "no" and not paddle.device.is_compiled_with_cuda():
            raise ConfigError("train.mixed_precision", f"{cfg.train.mixed_precision!r} needs a GPU build of Paddle")
        selected = stages or cfg.train.stages
        if self._ctx is None:
            job_layout(cfg)  # a config the launched ranks cannot run: refused before anything is written
        # One trainer per run folder; in a multi-process run the main process holds it.
        is_main = self._ctx.is_main if self._ctx is not None else launch_position()[0] == 0
        lock = RunLock(cfg.train.output_dir).acquire() if is_main else None
        try:
            check_output_dir(cfg, self.resume)
            new_run = not saved_state(cfg)
            if self.resume and not new_run:
                self.plan = plan_resume(cfg.train.output_dir, to_dict(cfg), {s for s in STAGES if stage_done(cfg, s)},
                                        selected, self.allow_config_change)
            todo = stages_to_run(cfg, selected, self.plan.reopen)
            if not todo:
                # Every rank decides this from the run folder alone, before joining the job:
                # no process group, no collective that could wait for a peer.
                if is_main:
                    self._record_config(new_run)
                logger.info("nothing left to do: the stages of this run (%s) are finished in %s",
                            ", ".join(s for s in STAGES if s in selected), cfg.train.output_dir)
                return final_model_dir(cfg)
            self.ctx.barrier()  # every rank has read the checkpoints before the main one sets damaged ones aside
            if self.ctx.is_main:
                self._prepare_run_folder(new_run)
            for stage in todo:
                getattr(self, f"run_{stage}")(STAGES.index(stage))
                self.ctx.barrier()
        finally:
            if self.writer is not None:
                self.writer.close()
            if lock is not None:
                lock.release()
        return final_model_dir(cfg)

    def _record_config(self, new_run: bool) -> None:
        """Main process: the run's config record and the accepted config changes."""
        out = self.cfg.train.output_dir
        write_run_config(out, to_dict(self.cfg), new_run)
        if self.plan.changes:
            path = record_config_changes(out, self.plan.record())
            for change in self.plan.changes:
                logger.warning("config change accepted (--allow-config-change): %s", change)
            for note in self.plan.notes:
                logger.warning("%s", note)
            logger.warning("config changes recorded in %s", path)

    def _prepare_run_folder(self, new_run: bool) -> None:
        """Main process: the run's config record, accepted changes, damaged checkpoints, VisualDL."""
        out = self.cfg.train.output_dir
        self._record_config(new_run)
        for stage, damaged in self.plan.damaged.items():
            set_aside_damaged(damaged, self.plan.checkpoints[stage])
        from visualdl import LogWriter

        self.writer = LogWriter(logdir=os.path.join(out, "vdl"))

    def _settings(self, stage: str, index: int, batch_size: int) -> LoopSettings:
        t = self.cfg.train
        return LoopSettings(
            stage=stage,
            stage_index=index,
            seed=t.seed,
            checkpoint_dir=checkpoint_dir(t.output_dir, stage),
            checkpoint_every=t.checkpoint_every,
            keep_checkpoints=t.keep_checkpoints,
            log_every=t.log_every,
            samples_per_step=batch_size,
            is_main=self.ctx.is_main,
            run_config=to_dict(self.cfg),
        )

    def _trainer(self, stage: str, index: int, module, step_fn, batch_size: int, on_step=None) -> Trainer:
        stage_cfg = getattr(self.cfg.train, stage)
        trainer = Trainer(
            module, step_fn, stage_cfg, self._settings(stage, index, batch_size), writer=self.writer,
            on_step=on_step, wrap_fn=lambda optimizer: self.ctx.wrap_optimizer(optimizer, stage),
            hooks=self.ctx.loop_hooks(stage), on_checkpoint=self.ctx.barrier,
        )
        if self.ctx.expert_parallel(stage) and self.ctx.sharding:  # before resume: each rank loads its slice
            step_fn.model, trainer.optimizer = self.ctx.shard(module, trainer.optimizer)
        if stage in self.plan.checkpoints:
            trainer.resume(self.plan.checkpoints[stage])
        return trainer

    def _require(self, earlier: str, stage: str) -> None:
        if not stage_done(self.cfg, earlier):
            raise FileNotFoundError(
                f"stage {stage} needs the finished {earlier} stage in {stage_dir(self.cfg, earlier)}: "
                f"run it first (add {earlier!r} to train.stages or --stage {earlier})"
            )

    # -- stage: VAE ------------------------------------------------------------------------
    def run_vae(self, index: int) -> None:
        cfg = self.cfg
        stage_cfg = cfg.train.vae
        batch_size = stage_cfg.batch_size or cfg.train.batch_size
        if isinstance(self.dataset, LatentShardSet):
            raise ConfigError("data.root", f"{cfg.data.root} holds latent shards, and the vae stage trains on "
                                           "images: train it with the images' data.root, then encode them")
        batches = self._batches("vae", batch_size)  # the data's summary or error before the progress bar
        paddle.seed(cfg.train.seed)
        vae = build_vae(cfg.model.vae, cfg.data.resolution)
        module = VAETrainingModule(vae, stage_cfg.kl_weight)
        model = self.ctx.wrap_model(module)
        f = cfg.model.vae.scale_factor
        latent_shape = [cfg.model.vae.latent_channels, cfg.data.resolution // f, cfg.data.resolution // f]

        mine = shard(list(range(batch_size)), self.ctx.rank, self.ctx.world_size)

        def step_fn(step, rng):
            noise = rng.standard_normal([batch_size] + latent_shape).astype("float32")
            pixels, _, wait = batches.get(step)
            loss, rec, kl = model(paddle.to_tensor(pixels), paddle.to_tensor(noise[mine]))
            return loss, {"recon_l1": float(rec), "kl": float(kl), "data_wait_s": wait}

        with batches:
            trainer = self._trainer("vae", index, module, step_fn, batch_size)
            trainer.train()
        trainer.finalize_weights()
        vae.eval()
        pixels = scaling_pixels(self.dataset, cfg, batch_size, self.ctx.rank, self.ctx.world_size,
                                warned=self._warned)
        scaling = estimate_scaling_factor(vae, pixels, seed=cfg.train.seed)
        vae.register_to_config(scaling_factor=scaling)
        logger.info("VAE latent scaling factor: %.4f", scaling)
        if self.ctx.is_main:
            save_atomically(vae.save_pretrained, stage_dir(cfg, "vae"))

    # -- stages: diffusion -------------------------------------------------------------------
    def vae_dir(self) -> str:
        """The folder of the diffusion stages' VAE: the pretrained one, else the vae stage's."""
        return self.cfg.model.vae.pretrained or stage_dir(self.cfg, "vae")

    def run_base(self, index: int) -> None:
        cfg = self.cfg
        if not cfg.model.vae.pretrained:
            self._require("vae", "base")
        self._train_diffusion("base", index, *models_from_config(cfg, "base", self.vae_dir(), num_experts=1))

    def run_experts(self, index: int) -> None:
        cfg = self.cfg
        held = self.ctx.experts.experts if self.ctx.experts else None  # expert parallel: the group's experts
        if not stage_done(cfg, "base") and cfg.model.unet.pretrained:
            if not cfg.model.vae.pretrained:
                self._require("vae", "experts")
            # Straight from the pretrained U-Net: every expert starts as a copy of it.
            models = models_from_config(cfg, "experts", self.vae_dir(), cfg.model.num_experts, expert_ids=held)
            self._train_diffusion("experts", index, *models)
            return
        self._require("base", "experts")
        base = load_pipeline(stage_dir(cfg, "base"))
        unet = branch_denoiser(cfg.model, base.unet.experts[0], cfg.model.num_experts, held, cfg.model.expert_type)
        self._train_diffusion("experts", index, base.vae, base.text_encoder, base.tokenizer, unet)

    def _train_diffusion(self, stage: str, index: int, vae, text_encoder, tokenizer, unet) -> None:
        cfg = self.cfg
        stage_cfg = getattr(cfg.train, stage)
        batch_size = stage_cfg.batch_size or cfg.train.batch_size
        vae.eval()
        for p in vae.parameters():
            p.stop_gradient = True
        for p in text_encoder.parameters():
            p.stop_gradient = not stage_cfg.train_text_encoder
        if cfg.train.recompute:
            unet.enable_gradient_checkpointing()
        captions = CaptionProcessor(cfg, tokenizer)
        captions.install(unet, training=True)
        noise_scheduler = build_noise_scheduler(cfg.model)
        module = DiffusionTrainingModule(
            text_encoder, unet, noise_scheduler.alphas_cumprod, cfg.model.prediction_type
        )
        model = self.ctx.wrap_model(module, stage)
        batches = None
        check_latent_vae(self.dataset, vae, os.path.join(stage_dir(cfg, "base"), "vae")
                         if stage == "experts" and stage_done(cfg, "base") else self.vae_dir())
        if isinstance(self.dataset, LatentShardSet):
            batches = self._batches(stage, batch_size)
            source = StoredLatents(batches, vae.config.scaling_factor)
        elif cfg.train.cache_latents and not isinstance(self.dataset, ShardSet):
            source = LatentSource(self.dataset, vae, vae.config.scaling_factor, show_progress=self.ctx.is_main)
            report_read_problems(self.dataset, f"data of stage {stage} (latent cache)", len(self.dataset),
                                 self._warned)
        else:
            batches = self._batches(stage, batch_size)
            source = StreamedLatents(batches, vae, vae.config.scaling_factor)
        expert_parallel = self.ctx.expert_parallel(stage)
        timesteps = TimestepSampler(
            cfg.model.num_train_timesteps,
            cfg.model.num_experts,
            cfg.train.expert_ids if stage == "experts" else None,
            one_expert_per_step=stage == "experts" and cfg.train.one_expert_per_step,
            layout=self.ctx.experts if expert_parallel else None,
            boundaries=expert_boundaries(cfg.model),
        )
        step_fn = DiffusionStep(cfg, source, captions, model, timesteps, batch_size,
                                self.ctx.rank, self.ctx.world_size)

        pipe = ErnieViLG2Pipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
            scheduler=build_sampler(cfg.sample.sampler, model_cfg=cfg.model),
        )

        partial_bank = expert_parallel and unet.is_partial  # no rank holds all experts
        if partial_bank and self.ctx.is_main:
            logger.info("expert-parallel: no rank holds all experts, so this stage writes no sample grids; "
                        "sample the saved pipeline with tools/generate.py")

        def sample_during_training(step: int) -> None:
            if partial_bank or not (cfg.train.sample_every and step % cfg.train.sample_every == 0):
                return
            if self.ctx.is_main:
                captions.install(unet, training=False)
                self.sample_grid(pipe, stage, step, name=f"{stage}-step{step:06d}")
                captions.install(unet, training=True)
                module.train()
            self.ctx.barrier()  # the others wait here, not in the next step's all-reduce (gloo: 30 s at most)

        try:
            trainer = self._trainer(stage, index, module, step_fn, batch_size, on_step=sample_during_training)
            trainer.train()
        finally:
            if batches is not None:
                batches.close()
        trainer.finalize_weights()
        captions.install(unet, training=False)
        if partial_bank:
            self._save_expert_parallel(pipe)
        elif self.ctx.is_main:
            save_atomically(pipe.save_pretrained, stage_dir(cfg, stage))
            self.sample_grid(pipe, stage, trainer.step)

    def _save_expert_parallel(self, pipe) -> None:
        """Each group's first rank writes its experts; after a barrier rank 0 assembles the whole
        bank and saves the usual pipeline folder (the same format as one process writes)."""
        parts = os.path.join(checkpoint_dir(self.cfg.train.output_dir, "experts"), ".final")
        if self.ctx.is_main:
            remove_final_experts(parts)  # left by an interrupted run
        self.ctx.barrier()
        write_final_experts(pipe.unet, self.ctx.experts, parts)
        self.ctx.barrier()
        if self.ctx.is_main:
            bank = assemble_bank(pipe.unet, parts)
            whole = type(pipe)(**{**pipe.components, "unet": bank})
            save_atomically(whole.save_pretrained, stage_dir(self.cfg, "experts"))
            remove_final_experts(parts)
            logger.info("expert-parallel: assembled %d experts into %s", bank.num_experts,
                        stage_dir(self.cfg, "experts"))

    def sample_grid(self, pipe, stage: str, step: int, name: Optional[str] = None) -> str:
        """Sample ``sample.prompts``; log the grid to VisualDL and write samples/<name>.png."""
        s = self.cfg.sample
        pipe.set_progress_bar_config(disable=True)
        for module in (pipe.unet, pipe.text_encoder, pipe.vae):
            module.eval()
        images = pipe(s.prompts, negative_prompt=s.negative_prompt or None, num_inference_steps=s.steps,
                      guidance_scale=s.guidance_for(pipe.unet.num_experts), seed=s.seed).images
        grid = make_grid(images, cols=min(len(images), 4))
        path = os.path.join(self.cfg.train.output_dir, "samples", f"{name or stage}.png")
        atomic_save_image(grid, path)
        if self.writer is not None:
            self.writer.add_image(f"{stage}/samples", np.asarray(grid), step)
        logger.info("sample grid of stage %s: %s", stage, path)
        return path


def run_training(cfg: ExperimentConfig, resume: bool = False, stages: Optional[List[str]] = None,
                 allow_config_change: bool = False) -> Optional[str]:
    return ExperimentRunner(cfg, resume=resume, allow_config_change=allow_config_change).run(stages)
