"""A causal 3D-convolution video VAE in the style of Open-Sora-Plan's CausalVAE.

T frames (T = 1 + 4k by default) become 1 + (T-1)/4 latent frames of H/8 × W/8: the first frame
is encoded on its own (so an image is a one-frame video), later frames four at a time. Sizes
come from a config dict: a preset (`causal_vae-tiny`, `causal_vae-488`) or a JSON file.

A clip's colours have a path from pixels to latent and back that no GroupNorm and no random
projection sits on, so training starts from a colour map that is roughly the identity instead of
a product of random matrices ~100x too weak: the stem also copies each colour into a share of the
features, every resampling step and width change has a parameter-free shortcut (causal_vae_blocks),
the latent mean gets a channel average of the features and gives back channel copies, the 1×1
projections around the latent start as identities, and a linear readout beside the decoder's
normalised head averages the copies back into colours. Without that path flat clips came back
grey and the demo's backgrounds lost their hue.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ...config.errors import ConfigError
from .blocks import (
    CausalConv3d,
    FrameAttention,
    ResBlock3D,
    SpatialDownsample,
    SpatialUpsample,
    TimeDownsample,
    TimeUpsample,
    channel_map,
    channel_shortcut_,
    norm,
)


@dataclass
class CausalVAEConfig:
    in_channels: int = 3
    base_channels: int = 128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])  # one level each; len-1 spatial ×2 downs
    temporal_downsample: list[bool] = field(default_factory=lambda: [False, True, True])  # per down step
    num_res_blocks: int = 2
    z_channels: int = 4
    mid_attention: bool = True

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    def latent_frames(self, num_frames: int) -> int:
        return 1 + (num_frames - 1) // self.temporal_factor

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(z_channels, frames, height, width) of one clip's latent (stride-2 steps round up)."""
        f = self.spatial_factor
        return self.z_channels, self.latent_frames(num_frames), -(-height // f), -(-width // f)

    @classmethod
    def from_spec(cls, spec: str) -> "CausalVAEConfig":
        """A preset name (with or without the causal_vae- prefix), a JSON file, or a model folder."""
        presets = resources.files("ember.presets")
        for name in (spec, f"causal_vae-{spec}"):
            if presets.joinpath(f"{name}.json").is_file():
                return cls.from_dict(json.loads(presets.joinpath(f"{name}.json").read_text()))
        path = Path(spec)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"model_config '{spec}' is neither a causal_vae preset (causal_vae-tiny, "
                              f"causal_vae-488) nor a config.json file")
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, raw: dict) -> "CausalVAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known - {"model_type"})
        if unknown:
            raise ConfigError(f"causal VAE config has unknown keys {unknown}; known: {sorted(known)}")
        cfg = cls(**{k: v for k, v in raw.items() if k in known})
        if len(cfg.temporal_downsample) != len(cfg.channel_mult) - 1:
            raise ConfigError("causal VAE config: temporal_downsample needs one entry per down step "
                              f"({len(cfg.channel_mult) - 1}), got {len(cfg.temporal_downsample)}")
        deepest = cfg.base_channels * cfg.channel_mult[-1]
        if deepest % cfg.z_channels:
            raise ConfigError(f"causal VAE config: z_channels ({cfg.z_channels}) must divide the deepest width "
                              f"base_channels × channel_mult[-1] ({deepest}): the latent's shortcut averages "
                              "that many channels in equal groups")
        return cfg


class DiagonalGaussian:
    """The posterior q(z|x): a mean and a log-variance per latent element."""

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


class Encoder(nn.Module):
    def __init__(self, cfg: CausalVAEConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        self.conv_in = CausalConv3d(cfg.in_channels, widths[0])
        with torch.no_grad():  # its centre tap on the current frame also copies each colour to a share of the features
            self.conv_in.conv.weight[:, :, -1, 1, 1] += channel_map(cfg.in_channels, widths[0])
        self.levels = nn.ModuleList()
        channels = widths[0]
        for level, width in enumerate(widths):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock3D(channels, width))
                channels = width
            if level < len(widths) - 1:
                blocks.append(SpatialDownsample(channels))
                if cfg.temporal_downsample[level]:
                    blocks.append(TimeDownsample(channels))
            self.levels.append(nn.Sequential(*blocks))
        self.mid = nn.Sequential(ResBlock3D(channels, channels),
                                 FrameAttention(channels) if cfg.mid_attention else nn.Identity(),
                                 ResBlock3D(channels, channels))
        self.norm_out = norm(channels)
        self.conv_out = CausalConv3d(channels, 2 * cfg.z_channels)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_bcthw)
        for level in self.levels:
            h = level(h)
        h = self.mid(h)
        mean, logvar = self.conv_out(torch.nn.functional.silu(self.norm_out(h))).chunk(2, dim=1)
        # the mean's shortcut around the output norm: the features averaged in z_channels groups,
        # so the latent carries a clip's colours as they are, not only as normalised contrasts
        shortcut = h.unflatten(1, (mean.shape[1], -1)).mean(2)
        return torch.cat([mean + shortcut, logvar], dim=1)


