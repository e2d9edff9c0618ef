"""Losses and quality metrics of the video VAE: reconstruction, KL, GAN terms with the adaptive
generator weight of taming-transformers, PSNR and SSIM."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_sum(recon_bcthw: torch.Tensor, real_bcthw: torch.Tensor, kind: str) -> torch.Tensor:
    """L1 or L2 summed over every pixel value (the engine divides by the count)."""
    diff = recon_bcthw.float() - real_bcthw.float()
    return diff.abs().sum() if kind == "l1" else diff.pow(2).sum()


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
    last layer (taming-transformers' calculate_adaptive_weight), detached and clamped."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * disc_weight


def psnr(recon_bcthw: torch.Tensor, real_bcthw: torch.Tensor) -> torch.Tensor:
    """Mean PSNR (dB) per clip, on images mapped from [-1, 1] to [0, 1]."""
    recon = ((recon_bcthw.float() + 1) / 2).clamp(0, 1)
    real = ((real_bcthw.float() + 1) / 2).clamp(0, 1)
    mse = (recon - real).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return (10 * torch.log10(1.0 / mse)).mean()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-coords.pow(2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(recon_bcthw: torch.Tensor, real_bcthw: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over frames and channels (Wang et al. 2004: 11×11 Gaussian window, σ = 1.5),
    on images in [0, 1]; the window shrinks for frames smaller than 11 pixels."""
    b, c, t, h, w = real_bcthw.shape
    to_frames = lambda x: ((x.float() + 1) / 2).clamp(0, 1).transpose(1, 2).reshape(b * t, c, h, w)  # noqa: E731
    x, y = to_frames(recon_bcthw), to_frames(real_bcthw)
    size = min(11, h, w)
    window = _gaussian_window(size).to(x.device).expand(c, 1, size, size)
    blur = lambda img: F.conv2d(img, window, groups=c)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x.pow(2), blur(y * y) - mu_y.pow(2)
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))
    return ssim_map.mean()
