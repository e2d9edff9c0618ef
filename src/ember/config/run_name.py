"""The automatic run name, built as nanoVLM builds its own: what trains, on how many devices,
with which batch, for how long, at which learning rates, and when."""
from __future__ import annotations

import time

from .schema_base import Group


def auto_run_name(cfg, world_size: int, device_type: str | None, dated: bool = True) -> str:
    """e.g. ember_siglip-tiny_mp2_llama-tiny_2xCPU_bs16_600_lr_vision_5e-05-language_5e-05-mp_0.00512_1122-093015"""
    from .schema import FAMILY_GROUPS  # the family of the run names its model and learning rates
    model, learning_rates = FAMILY_GROUPS.get(cfg.task, Group).run_name_parts(cfg)
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size
    length = str(cfg.max_steps) if cfg.max_steps > 0 else f"{cfg.num_train_epochs:g}ep"
    parts = ["ember", model, f"{world_size}x{device_type.upper()}" if device_type else f"{world_size}proc", f"bs{batch}", length, learning_rates]
    if dated:
        parts.append(time.strftime("%m%d-%H%M%S"))
    return "_".join(parts)
