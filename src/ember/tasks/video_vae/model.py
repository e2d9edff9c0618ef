"""Open-Sora-Plan's CausalVAE (CausalVAEModel, opensora/models/causalvideovae, commit f7fa604): the
same modules, parameter names and computation, so its checkpoints (and mindone's) load unchanged
and give the same outputs, and ember's exports load in its code.

T = 1 + 4k frames become 1 + k latent frames of H/8 × W/8 at the 488 configuration; the first
frame is kept on its own through every temporal step, so an image is a one-frame video. Sizes
come from a config (vae_config.py): a preset (causal_vae-tiny, causal_vae-488) or a config.json.

Causality: every convolution and resampling step sees only the current and earlier frames, but
GroupNorm in a 3D block takes its statistics over the whole clip, exactly as in the reference; a
config with norm_type "layernorm" is causal throughout.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from . import blocks, resample
from .blocks import AttnBlock3D, AttnBlock3DFix, ResnetBlock2D, ResnetBlock3D, normalize, swish
from .vae_config import CausalVAEConfig

__all__ = ["CausalVAE", "CausalVAEConfig", "DiagonalGaussian", "clip_noise", "repeated_blocks", "WEIGHTS_NAME"]

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # the file diffusers' save_pretrained writes


def _module(name: str):
    return getattr(blocks, name, None) or getattr(resample, name)


def _conv3x3(name: str, in_channels: int, out_channels: int) -> nn.Module:
    return _module(name)(in_channels, out_channels, kernel_size=3, padding=1)


class DiagonalGaussian:
    """The posterior q(z|x): a mean and a log-variance (clamped to [-30, 20]) per latent element."""

    def __init__(self, moments_b2zthw: torch.Tensor):
        self.mean, logvar = moments_b2zthw.float().chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        """mean + std · noise, with standard normal noise drawn here unless given."""
        noise = torch.randn_like(self.mean) if noise is None else noise.to(self.mean)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over every latent element of each sample: shape (batch,)."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(1)


def clip_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise of `shape` for each clip, clip i's from a generator seeded by seeds[i]:
    a clip's noise then depends on its seed alone, not on the batch it shares."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds])


class Level(nn.Module):
    """One resolution of the encoder or decoder: `block` (residual blocks), `attn` (after each block
    when the level's resolution is in attn_resolutions), then `downsample`/`upsample` and
    `time_downsample`/`time_upsample` where the config names one."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        for name in ("downsample", "upsample", "time_downsample", "time_upsample"):  # spatial, then temporal
            if hasattr(self, name):
                h = getattr(self, name)(h)
        return h


def _mid(cfg: CausalVAEConfig, resnet: str, attention: str, width: int, attn_kwargs: dict) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = _module(resnet)(in_channels=width, out_channels=width, dropout=cfg.dropout, norm_type=cfg.norm_type)
    mid.attn_1 = _module(attention)(width, **attn_kwargs)
    mid.block_2 = _module(resnet)(in_channels=width, out_channels=width, dropout=cfg.dropout, norm_type=cfg.norm_type)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: CausalVAEConfig):
        super().__init__()
        widths = [cfg.hidden_size * m for m in cfg.hidden_size_mult]
        self.conv_in = _conv3x3(cfg.encoder_conv_in, 3, cfg.hidden_size)
        self.down = nn.ModuleList()
        width, res = cfg.hidden_size, cfg.resolution
        for i, out in enumerate(widths):
            level = Level()
            for _ in range(cfg.num_res_blocks):
                level.block.append(_module(cfg.encoder_resnet_blocks[i])(
                    in_channels=width, out_channels=out, dropout=cfg.dropout, norm_type=cfg.norm_type))
                width = out
                if res in cfg.attn_resolutions:
                    level.attn.append(_module(cfg.encoder_attention)(width))
            if cfg.encoder_spatial_downsample[i]:
                level.downsample = _module(cfg.encoder_spatial_downsample[i])(width, width)
                res //= 2
            if cfg.encoder_temporal_downsample[i]:
                level.time_downsample = _module(cfg.encoder_temporal_downsample[i])(width, width)
            self.down.append(level)
        # the reference builds the encoder's attention without norm_type (always GroupNorm)
        self.mid = _mid(cfg, cfg.encoder_mid_resnet, cfg.encoder_attention, width, {})
        self.norm_out = normalize(width, cfg.norm_type)
        self.conv_out = _conv3x3(cfg.encoder_conv_out, width, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_bcthw)
        for level in self.down:
            h = level(h)
        return self.conv_out(swish(self.norm_out(_run_mid(self.mid, h))))


