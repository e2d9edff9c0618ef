"""The video VAE's loss against Open-Sora-Plan's LPIPSWithDiscriminator3D (fixture values computed by
its own code), the adaptive GAN weight against plain backward passes, the discriminator's layout
against the reference's, LPIPS against the lpips package's own forward, and the eval metrics
against the conventions of the reference's eval scripts."""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ember.tasks.video_vae import losses
from ember.tasks.video_vae.discriminator import NLayerDiscriminator3D

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
FIXTURES = Path(__file__).parents[1] / "fixtures" / "causalvae"


def test_generator_loss_terms_equal_the_reference_on_the_fixture():
    io = load_file(str(FIXTURES / "tiny_io.safetensors"))
    ref = json.loads((FIXTURES / "tiny_loss.json").read_text())
    assert ref["constructor"]["perceptual_weight"] == 0 and ref["constructor"]["loss_type"] == "l1"
    rec, nll = losses.reconstruction_nll(io["x"], io["recon"], "l1", torch.tensor(ref["constructor"]["logvar_init"]))
    kl = losses.kl_loss(io["mean"], io["logvar"])
    total = nll + ref["constructor"]["kl_weight"] * kl  # before disc_start: no GAN term
    expected = ref["values"]
    for name, value in (("rec_loss", rec), ("nll_loss", nll), ("kl_loss", kl), ("total", total)):
        assert value.item() == pytest.approx(expected[name], rel=1e-6), name


def test_nll_with_a_logvar_and_l2_and_a_perceptual_term_follow_the_per_value_formula():
    g = torch.Generator().manual_seed(0)
    x, r = torch.rand(2, 3, 5, 8, 8, generator=g) * 2 - 1, torch.rand(2, 3, 5, 8, 8, generator=g) * 2 - 1
    logvar = torch.tensor(0.3)
    per_frame = lambda a, b: (a - b).abs().mean((1, 2, 3), keepdim=True)  # noqa: E731  a stand-in distance
    rec, nll = losses.reconstruction_nll(x, r, "l2", logvar, per_frame, perceptual_weight=0.7)
    xn, rn = x.double().numpy(), r.double().numpy()
    # independent: every value of frame (b, t) carries its squared error + 0.7 × the frame's distance
    dist = np.abs(xn - rn).mean(axis=(1, 3, 4), keepdims=True)  # (B, 1, T, 1, 1)
    values = (xn - rn) ** 2 + 0.7 * dist
    frames = 2 * 5
    assert rec.item() == pytest.approx(values.sum() / frames, rel=1e-5)
    assert nll.item() == pytest.approx((values / np.exp(0.3) + 0.3).sum() / frames, rel=1e-5)


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    torch.manual_seed(0)
    body, last = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1)
    critic = nn.Conv2d(3, 1, 3)
    x = torch.rand(2, 3, 8, 8)

    def terms():
        recon = last(torch.relu(body(x)))
        return (recon - x).abs().sum() / 2, -critic(recon).mean()

    nll, g = terms()
    got = losses.adaptive_generator_weight(nll, g, last.weight, disc_weight=0.5)
    grads = []
    for pick in (0, 1):  # independent: two ordinary backward passes, gradients read from .grad
        last.weight.grad = None
        terms()[pick].backward()
        grads.append(last.weight.grad.double().norm().item())
    assert not got.requires_grad
    assert got.item() == pytest.approx(0.5 * grads[0] / (grads[1] + 1e-4), rel=1e-5)
    # clamped at 1e4 before disc_weight: a GAN term with no gradient at all
    flat = -(critic.weight.sum() * 0 + last.weight.sum() * 0)
    flat_nll, _ = terms()
    assert losses.adaptive_generator_weight(flat_nll, flat, last.weight, 2.0).item() == pytest.approx(2e4)


def test_discriminator_losses_are_hinge_and_vanilla():
    real, fake = torch.tensor([[2.0, 0.5]]), torch.tensor([[-2.0, 0.25]])
    assert losses.discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.5 * (0.25 + 0.625))
    sp = lambda v: np.log1p(np.exp(v))  # noqa: E731
    vanilla = 0.5 * (np.mean([sp(-2.0), sp(-0.5)]) + np.mean([sp(-2.0), sp(0.25)]))
    assert losses.discriminator_loss(real, fake, "vanilla").item() == pytest.approx(vanilla, rel=1e-6)


