"""use_badam: BAdam (package badam) — AdamW on one block of decoder layers at a time, the others frozen,
switching block every badam_switch_interval steps in badam_switch_mode order; an Adam state for one
block is all the optimizer memory there is. Built as LLaMA-Factory builds it (layer mode)."""
from __future__ import annotations

import torch
from torch import nn

from ...config.errors import ConfigError
from ..optim import decay_split

NEVER = 2 ** 62  # badam_switch_interval -1: keep the first block (badam itself would switch every step)


def block_adam(model: nn.Module, cfg) -> torch.optim.Optimizer:
    try:
        from badam import BlockOptimizer
    except ImportError:
        raise ConfigError("use_badam needs the badam package: pip install badam") from None
    base = torch.optim.AdamW(decay_split(model.named_parameters(), cfg.weight_decay), lr=cfg.learning_rate,
                             betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    interval = cfg.badam_switch_interval
    return BlockOptimizer(base_optimizer=base, named_parameters_list=list(model.named_parameters()),
                          block_prefix_list=None, switch_block_every=NEVER if interval in (None, -1) else interval,
                          start_block=cfg.badam_start_block, switch_mode=cfg.badam_switch_mode or "ascending",
                          verbose=cfg.badam_verbose)
