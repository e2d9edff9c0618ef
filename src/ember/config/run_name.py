"""The automatic run name, built as nanoVLM builds its own: what trains, on how many devices,
with which batch, for how long, at which learning rates, and when."""
from __future__ import annotations

import time
from pathlib import Path


def _short(spec: str | None) -> str:
    return Path(spec.rstrip("/")).name if spec else "none"


def _model_part(cfg) -> str:
    decoder = _short(cfg.model_name_or_path or cfg.model_config_)
    if cfg.task == "vlm":
        vision = _short(cfg.vision_model_name_or_path or cfg.vision_config)
        size = f"_{cfg.max_img_size}" if cfg.max_img_size else ""
        return f"{vision}{size}_mp{cfg.mp_pixel_shuffle_factor}_{decoder}"
    return f"{cfg.task}_{decoder}"


def _lr_part(cfg) -> str:
    if cfg.task == "vlm":
        return f"lr_vision_{cfg.lr_vision_backbone:g}-language_{cfg.lr_language_backbone:g}-mp_{cfg.lr_mp:g}"
    return f"lr_{cfg.learning_rate:g}"


def auto_run_name(cfg, world_size: int, device_type: str | None, dated: bool = True) -> str:
    """e.g. ember_siglip-tiny_mp2_llama-tiny_2xCPU_bs16_600_lr_vision_5e-05-language_5e-05-mp_0.00512_1122-093015"""
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size
    length = str(cfg.max_steps) if cfg.max_steps > 0 else f"{cfg.num_train_epochs:g}ep"
    parts = ["ember", _model_part(cfg), f"{world_size}x{device_type.upper()}" if device_type else f"{world_size}proc", f"bs{batch}", length, _lr_part(cfg)]
    if dated:
        parts.append(time.strftime("%m%d-%H%M%S"))
    return "_".join(parts)
