"""The loss of Open-Sora-Plan's LPIPSWithDiscriminator3D, normalised as it normalises it, and the
quality metrics of its evaluation scripts.

Generator (VAE) loss of a batch of B clips of T frames, frames folded into the batch:
  rec  = |x - x̂| (or (x - x̂)²) per value, + perceptual_weight · LPIPS of the value's frame
  nll  = rec / exp(logvar) + logvar            (logvar: one learnable scalar, logvar_init)
  loss = Σ nll / (B·T) + kl_weight · Σ KL / B + d_weight · disc_factor · g_loss
where Σ runs over every value (every latent value for KL), g_loss = -mean(D(x̂)), and d_weight is the
ratio of the gradient norms of Σ nll / (B·T) and g_loss at the decoder's last layer × disc_weight.
So reconstruction weighs per frame summed over its C·H·W values, and the KL per clip.
Discriminator loss: disc_factor · hinge (or vanilla) over the mean logits of real and x̂ clips.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def frames(x_bcthw: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B·T, C, H, W), frames of one clip next to each other."""
    b, c, t, h, w = x_bcthw.shape
    return x_bcthw.transpose(1, 2).reshape(b * t, c, h, w)


def reconstruction_nll(x_bcthw: torch.Tensor, recon_bcthw: torch.Tensor, kind: str, logvar: torch.Tensor,
                       perceptual=None, perceptual_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(rec_loss, nll_loss), each summed over every value and divided by the number of frames."""
    x, recon = frames(x_bcthw.float()), frames(recon_bcthw.float())
    rec = (x - recon).abs() if kind == "l1" else (x - recon).pow(2)
    if perceptual is not None and perceptual_weight > 0:
        # one distance per frame, added to each of its values (as the reference broadcasts it)
        rec = rec + perceptual_weight * perceptual(x, recon).float()
    logvar = logvar.float()
    nll = rec / torch.exp(logvar) + logvar
    n_frames = x.shape[0]
    return rec.sum() / n_frames, nll.sum() / n_frames


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q || N(0, I)) summed over every latent value of the batch, divided by the clips."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum() / mean.shape[0]


def generator_adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator wants its reconstructions scored as real (same term for hinge and vanilla)."""
    return -logits_fake.float().mean()


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str) -> torch.Tensor:
    logits_real, logits_fake = logits_real.float(), logits_fake.float()
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def adaptive_generator_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                              disc_weight: float) -> torch.Tensor:
    """Balance the GAN term against reconstruction: the ratio of their gradient norms at the decoder's
    last layer (taming-transformers' calculate_adaptive_weight), clamped to [0, 1e4], detached."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(nll_grad.float()) / (torch.norm(g_grad.float()) + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * disc_weight


# ---- metrics, as Open-Sora-Plan's eval scripts (cal_psnr.py, cal_ssim.py) compute them -----------

def _unit_range(x_bcthw: torch.Tensor) -> torch.Tensor:
    """[-1, 1] clips to [0, 1] frames (the range the eval scripts read videos in)."""
    return frames(((x_bcthw.float() + 1) / 2).clamp(0, 1))


def psnr_per_frame(recon_bcthw: torch.Tensor, real_bcthw: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of each frame in [0, 1]: 20·log10(1/√MSE) over its C·H·W values, 100 where MSE < 1e-10."""
    mse = (_unit_range(recon_bcthw) - _unit_range(real_bcthw)).pow(2).flatten(1).mean(1)
    return torch.where(mse < 1e-10, torch.full_like(mse, 100.0), 20 * torch.log10(1 / mse.clamp(min=1e-10).sqrt()))


def psnr(recon_bcthw: torch.Tensor, real_bcthw: torch.Tensor) -> torch.Tensor:
    """Mean over frames of the per-frame PSNR."""
    return psnr_per_frame(recon_bcthw, real_bcthw).mean()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-coords.pow(2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_per_frame(recon_bcthw: torch.Tensor, real_bcthw: torch.Tensor) -> torch.Tensor:
    """SSIM of each frame (Wang et al. 2004 as cal_ssim.py: 11×11 Gaussian window, σ = 1.5, only
    positions where the window fits, each channel alone, then the channels' mean), in float64 on
    [0, 1] frames. Frames under 11 pixels use a window of their size."""
    x, y = _unit_range(recon_bcthw).double(), _unit_range(real_bcthw).double()
    n, c, h, w = x.shape
    size = min(11, h, w)
    window = _gaussian_window(size).to(x.device).expand(c, 1, size, size)
    blur = lambda img: F.conv2d(img, window, groups=c)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x.pow(2), blur(y * y) - mu_y.pow(2)
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(2).mean(2).mean(1)


def ssim(recon_bcthw: torch.Tensor, real_bcthw: torch.Tensor) -> torch.Tensor:
    """Mean over frames of the per-frame SSIM."""
    return ssim_per_frame(recon_bcthw, real_bcthw).mean()


def lpips_per_frame(metric, recon_bcthw: torch.Tensor, real_bcthw: torch.Tensor) -> torch.Tensor:
    """LPIPS of each frame in [-1, 1] (cal_lpips.py: AlexNet, spatial map averaged)."""
    x, y = frames(real_bcthw.float().clamp(-1, 1)), frames(recon_bcthw.float().clamp(-1, 1))
    return metric(x, y).flatten(1).mean(1)