class Decoder(nn.Module):
    def __init__(self, cfg: CausalVAEConfig):
        super().__init__()
        widths = [cfg.hidden_size * m for m in cfg.hidden_size_mult]
        width, res = widths[-1], cfg.resolution // 2 ** (len(widths) - 1)
        self.conv_in = _conv3x3(cfg.decoder_conv_in, cfg.z_channels, width)
        self.mid = _mid(cfg, cfg.decoder_mid_resnet, cfg.decoder_attention, width, {"norm_type": cfg.norm_type})
        levels = []
        for i in reversed(range(len(widths))):
            level = Level()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(_module(cfg.decoder_resnet_blocks[i])(
                    in_channels=width, out_channels=widths[i], dropout=cfg.dropout, norm_type=cfg.norm_type))
                width = widths[i]
                if res in cfg.attn_resolutions:
                    level.attn.append(_module(cfg.decoder_attention)(width, norm_type=cfg.norm_type))
            if cfg.decoder_spatial_upsample[i]:
                level.upsample = _module(cfg.decoder_spatial_upsample[i])(width, width)
                res *= 2
            if cfg.decoder_temporal_upsample[i]:
                level.time_upsample = _module(cfg.decoder_temporal_upsample[i])(width, width)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # up[i] is level i: the deepest runs first
        self.norm_out = normalize(width, cfg.norm_type)
        self.conv_out = _conv3x3(cfg.decoder_conv_out, width, 3)

    def forward(self, z_bzthw: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z_bzthw))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


def _as_config(config) -> CausalVAEConfig:
    if isinstance(config, dict):
        return CausalVAEConfig.from_dict(config)
    return config if isinstance(config, CausalVAEConfig) else CausalVAEConfig.from_spec(str(config))


def repeated_blocks(vae: "CausalVAE") -> list[nn.Module]:
    """The residual and attention blocks of the encoder and decoder, in forward order: where a
    VAE's activations are (full-resolution feature maps), and what gradient_checkpointing recomputes."""
    kinds = (ResnetBlock2D, ResnetBlock3D, AttnBlock3D, AttnBlock3DFix)
    found = [m for part in (vae.encoder, vae.decoder) for m in part.modules() if isinstance(m, kinds)]
    return found


class CausalVAE(nn.Module):
    def __init__(self, cfg: CausalVAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if cfg.use_quant_layer:
            quant = _module(cfg.q_conv)
            self.quant_conv = quant(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
            self.post_quant_conv = quant(cfg.embed_dim, cfg.z_channels, 1)

    # ---- the reference's surface ---------------------------------------------------------
    def check_frames(self, num_frames: int) -> None:
        step = self.config.temporal_factor
        if (num_frames - 1) % step:
            raise ValueError(f"the causal VAE takes 1 + {step}k frames (1, {1 + step}, {1 + 2 * step}, ...), got {num_frames}")

    def encode(self, x_bcthw: torch.Tensor) -> DiagonalGaussian:
        self.check_frames(x_bcthw.shape[2])
        h = self.encoder(x_bcthw)
        return DiagonalGaussian(self.quant_conv(h) if self.config.use_quant_layer else h)

    def decode(self, z_bzthw: torch.Tensor) -> torch.Tensor:
        z_bzthw = z_bzthw.to(self.last_layer_weight().dtype)
        return self.decoder(self.post_quant_conv(z_bzthw) if self.config.use_quant_layer else z_bzthw)

    def forward(self, x_bcthw: torch.Tensor, sample: bool = True,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x_bcthw)
        z = posterior.sample(noise) if sample else posterior.mode()
        return self.decode(z), posterior

    def last_layer_weight(self) -> torch.Tensor:
        """The decoder's final conv weight (the reference's get_last_layer): where the adaptive GAN
        weight compares the gradient norms of the reconstruction and adversarial terms."""
        conv_out = self.decoder.conv_out
        return conv_out.conv.weight if hasattr(conv_out, "conv") else conv_out.weight

    # ---- files ----------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, state_dict: dict | None = None) -> None:
        """The reference's folder: config.json + diffusion_pytorch_model.safetensors, its names."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config.to_json_dict(), indent=2) + "\n")
        tensors = state_dict if state_dict is not None else self.state_dict()
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path / WEIGHTS_NAME),
                  metadata={"format": "pt"})

    @classmethod
    def from_config(cls, config: "str | Path | dict | CausalVAEConfig") -> "CausalVAE":
        """A randomly initialised VAE from a config.json path (or folder, or preset name) or a dict."""
        return cls(_as_config(config))

    @classmethod
    def from_pretrained(cls, source: str | Path, config=None) -> "CausalVAE":
        """A VAE with weights from any form checkpoint_forms.py reads (a reference folder, a training
        checkpoint, a bare state dict, a MindSpore .ckpt, ember's export or checkpoint). A file
        alone takes its config from `config`, a config.json beside it, or else the 488 preset."""
        from .checkpoint_forms import config_for, read_vae_weights, strict_load
        config = _as_config(config if config is not None else config_for(source))
        weights = read_vae_weights(source).vae
        with torch.device("meta"):  # names and shapes first: a misfit stops before any allocation
            strict_load(cls(config), weights, str(source), check_only=True)
        model = cls(config)
        strict_load(model, weights, str(source))
        return model
