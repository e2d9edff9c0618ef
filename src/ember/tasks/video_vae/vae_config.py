"""The configuration of Open-Sora-Plan's CausalVAEModel, as its config.json spells it.

Keys and defaults are CausalVAEModel.__init__'s (commit f7fa604); a config.json written by its
save_pretrained (`_class_name`, `_diffusers_version`, every argument) reads as it is, and so does
a training recipe such as mindone's release.json, whose loss and optimizer keys do not describe
the network and are ignored, as diffusers' from_config ignores them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

from ...config.errors import ConfigError
from ...config.files import read_json_object

#: keys a reference config.json may hold that do not shape the network
IGNORED_KEYS = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "model_type",
                "loss_type", "loss_params", "lr", "in_channels", "out_channels"}
#: the module names a config may give each slot (blocks.py / resample.py)
SLOTS = {
    "encoder_conv_in": {"Conv2d", "CausalConv3d"},
    "encoder_conv_out": {"CausalConv3d"},
    "decoder_conv_in": {"CausalConv3d", "Conv2d"},
    "decoder_conv_out": {"CausalConv3d", "Conv2d"},
    "q_conv": {"CausalConv3d"},
    "encoder_attention": {"AttnBlock3D", "AttnBlock3DFix"},
    "decoder_attention": {"AttnBlock3D", "AttnBlock3DFix"},
    "encoder_mid_resnet": {"ResnetBlock3D"},
    "decoder_mid_resnet": {"ResnetBlock3D"},
    "encoder_resnet_blocks": {"ResnetBlock2D", "ResnetBlock3D"},
    "decoder_resnet_blocks": {"ResnetBlock2D", "ResnetBlock3D"},
    "encoder_spatial_downsample": {"", "Downsample", "SpatialDownsample2x"},
    "encoder_temporal_downsample": {"", "TimeDownsample2x", "TimeDownsampleRes2x"},
    "decoder_spatial_upsample": {"", "Upsample", "SpatialUpsample2x"},
    "decoder_temporal_upsample": {"", "TimeUpsample2x", "TimeUpsampleRes2x"},
}


def _four(*names: str):
    return field(default_factory=lambda: list(names))


@dataclass
class CausalVAEConfig:
    hidden_size: int = 128
    z_channels: int = 4
    hidden_size_mult: list[int] = _four(1, 2, 4, 4)
    attn_resolutions: list[int] = field(default_factory=list)
    dropout: float = 0.0
    resolution: int = 256
    double_z: bool = True
    embed_dim: int = 4
    num_res_blocks: int = 2
    q_conv: str = "CausalConv3d"
    encoder_conv_in: str = "CausalConv3d"
    encoder_conv_out: str = "CausalConv3d"
    encoder_attention: str = "AttnBlock3D"
    encoder_resnet_blocks: list[str] = _four("ResnetBlock3D", "ResnetBlock3D", "ResnetBlock3D", "ResnetBlock3D")
    encoder_spatial_downsample: list[str] = _four("SpatialDownsample2x", "SpatialDownsample2x", "SpatialDownsample2x", "")
    encoder_temporal_downsample: list[str] = _four("", "TimeDownsample2x", "TimeDownsample2x", "")
    encoder_mid_resnet: str = "ResnetBlock3D"
    decoder_conv_in: str = "CausalConv3d"
    decoder_conv_out: str = "CausalConv3d"
    decoder_attention: str = "AttnBlock3D"
    decoder_resnet_blocks: list[str] = _four("ResnetBlock3D", "ResnetBlock3D", "ResnetBlock3D", "ResnetBlock3D")
    decoder_spatial_upsample: list[str] = _four("", "SpatialUpsample2x", "SpatialUpsample2x", "SpatialUpsample2x")
    decoder_temporal_upsample: list[str] = _four("", "", "TimeUpsample2x", "TimeUpsample2x")
    decoder_mid_resnet: str = "ResnetBlock3D"
    use_quant_layer: bool = True
    norm_type: str = "groupnorm"

    #: the reference's networks take and give RGB
    in_channels = 3

    @property
    def spatial_factor(self) -> int:
        return 2 ** sum(1 for s in self.encoder_spatial_downsample if s)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(1 for s in self.encoder_temporal_downsample if s)

    def latent_frames(self, num_frames: int) -> int:
        return 1 + (num_frames - 1) // self.temporal_factor

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(embed_dim, frames, height, width) of one clip's latent: each stride-2 step floors."""
        for step in self.encoder_spatial_downsample:
            if step:
                height, width = height // 2, width // 2
        return self.embed_dim, self.latent_frames(num_frames), height, width

    def to_json_dict(self) -> dict:
        """What the reference's save_pretrained writes: its class name, then every argument, sorted."""
        # the version is diffusers' (the reference's requirement); its loader only warns on another
        return {"_class_name": "CausalVAEModel", "_diffusers_version": "0.30.0", **dict(sorted(asdict(self).items()))}

    # ---- reading ------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: str) -> "CausalVAEConfig":
        """A preset name (with or without the causal_vae- prefix), a config.json, or a folder holding one."""
        presets = resources.files("ember.presets")
        for name in (spec, f"causal_vae-{spec}"):
            if presets.joinpath(f"{name}.json").is_file():
                return cls.from_dict(json.loads(presets.joinpath(f"{name}.json").read_text()), f"preset {name}")
        path = Path(spec)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"model_config '{spec}' is neither a causal_vae preset (causal_vae-tiny, "
                              f"causal_vae-488) nor an Open-Sora-Plan config.json (or a folder holding one)")
        return cls.from_dict(read_json_object(path, "model_config"), str(path))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "causal VAE config") -> "CausalVAEConfig":
        if "base_channels" in raw or "channel_mult" in raw:
            raise ConfigError(f"{where} describes ember's earlier video VAE (base_channels, channel_mult), which "
                              "Open-Sora-Plan's CausalVAE replaced; its weights do not load into this network")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known - IGNORED_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown} for Open-Sora-Plan's CausalVAEModel")
        for key in ("in_channels", "out_channels"):
            if raw.get(key, 3) != 3:
                raise ConfigError(f"{where}: {key} is {raw[key]}, but CausalVAEModel takes and gives 3 (RGB) channels")
        cfg = cls(**{k: v for k, v in raw.items() if k in known})
        cfg.check(where)
        return cfg

    def check(self, where: str) -> None:
        levels = len(self.hidden_size_mult)
        for key, allowed in SLOTS.items():
            value = getattr(self, key)
            names = value if isinstance(value, list) else [value]
            if isinstance(value, list) and len(value) != levels:
                raise ConfigError(f"{where}: {key} needs one entry per level of hidden_size_mult ({levels}), "
                                  f"got {len(value)}")
            bad = [n for n in names if n not in allowed]
            if bad:
                raise ConfigError(f"{where}: {key} {bad[0]!r} is not a module ember builds; "
                                  f"one of {sorted(allowed)}")
        widths = [self.hidden_size * m for m in self.hidden_size_mult]
        if self.norm_type == "groupnorm" and any(w % 32 for w in widths):
            raise ConfigError(f"{where}: every width hidden_size × hidden_size_mult ({widths}) must be a multiple "
                              "of 32, the reference's GroupNorm groups")
        if self.norm_type not in ("groupnorm", "layernorm"):
            raise ConfigError(f"{where}: norm_type {self.norm_type!r} is not groupnorm or layernorm")