def test_discriminator_has_the_reference_names_shapes_and_init():
    torch.manual_seed(0)
    disc = NLayerDiscriminator3D()  # the reference's LPIPSWithDiscriminator3D: 3 channels, ndf 64, 4 layers
    shapes = {k: tuple(v.shape) for k, v in disc.state_dict().items()}
    bn = lambda i, c: {f"main.{i}.weight": (c,), f"main.{i}.bias": (c,), f"main.{i}.running_mean": (c,),  # noqa: E731
                       f"main.{i}.running_var": (c,), f"main.{i}.num_batches_tracked": ()}
    expected = {"main.0.weight": (64, 3, 3, 3, 3), "main.0.bias": (64,),
                "main.2.weight": (128, 64, 3, 3, 3), **bn(3, 128),
                "main.5.weight": (256, 128, 3, 3, 3), **bn(6, 256),
                "main.8.weight": (512, 256, 3, 3, 3), **bn(9, 512),
                "main.11.weight": (512, 512, 3, 3, 3), **bn(12, 512),
                "main.14.weight": (1, 512, 3, 3, 3), "main.14.bias": (1,)}
    assert shapes == expected
    assert disc.main[8].weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert disc.main[12].weight.mean().item() == pytest.approx(1.0, abs=0.01) and disc.main[12].bias.abs().sum() == 0
    # strides: time halves twice, space four times; one logit per patch
    small = NLayerDiscriminator3D(ndf=4)
    assert small(torch.rand(2, 3, 9, 32, 32)).shape == (2, 1, 3, 2, 2)


def test_discriminator_norm_uses_batch_statistics_and_keeps_its_buffers():
    norm = NLayerDiscriminator3D(ndf=4).main[3]
    reference = nn.BatchNorm3d(8).train()
    reference.load_state_dict(norm.state_dict())
    x = torch.randn(2, 8, 3, 4, 4)
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    assert torch.allclose(norm(x), reference(x), atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in norm.state_dict().items())


# ---- LPIPS ----------------------------------------------------------------------------------

def _torchvision_layout_vgg16() -> nn.Sequential:
    """torchvision's vgg16().features layout (configuration D), written out independently."""
    layers, cin = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers)


@pytest.fixture
def lpips_package(monkeypatch):
    """The lpips package's own LPIPS, importable here: its trunk comes from torchvision (whose wheels
    for torch 2.13 are CUDA builds that do not import next to the CPU torch), so a module of that
    name hands it a VGG16 `features` of torchvision's layout; everything else is the package's."""
    if importlib.util.find_spec("lpips") is None:
        pytest.skip("lpips not installed (pip install --no-deps lpips)")
    trunk = _torchvision_layout_vgg16()
    models = types.SimpleNamespace(vgg16=lambda pretrained=False, **_: types.SimpleNamespace(features=trunk))
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(models=models))
    for name in ("scipy", "scipy.ndimage"):  # lpips.trainer's import; no scipy here
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(zoom=None, ndimage=None))
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    import lpips
    return lpips, trunk


def test_lpips_equals_the_lpips_packages_forward(lpips_package):
    from ember.tasks.video_vae.lpips_loss import build_lpips
    lpips, trunk = lpips_package
    torch.manual_seed(1)
    for p in trunk.parameters():
        p.data.normal_(0, 0.05)
    theirs = lpips.LPIPS(net="vgg", verbose=False).eval()
    ours = build_lpips("vgg", random_trunk_seed=0)
    ours.features.load_state_dict({k: v for k, v in trunk.state_dict().items() if int(k.split(".")[0]) < 30})
    a, b = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected, got = theirs(a, b), ours(a, b)
    assert got.shape == expected.shape == (3, 1, 1, 1)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert ours(a, a).abs().max() < 1e-6