class Decoder(nn.Module):
    def __init__(self, cfg: CausalVAEConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        channels = widths[-1]
        self.conv_in = CausalConv3d(cfg.z_channels, channels)
        self.mid = nn.Sequential(ResBlock3D(channels, channels),
                                 FrameAttention(channels) if cfg.mid_attention else nn.Identity(),
                                 ResBlock3D(channels, channels))
        self.levels = nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock3D(channels, widths[level]))
                channels = widths[level]
            if level > 0:
                blocks.append(SpatialUpsample(channels))
                if cfg.temporal_downsample[level - 1]:
                    blocks.append(TimeUpsample(channels))
            self.levels.append(nn.Sequential(*blocks))
        self.norm_out = norm(channels)
        self.conv_out = CausalConv3d(channels, cfg.in_channels)
        # a linear readout of the features as they are, beside the normalised head: without it every
        # path to the pixels passes a GroupNorm, the output cannot follow the features' magnitude
        # and a clip's absolute colour is lost (a flat clip comes back grey). It starts as the
        # channel average that undoes the encoder's colour copies.
        self.linear_out = channel_shortcut_(nn.Conv3d(channels, cfg.in_channels, 1))

    def forward(self, z_bzthw: torch.Tensor) -> torch.Tensor:
        # the latent's shortcut in: each latent channel copied to an equal share of the features
        copies = self.conv_in.conv.out_channels // z_bzthw.shape[1]
        h = self.mid(self.conv_in(z_bzthw) + z_bzthw.repeat_interleave(copies, dim=1))
        for level in self.levels:
            h = level(h)
        return self.conv_out(torch.nn.functional.silu(self.norm_out(h))) + self.linear_out(h)


def repeated_blocks(vae: "CausalVAE") -> list[nn.Module]:
    """The residual and attention blocks of the encoder and decoder, in forward order: where a
    VAE's activations are (full-resolution feature maps), and what gradient_checkpointing recomputes."""
    return [m for part in (vae.encoder, vae.decoder) for m in part.modules() if isinstance(m, (ResBlock3D, FrameAttention))]


class CausalVAE(nn.Module):
    def __init__(self, cfg: CausalVAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv3d(2 * cfg.z_channels, 2 * cfg.z_channels, 1)
        self.post_quant_conv = nn.Conv3d(cfg.z_channels, cfg.z_channels, 1)
        with torch.no_grad():
            # the 1×1 projections around the latent start as identities, so they pass the shortcuts'
            # colours on instead of mixing them (and the mean into the log-variance) at random
            for conv in (self.quant_conv, self.post_quant_conv):
                nn.init.dirac_(conv.weight)
                conv.bias.zero_()
            # a narrow posterior (std ≈ 0.05): with a small kl_weight, unit-variance noise would
            # drown the latents and reconstruction would learn very slowly at first
            self.quant_conv.bias[cfg.z_channels:].fill_(-6.0)

    def check_frames(self, num_frames: int) -> None:
        step = self.config.temporal_factor
        if (num_frames - 1) % step:
            raise ValueError(f"the causal VAE takes 1 + {step}k frames (1, {1 + step}, {1 + 2 * step}, ...), got {num_frames}")

    def encode(self, x_bcthw: torch.Tensor) -> DiagonalGaussian:
        self.check_frames(x_bcthw.shape[2])
        return DiagonalGaussian(self.quant_conv(self.encoder(x_bcthw)))

    def decode(self, z_bzthw: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_bzthw.to(self.post_quant_conv.weight.dtype)))

    def forward(self, x_bcthw: torch.Tensor, sample: bool = True,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x_bcthw)
        z = posterior.sample(noise) if sample else posterior.mode()
        return self.decode(z), posterior

    def last_layer_weight(self) -> torch.Tensor:
        """The decoder's output weight: where the adaptive GAN weight compares gradient norms."""
        return self.decoder.conv_out.conv.weight

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"model_type": "causal_vae", **asdict(self.config)}, indent=1))
        tensors = state_dict if state_dict is not None else self.state_dict()
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "CausalVAE":
        path = Path(path)
        model = cls(CausalVAEConfig.from_spec(str(path / "config.json")))
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model
