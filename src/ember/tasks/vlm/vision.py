"""The VLM's vision encoder: transformers' SiglipVisionModel, from a local folder or random init from a config."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from ...config.errors import ConfigError
from ...models.hf import preset_names

# A SigLIP vision tower on its own, or the whole image-text SigLIP model whose vision part is taken.
VISION_TYPES = ("siglip_vision_model", "siglip")


def load_vision_encoder(path: str | None, config_spec: str | None) -> SiglipVisionModel:
    """Pretrained weights from a local folder (vision_model_name_or_path), or a new encoder from a
    preset name or config.json (vision_config). The pooling head is dropped: the VLM uses every patch."""
    if (path is None) == (config_spec is None):
        raise ConfigError("task vlm needs exactly one of vision_model_name_or_path (a local SigLIP folder) and "
                          "vision_config (a preset such as siglip-tiny, or a config.json); "
                          f"got {path=}, {config_spec=}")
    if path is not None:
        return _from_folder(path)
    config = vision_config_from_dict(_read_spec(config_spec), f"vision_config {config_spec}")
    return SiglipVisionModel(config).float()


def read_vision_config(path: str | None, config_spec: str | None) -> SiglipVisionConfig:
    """The encoder's config alone (image and patch size), without building or loading weights."""
    if (path is None) == (config_spec is None):
        load_vision_encoder(path, config_spec)  # raises the one error for this case
    if path is not None:
        file = Path(path) / "config.json"
        if not file.is_file():
            raise ConfigError(f"vision_model_name_or_path: no local model folder with a config.json at {path} "
                              "(ember never downloads models)")
        return vision_config_from_dict(_read_json(file, "vision_model_name_or_path"), f"vision_model_name_or_path {path}")
    return vision_config_from_dict(_read_spec(config_spec), f"vision_config {config_spec}")


def _read_json(file: Path, key: str) -> dict:
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{key}: {file} is not valid JSON: {err.msg} at line {err.lineno}") from None


def vision_config_from_dict(data: dict, where: str) -> SiglipVisionConfig:
    """A SiglipVisionConfig from a vision config or a full SiglipConfig dict, without the pooling head."""
    model_type = data.get("model_type", "siglip_vision_model")
    if model_type not in VISION_TYPES:
        raise ConfigError(f"{where} has model_type '{model_type}'; the VLM's encoder is SigLIP "
                          f"({' or '.join(VISION_TYPES)})")
    if model_type == "siglip":
        data = data.get("vision_config") or {}
    data = {k: v for k, v in data.items() if k != "model_type"} | {"vision_use_head": False}
    try:
        return SiglipVisionConfig.from_dict(data)
    except Exception as err:  # huggingface_hub's strict-dataclass errors carry no common base with ValueError
        raise ConfigError(f"{where}: not a valid SigLIP vision config: {str(err).splitlines()[-1].strip()}") from None


def drop_pooling_head(encoder: SiglipVisionModel) -> SiglipVisionModel:
    """The attention-pooling head is unused by a VLM; left in, it would hold parameters without gradients."""
    if getattr(encoder, "use_head", False):
        del encoder.head
        encoder.use_head = encoder.config.vision_use_head = False
    return encoder


def _read_spec(spec: str) -> dict:
    if spec in preset_names():
        return json.loads(resources.files("ember.presets").joinpath(f"{spec}.json").read_text())
    file = Path(spec) / "config.json" if Path(spec).is_dir() else Path(spec)
    if not file.is_file():
        raise ConfigError(f"vision_config '{spec}' is neither a preset ({', '.join(preset_names())}) "
                          "nor a config.json file")
    return _read_json(file, "vision_config")


def _from_folder(path: str) -> SiglipVisionModel:
    folder = Path(path)
    config = read_vision_config(path, None)
    try:
        # a full SigLIP checkpoint stores the tower under vision_model.*, which is SiglipVisionModel's
        # base_model_prefix, so transformers maps it and reports the text tower's weights as unexpected
        return SiglipVisionModel.from_pretrained(folder, config=config, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise ConfigError(f"vision_model_name_or_path: cannot load a SigLIP vision encoder from {path}: "
                          f"{str(err).splitlines()[0]}") from None
