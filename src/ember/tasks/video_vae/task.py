"""Causal video VAE (seed 000, Open-Sora-Plan's train_causalvae.py): reconstruction + KL, and from
disc_start a 3D PatchGAN whose generator term is weighted adaptively. The VAE and the discriminator
are two optimizers ("vae" first, so its loss is logged as `loss`; the discriminator's as `loss_disc`).

Loss normalisation: the VAE loss is summed over pixel values and counted in pixel values, i.e. a
per-pixel mean L1/L2 + kl_weight × KL / pixels — Open-Sora-Plan's per-clip sums divided by the
pixels of a clip, so kl_weight keeps its meaning. The discriminator's loss is a mean per clip.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from torch import nn

from ...config.errors import ConfigError
from ...engine.optim import decay_split
from ...engine.task import Loss, Task
from .compile import CompiledForward
from .data import build_video_datasets, collate_clips
from .discriminator import PatchDiscriminator3D
from .ema import EMAWeights
from .losses import (
    adaptive_generator_weight,
    discriminator_loss,
    generator_adversarial_loss,
    psnr,
    reconstruction_sum,
    ssim,
)
from .model import CausalVAE, CausalVAEConfig, clip_noise, repeated_blocks
from .recon import write_reconstructions

log = logging.getLogger("ember")


class VideoVAEModel(nn.Module):
    """What the engine trains and checkpoints: the VAE, its discriminator and the EMA (buffers).

    Training calls the model itself, once per micro-batch, so that a DDP wrapper's hooks see every
    parameter the step uses; calling `model.vae` or `model.discriminator` directly would bypass
    them and leave gradients unsynchronised across ranks.
    """

    def __init__(self, vae: CausalVAE, discriminator: nn.Module | None, ema: bool):
        super().__init__()
        self.vae = vae
        self.discriminator = discriminator
        self.ema = EMAWeights(vae) if ema else None

    def forward(self, x_bcthw: torch.Tensor, sample: bool = True, gan: bool = False, run=None,
                noise_seeds: list[int] | None = None) -> dict:
        """The reconstruction and each clip's KL; with `gan`, the discriminator's logits too.

        run(module, *args, **kwargs) calls the VAE (a compiled forward under mode 0); noise_seeds
        seed each clip's posterior noise (else it comes from the global generator).
        """
        noise = None
        if sample and noise_seeds is not None:
            shape = self.vae.config.latent_shape(*x_bcthw.shape[2:])
            noise = clip_noise(noise_seeds, shape).to(x_bcthw.device)
        recon_bcthw, posterior = (run or _call)(self.vae, x_bcthw, sample=sample, noise=noise)
        out = {"recon": recon_bcthw, "kl": posterior.kl()}
        if gan:
            out["logits_fake"] = self.discriminator(recon_bcthw)  # the generator's term: reaches the VAE
            # the discriminator's own terms see detached clips: its loss never reaches the VAE
            out["logits_real"] = self.discriminator(x_bcthw.detach())
            out["logits_fake_detached"] = self.discriminator(recon_bcthw.detach())
        return out


def _call(module: nn.Module, *args, **kwargs):
    return module(*args, **kwargs)


class VideoVAETask(Task):
    # the EMA buffers (a second copy of the VAE) change only through updates that every rank
    # applies to identical weights: DDP re-sending them from rank 0 at every forward is waste
    ddp_broadcast_buffers = False

    def __init__(self, cfg):
        self.cfg = cfg
        # before disc_start the discriminator takes no part in a step: DDP must look for the
        # parameters a forward leaves out
        self.forward_may_skip_parameters = cfg.disc_start >= 0
        if cfg.distributed_strategy == "fsdp":
            # the engine keeps the VAE's and the discriminator's gradients apart with
            # backward(inputs=their parameters); under FSDP2 those are sharded parameters the
            # forward never touches (it uses gathered copies), so no gradient reaches them (a
            # two-process run logs grad_norm 0.0). The EMA also mixes whole tensors with shards.
            raise ConfigError("task video_vae does not support distributed_strategy: fsdp; use ddp (the default), "
                              "which replicates the VAE on every process")
        if cfg.perceptual_weight > 0:
            raise ConfigError("perceptual_weight > 0 needs an LPIPS network, and none ships with ember nor can be "
                              "downloaded here (perceptual_weights is not supported yet); set perceptual_weight: 0")
        self.vae_config = CausalVAEConfig.from_spec(cfg.model_config_)
        step = self.vae_config.temporal_factor
        self.num_frames = 1 + (cfg.video_num_frames - 1) // step * step
        if self.num_frames != cfg.video_num_frames:
            log.info("video_num_frames %d is not 1 + %dk: clips use %d frames", cfg.video_num_frames, step,
                     self.num_frames)
        self.forward = CompiledForward(cfg.mode, cfg.jit_level)
        self.trained_to = 0  # the step the weights have reached, names the reconstructions
        self.written_at: int | None = None

    # ---- data and model -----------------------------------------------------------------
    def build_data(self):
        train, val = build_video_datasets(self.cfg, self.num_frames)
        return train, val, collate_clips

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        discriminator = (PatchDiscriminator3D(self.vae_config.in_channels, cfg.disc_channels)
                         if cfg.disc_start >= 0 else None)
        model = self.model = VideoVAEModel(CausalVAE(self.vae_config), discriminator, ema=cfg.ema_decay > 0)
        sizes = {name: sum(p.numel() for p in part.parameters()) for name, part in model.named_children()
                 if name != "ema" and part is not None}
        log.info("causal VAE %s: %s parameters", cfg.model_config_, ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
        return model

    def read_weights(self, source: str) -> dict[str, torch.Tensor]:
        """load_from_checkpoint in every form a seed user has (checkpoint_forms.py): an Open-Sora-Plan
        folder or training checkpoint, a bare state dict, mindone's MindSpore .ckpt, ember's export
        or checkpoint, under this model's names (a fresh discriminator where the source has none)."""
        from .checkpoint_forms import task_model_tensors
        return task_model_tensors(self.model, source, self.cfg.ignore_mismatched_sizes)

    def recomputed_blocks(self, model: VideoVAEModel) -> list[nn.Module]:
        """The VAE's residual and attention blocks (not the small discriminator's layers)."""
        return repeated_blocks(model.vae)

    def param_groups(self, model: VideoVAEModel) -> dict:
        groups = {"vae": decay_split(model.vae.named_parameters(), self.cfg.weight_decay)}
        if model.discriminator is not None:
            lr = {"lr": self.cfg.disc_learning_rate} if self.cfg.disc_learning_rate else {}
            groups["disc"] = decay_split(model.discriminator.named_parameters(), self.cfg.weight_decay, **lr)
        return groups

    # ---- one step -----------------------------------------------------------------------
    def training_step(self, model, batch, step: int) -> dict[str, Loss]:
        self.trained_to = step + 1
        gan = self.model.discriminator is not None and step >= self.cfg.disc_start
        return self._losses(model, batch, sample=True, gan=gan, seeds=self.noise_seeds(batch, step))

    def evaluation_step(self, model, batch) -> dict[str, Loss]:
        """The posterior mean, no GAN term: the reconstruction + KL loss of the VAE alone."""
        return self._losses(model, batch, sample=False, gan=False, seeds=None)

    def _losses(self, model, batch, sample: bool, gan: bool, seeds: list[int] | None) -> dict[str, Loss]:
        cfg, inner = self.cfg, self.model  # `model` may be the DDP wrapper; `inner` is what it wraps
        x_bcthw = batch["video"].to(inner.vae.quant_conv.weight.dtype)
        out = model(x_bcthw, sample=sample, gan=gan, run=self.forward, noise_seeds=seeds)  # DDP's hooks see this
        recon_bcthw, count = out["recon"], x_bcthw.numel()
        rec_sum = reconstruction_sum(recon_bcthw, x_bcthw, cfg.recon_loss)
        vae_total = rec_sum + cfg.kl_weight * out["kl"].sum()
        if not gan:
            return {"vae": Loss(vae_total, count)}
        g_loss = generator_adversarial_loss(out["logits_fake"])
        # from this rank's micro-batch alone, as Open-Sora-Plan computes it on each GPU
        d_weight = adaptive_generator_weight(rec_sum / count, g_loss, inner.vae.last_layer_weight(), cfg.disc_weight)
        d_loss = discriminator_loss(out["logits_real"], out["logits_fake_detached"], cfg.disc_loss)
        batch_size = x_bcthw.shape[0]
        return {"vae": Loss(vae_total + d_weight * g_loss * count, count),
                "disc": Loss(d_loss * batch_size, batch_size)}

    def noise_seeds(self, batch: dict, step: int) -> list[int] | None:
        """One seed per clip from (seed, step, the clip's dataset index): the posterior noise a clip
        gets does not depend on how the step's clips are split over micro-batches or processes, so
        two processes train exactly as one does with the same global batch."""
        if "index" not in batch:
            return None
        return [random.Random(f"{self.cfg.seed}:{step}:{i}").getrandbits(63) for i in batch["index"].tolist()]

    def after_optimizer_step(self, model, step: int) -> None:
        if model.ema is not None:
            model.ema.update(model.vae, self.cfg.ema_decay)

    # ---- evaluation ---------------------------------------------------------------------
    def eval_metrics(self, model, batch) -> dict[str, float]:
        x_bcthw = batch["video"].to(model.vae.quant_conv.weight.dtype)
        recon_bcthw, _ = model.vae(x_bcthw, sample=False)
        metrics = {"psnr": psnr(recon_bcthw, x_bcthw).item(), "ssim": ssim(recon_bcthw, x_bcthw).item()}
        if model.ema is not None:
            with model.ema.applied(model.vae):
                recon_bcthw, _ = model.vae(x_bcthw, sample=False)
            metrics.update(ema_psnr=psnr(recon_bcthw, x_bcthw).item(), ema_ssim=ssim(recon_bcthw, x_bcthw).item())
        self._maybe_write(x_bcthw, recon_bcthw)
        return metrics

    def _maybe_write(self, x_bcthw: torch.Tensor, recon_bcthw: torch.Tensor) -> None:
        """The first clips of each evaluation (EMA reconstructions when EMA is on), on the main rank."""
        main = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        if not main or self.cfg.num_recon_clips == 0 or self.written_at == self.trained_to:
            return
        self.written_at = self.trained_to
        n = self.cfg.num_recon_clips
        write_reconstructions(Path(self.cfg.output_dir) / "reconstructions", f"step-{self.trained_to:06d}",
                              x_bcthw[:n], recon_bcthw[:n])

    # ---- export -------------------------------------------------------------------------
    def export(self, model, path: str, state_dict: dict | None = None) -> None:
        """Open-Sora-Plan's VAE folder (config.json + diffusion_pytorch_model.safetensors, its names),
        which its CausalVAEModel.from_pretrained and ember's read; the EMA weights when on."""
        if model.ema is not None:
            vae_state = model.ema.state_for(model.vae)
        elif state_dict is not None:
            vae_state = {k[len("vae."):]: v for k, v in state_dict.items() if k.startswith("vae.")}
        else:
            vae_state = model.vae.state_dict()
        model.vae.save_pretrained(path, state_dict=vae_state)
