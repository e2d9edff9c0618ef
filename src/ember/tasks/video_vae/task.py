"""Causal video VAE (seed 000: Open-Sora-Plan's CausalVAE trained as mindone's train_causalvae.py
trains it), with the loss of Open-Sora-Plan's LPIPSWithDiscriminator3D (losses.py). The VAE and the
discriminator are two optimizers ("vae" first, so its loss is logged as `loss`; the discriminator's
as `loss_disc`).

Steps, as the reference alternates them: before disc_start (or without use_discriminator) every
step trains the VAE; from disc_start, odd steps train only the discriminator and even steps only
the VAE, whose loss then carries the adaptively weighted GAN term. The EMA follows VAE steps.

Loss normalisation, as the reference's: the VAE loss of a batch is Σ nll / (B·T) + kl_weight ·
Σ KL / B + GAN term, returned to the engine as that value × B·T over a count of B·T frames, so
accumulation and ranks average it per frame exactly as one large batch would; the
discriminator's loss is a mean per clip, returned over a count of B clips. The loss's terms
(rec_loss, nll_loss, kl_loss, g_loss, d_weight) are logged beside it.
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
from .discriminator import NLayerDiscriminator3D
from .ema import EMAWeights
from .losses import (
    adaptive_generator_weight,
    discriminator_loss,
    generator_adversarial_loss,
    kl_loss,
    lpips_per_frame,
    psnr,
    reconstruction_nll,
    ssim,
)
from .model import CausalVAE, CausalVAEConfig, repeated_blocks
from .precision_policy import carry_low_precision
from .recon import write_reconstructions

log = logging.getLogger("ember")


class VideoVAEModel(nn.Module):
    """What the engine trains and checkpoints: the VAE, the loss's log-variance scalar (`logvar`,
    the reference's `loss.logvar`), its discriminator (`discriminator.main.*`, the reference's
    `loss.discriminator.main.*`) and the EMA (buffers).

    Training calls the model itself, once per micro-batch, so that a DDP wrapper's hooks see every
    parameter the step uses; calling `model.vae` or `model.discriminator` directly would bypass
    them and leave gradients unsynchronised across ranks.
    """

    def __init__(self, vae: CausalVAE, discriminator: nn.Module | None, ema: bool, logvar_init: float = 0.0):
        super().__init__()
        self.vae = vae
        # learn_logvar is off in the reference (and mindone never updates it): a fixed parameter
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)), requires_grad=False)
        self.discriminator = discriminator
        self.ema = EMAWeights(vae) if ema else None

    def forward(self, x_bcthw: torch.Tensor, sample: bool = True, part: str = "vae", gan: bool = False,
                run=None, noise_seeds: list[int] | None = None) -> dict:
        """part "vae": the reconstruction and posterior, with `gan` the discriminator's logits of
        it (its gradient reaches the VAE). part "disc": the VAE without gradients, then the
        discriminator's logits of the real and reconstructed clips.

        run(module, method, *args) calls the VAE (compiled under mode 0); noise_seeds seed each
        clip's posterior noise (else it comes from the global generator).
        """
        run = run or _call
        with torch.set_grad_enabled(part == "vae" and torch.is_grad_enabled()):
            posterior = run(self.vae, "encode", x_bcthw)
            z = posterior.mean
            if sample:
                noise = (torch.randn_like(z) if noise_seeds is None
                         else clip_noise(noise_seeds, tuple(z.shape[1:])).to(z.device, z.dtype))
                z = z + torch.exp(0.5 * posterior.logvar) * noise
            recon_bcthw = run(self.vae, "decode", z)
        out = {"recon": recon_bcthw, "mean": posterior.mean, "logvar": posterior.logvar}
        if part == "vae" and gan:
            # the discriminator as a fixed function here: its weights stay out of this graph, so a
            # VAE step leaves them no gradient (and DDP does not wait for one)
            self.discriminator.requires_grad_(False)
            try:
                out["logits_fake"] = self.discriminator(recon_bcthw)
            finally:
                self.discriminator.requires_grad_(True)
        if part == "disc":
            out["logits_real"] = self.discriminator(x_bcthw.detach())
            out["logits_fake"] = self.discriminator(recon_bcthw.detach())
        return out


def _call(module: nn.Module, method: str, *args):
    return getattr(module, method)(*args)


def clip_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise of `shape` for each clip, clip i's from a generator seeded by seeds[i]:
    a clip's noise then depends on its seed alone, not on the batch it shares."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


class VideoVAETask(Task):
    # the EMA buffers (a second copy of the VAE) change only through updates that every rank
    # applies to identical weights: DDP re-sending them from rank 0 at every forward is waste
    ddp_broadcast_buffers = False

    def __init__(self, cfg):
        self.cfg = cfg
        self.gan = cfg.use_discriminator and cfg.disc_weight > 0
        if cfg.use_discriminator and not self.gan:
            log.warning("use_discriminator is set but disc_weight is 0: training without the discriminator")
        # a step trains either the VAE or the discriminator: DDP must look for the parameters a
        # forward leaves out
        self.forward_may_skip_parameters = self.gan
        if cfg.distributed_strategy == "fsdp":
            # the engine keeps the VAE's and the discriminator's gradients apart with
            # backward(inputs=their parameters); under FSDP2 those are sharded parameters the
            # forward never touches (it uses gathered copies), so no gradient reaches them (a
            # two-process run logs grad_norm 0.0). The EMA also mixes whole tensors with shards.
            raise ConfigError("task video_vae does not support distributed_strategy: fsdp; use ddp (the default), "
                              "which replicates the VAE on every process")
        self.perceptual = None
        if cfg.perceptual_weight > 0:  # read now: a missing file stops the run before any work
            from .lpips_loss import build_lpips
            self.perceptual = build_lpips("vgg", cfg.perceptual_weights, "perceptual_weights")
        self.eval_lpips = None
        if cfg.eval_lpips:
            from .lpips_loss import build_lpips
            self.eval_lpips = build_lpips("alex", cfg.eval_lpips_weights, "eval_lpips_weights", spatial=True)
        if cfg.wavelet_loss:
            log.info("wavelet_loss: CausalVAE gives no wavelet coefficients, so the wavelet term is 0 (as in the reference)")
        self.vae_config = CausalVAEConfig.from_spec(cfg.model_config_)
        step = self.vae_config.temporal_factor
        self.num_frames = 1 + (cfg.video_num_frames - 1) // step * step
        if self.num_frames != cfg.video_num_frames:
            log.info("video_num_frames %d is not 1 + %dk: clips use %d frames", cfg.video_num_frames, step,
                     self.num_frames)
        self.forward = CompiledForward(cfg.mode, cfg.jit_level)
        self.trained_to = 0  # the step the weights have reached, names the reconstructions
        self.written_at: int | None = None
        self.vae_stepped = False  # whether the last step trained the VAE (the EMA follows those)

    # ---- data and model -----------------------------------------------------------------
    def build_data(self):
        train, val = build_video_datasets(self.cfg, self.num_frames)
        return train, val, collate_clips

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        discriminator = NLayerDiscriminator3D(3, cfg.disc_channels) if self.gan else None
        model = self.model = VideoVAEModel(CausalVAE(self.vae_config), discriminator, ema=cfg.use_ema,
                                           logvar_init=cfg.logvar_init)
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
    def discriminator_step(self, step: int) -> bool:
        """From disc_start, odd steps train the discriminator alone, as the reference alternates."""
        return self.gan and step >= self.cfg.disc_start and step % 2 == 1

    def training_step(self, model, batch, step: int) -> dict[str, Loss]:
        self.trained_to = step + 1
        seeds = self.noise_seeds(batch, step)
        if self.discriminator_step(step):
            self.vae_stepped = False
            return self._discriminator_loss(model, batch, seeds)
        self.vae_stepped = True
        return self._losses(model, batch, sample=True, gan=self.gan and step >= self.cfg.disc_start, seeds=seeds)

    def evaluation_step(self, model, batch) -> dict[str, Loss]:
        """The posterior mean, no GAN term: the reconstruction + KL loss of the VAE alone."""
        return self._losses(model, batch, sample=False, gan=False, seeds=None)

    def _input(self, batch) -> torch.Tensor:
        return batch["video"].to(self.model.vae.last_layer_weight().dtype)

    def _losses(self, model, batch, sample: bool, gan: bool, seeds: list[int] | None) -> dict[str, Loss]:
        cfg, inner = self.cfg, self.model  # `model` may be the DDP wrapper; `inner` is what it wraps
        x_bcthw = self._input(batch)
        with carry_low_precision(inner.vae, cfg.amp_level):
            out = model(x_bcthw, sample=sample, part="vae", gan=gan, run=self.forward, noise_seeds=seeds)
        perceptual = self._perceptual(x_bcthw.device)
        rec, nll = reconstruction_nll(x_bcthw, out["recon"], cfg.recon_loss, inner.logvar, perceptual,
                                      cfg.perceptual_weight)
        kl = kl_loss(out["mean"], out["logvar"])
        total = nll + cfg.kl_weight * kl
        n_frames = x_bcthw.shape[0] * x_bcthw.shape[2]
        terms = {"rec_loss": rec, "nll_loss": nll, "kl_loss": kl}
        if gan:
            g_loss = generator_adversarial_loss(out["logits_fake"])
            # from this rank's micro-batch alone, as Open-Sora-Plan computes it on each GPU
            d_weight = adaptive_generator_weight(nll, g_loss, inner.vae.last_layer_weight(), cfg.disc_weight)
            total = total + d_weight * g_loss  # disc_factor 1 from disc_start (the reference's default)
            terms.update(g_loss=g_loss, d_weight=d_weight)
        # metrics are summed over the same frames as the loss: per-batch values × frames
        metrics = {name: value.detach() * n_frames for name, value in terms.items()}
        return {"vae": Loss(total * n_frames, n_frames, metrics=metrics)}

    def _discriminator_loss(self, model, batch, seeds: list[int] | None) -> dict[str, Loss]:
        x_bcthw = self._input(batch)
        with carry_low_precision(self.model.vae, self.cfg.amp_level):
            out = model(x_bcthw, sample=True, part="disc", run=self.forward, noise_seeds=seeds)
        d_loss = discriminator_loss(out["logits_real"], out["logits_fake"], self.cfg.disc_loss)
        batch_size = x_bcthw.shape[0]
        return {"disc": Loss(d_loss * batch_size, batch_size)}

    def _perceptual(self, device: torch.device):
        if self.perceptual is not None and self.perceptual.shift.device != device:
            self.perceptual.to(device)
        return self.perceptual

    def noise_seeds(self, batch: dict, step: int) -> list[int] | None:
        """One seed per clip from (seed, step, the clip's dataset index): the posterior noise a clip
        gets does not depend on how the step's clips are split over micro-batches or processes, so
        two processes train exactly as one does with the same global batch."""
        if "index" not in batch:
            return None
        return [random.Random(f"{self.cfg.seed}:{step}:{i}").getrandbits(63) for i in batch["index"].tolist()]

    def after_optimizer_step(self, model, step: int) -> None:
        """The EMA follows VAE steps; before ema_start_step it copies the weights (decay 0)."""
        if model.ema is not None and self.vae_stepped:
            model.ema.update(model.vae, self.cfg.ema_decay if step >= self.cfg.ema_start_step else 0.0)

    # ---- evaluation ---------------------------------------------------------------------
    def eval_metrics(self, model, batch) -> dict[str, float]:
        """PSNR, SSIM (and LPIPS with eval_lpips) per frame, averaged over frames, as the
        reference's eval scripts compute them (losses.py); EMA weights' as ema_* too."""
        x_bcthw = self._input(batch)
        recon_bcthw = model.vae.decode(model.vae.encode(x_bcthw).mean)
        metrics = self._quality(recon_bcthw, x_bcthw, "")
        if model.ema is not None:
            with model.ema.applied(model.vae):
                recon_bcthw = model.vae.decode(model.vae.encode(x_bcthw).mean)
            metrics.update(self._quality(recon_bcthw, x_bcthw, "ema_"))
        self._maybe_write(x_bcthw, recon_bcthw)
        return metrics

    def _quality(self, recon_bcthw: torch.Tensor, x_bcthw: torch.Tensor, prefix: str) -> dict[str, float]:
        out = {f"{prefix}psnr": psnr(recon_bcthw, x_bcthw).item(), f"{prefix}ssim": ssim(recon_bcthw, x_bcthw).item()}
        if self.eval_lpips is not None:
            if self.eval_lpips.shift.device != x_bcthw.device:
                self.eval_lpips.to(x_bcthw.device)
            out[f"{prefix}lpips"] = lpips_per_frame(self.eval_lpips, recon_bcthw, x_bcthw).mean().item()
        return out

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