def test_missing_vgg_weights_name_the_fix(tmp_path, monkeypatch):
    from ember.config import build_config
    from ember.config.errors import ConfigError
    from ember.tasks.video_vae.task import VideoVAETask
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub cache
    base = {"task": "video_vae", "video_path": "v", "model_config": "causal_vae-tiny"}
    assert build_config(base).perceptual_weight == 1.0  # the reference's default
    with pytest.raises(ConfigError, match="perceptual_weights.*perceptual_weight: 0"):
        VideoVAETask(build_config(base))
    with pytest.raises(ConfigError, match="perceptual_weights: no file at"):
        VideoVAETask(build_config({**base, "perceptual_weights": str(tmp_path / "none.pth")}))
    with pytest.raises(ConfigError, match="eval_lpips_weights.*eval_lpips: false"):
        VideoVAETask(build_config({**base, "perceptual_weight": 0, "eval_lpips": True}))
    # torchvision's file in the cache is found and loaded (here a random one of the right layout)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in _torchvision_layout_vgg16().state_dict().items()},
               tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth")
    assert VideoVAETask(build_config(base)).perceptual is not None


# ---- evaluation metrics ---------------------------------------------------------------------

def test_psnr_and_ssim_per_frame_as_the_reference_eval_scripts():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(2, 3, 3, 16, 16, generator=g) * 2 - 1
    recon = (real + 0.1 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    recon[1, :, 2] = real[1, :, 2]  # one exact frame: PSNR 100, as cal_psnr.py
    a, b = ((recon + 1) / 2).double().numpy(), ((real + 1) / 2).double().numpy()
    psnrs = []
    for i in range(2):
        for t in range(3):
            mse = np.mean((a[i, :, t] - b[i, :, t]) ** 2)
            psnrs.append(100.0 if mse < 1e-10 else 20 * np.log10(1 / np.sqrt(mse)))
    assert losses.psnr(recon, real).item() == pytest.approx(np.mean(psnrs), rel=1e-5)
    # SSIM: Gaussian 11×11 σ 1.5 on the valid region of each channel (cal_ssim.py), numpy here
    k = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    k /= k.sum()
    win = np.outer(k, k)

    def valid_filter(img):
        out = np.empty((img.shape[0] - 10, img.shape[1] - 10))
        for y in range(out.shape[0]):
            for x in range(out.shape[1]):
                out[y, x] = (img[y:y + 11, x:x + 11] * win).sum()
        return out

    def ssim_channel(p, q):
        mu1, mu2 = valid_filter(p), valid_filter(q)
        s1, s2 = valid_filter(p * p) - mu1 ** 2, valid_filter(q * q) - mu2 ** 2
        s12 = valid_filter(p * q) - mu1 * mu2
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        return (((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))).mean()

    frames = [np.mean([ssim_channel(a[i, c, t], b[i, c, t]) for c in range(3)]) for i in range(2) for t in range(3)]
    assert losses.ssim(recon, real).item() == pytest.approx(np.mean(frames), rel=1e-6)


def test_the_tasks_loss_on_the_reference_weights_equals_the_reference_total():
    """Through the task (model forward, normalisation handed to the engine as total / count), with the
    fixture's weights in ember's network: the reference's generator loss before disc_start."""
    from ember.config import build_config
    from ember.tasks.video_vae.task import VideoVAETask
    ref = json.loads((FIXTURES / "tiny_loss.json").read_text())
    io = load_file(str(FIXTURES / "tiny_io.safetensors"))
    task = VideoVAETask(build_config({"task": "video_vae", "video_path": "v", "perceptual_weight": 0,
                                      "model_config": str(FIXTURES / "tiny_config.json"),
                                      "kl_weight": ref["constructor"]["kl_weight"]}))
    model = task.build_model()
    model.vae.load_state_dict(load_file(str(FIXTURES / "tiny_model.safetensors")))
    model.eval()
    with torch.no_grad():
        loss = task.evaluation_step(model, {"video": io["x"]})["vae"]  # posterior mean, as the fixture
    assert loss.count == 9  # frames
    assert (loss.total / loss.count).item() == pytest.approx(ref["values"]["total"], rel=1e-5)
    assert (loss.metrics["kl_loss"] / loss.count).item() == pytest.approx(ref["values"]["kl_loss"], rel=1e-5)
