"""The causal 3D VAE: causality, latent shapes, images as one frame, save/load, losses and metrics."""
from __future__ import annotations

import pytest
import torch

from ember.tasks.video_vae.discriminator import PatchDiscriminator3D
from ember.tasks.video_vae.losses import adaptive_generator_weight, discriminator_loss, psnr, ssim
from ember.tasks.video_vae.model import CausalVAE, CausalVAEConfig, DiagonalGaussian

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_vae() -> CausalVAE:
    torch.manual_seed(0)
    return CausalVAE(CausalVAEConfig.from_spec("causal_vae-tiny")).eval()


def test_changing_a_frame_never_changes_earlier_latents(tiny_vae):
    torch.manual_seed(1)
    x = torch.randn(1, 3, 9, 32, 32)
    with torch.no_grad():
        base = tiny_vae.encode(x).mode()
        for t in range(9):
            changed = x.clone()
            changed[:, :, t] = torch.randn(1, 3, 32, 32)
            latents = tiny_vae.encode(changed).mode()
            first_affected = 0 if t == 0 else 1 + (t - 1) // 4  # latent 0 = frame 0, latent j = frames 4j-3..4j
            assert torch.equal(latents[:, :, :first_affected], base[:, :, :first_affected]), f"frame {t} leaked back"
            assert not torch.allclose(latents[:, :, first_affected], base[:, :, first_affected])


@pytest.mark.parametrize("frames", [9, 17])
def test_latent_shape_at_256px(tiny_vae, frames):
    with torch.no_grad():
        posterior = tiny_vae.encode(torch.zeros(1, 3, frames, 256, 256))
    z_channels = tiny_vae.config.z_channels
    assert posterior.mean.shape == (1, z_channels, 1 + (frames - 1) // 4, 256 // 8, 256 // 8)


def test_image_is_a_one_frame_video_and_decodes_back(tiny_vae):
    with torch.no_grad():
        recon, posterior = tiny_vae(torch.zeros(2, 3, 1, 32, 32))
    assert posterior.mean.shape[2] == 1 and recon.shape == (2, 3, 1, 32, 32)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        tiny_vae.encode(torch.zeros(1, 3, 8, 32, 32))


def test_seed_preset_has_the_488_compression():
    cfg = CausalVAEConfig.from_spec("causal_vae-488")
    assert (cfg.temporal_factor, cfg.spatial_factor, cfg.z_channels) == (4, 8, 4)
    assert cfg.latent_frames(17) == 5


def test_save_and_load_one_folder(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path / "vae")
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["config.json", "model.safetensors"]
    loaded = CausalVAE.from_pretrained(tmp_path / "vae").eval()
    x = torch.randn(1, 3, 5, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, sample=False)[0], tiny_vae(x, sample=False)[0])


def test_posterior_sampling_and_kl():
    moments = torch.zeros(2, 8, 3, 4, 4)
    posterior = DiagonalGaussian(moments)
    assert torch.allclose(posterior.kl(), torch.zeros(2))
    assert posterior.sample().std() > 0.5 and torch.equal(posterior.mode(), torch.zeros(2, 4, 3, 4, 4))


def test_losses_and_metrics():
    x = torch.rand(1, 3, 3, 16, 16) * 2 - 1
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-5) and psnr(x, x).item() > 90
    assert psnr(x, x + 0.2).item() < psnr(x, x + 0.02).item()
    real, fake = torch.full((4,), 2.0), torch.full((4,), -2.0)
    assert discriminator_loss(real, fake, "hinge").item() == 0.0
    assert discriminator_loss(real, fake, "vanilla").item() > 0.0
    disc = PatchDiscriminator3D(base_channels=8)
    assert disc(torch.zeros(1, 3, 1, 32, 32)).shape[:3] == (1, 1, 1)


def test_adaptive_weight_is_the_gradient_norm_ratio():
    last = torch.nn.Parameter(torch.ones(3))
    nll, g = (last * 2).sum(), (last * 0.5).sum()
    weight = adaptive_generator_weight(nll, g, last, disc_weight=0.5)
    assert weight.item() == pytest.approx(0.5 * 4.0, rel=1e-3)
