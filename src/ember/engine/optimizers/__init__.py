"""The memory-saving optimizers LLaMA-Factory offers (use_galore, use_apollo, use_badam, use_adam_mini,
use_muon), each from the package made for it, built over the model's trainable weights as
LLaMA-Factory builds them. They replace the param-group optimizer of engine/optim.py for the run."""
from __future__ import annotations

import torch
from torch import nn

from ...config.errors import ConfigError


def method_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer | None:
    """The optimizer a use_* key asks for, or None (then the engine builds `optim` from param groups)."""
    if cfg.use_galore or cfg.use_apollo:
        from .projected import projected_adamw
        return projected_adamw(model, cfg)
    if cfg.use_adam_mini:
        return _adam_mini(model, cfg)
    if cfg.use_muon:
        from .muon import MuonWithAdamW
        return MuonWithAdamW(model, cfg)
    if cfg.use_badam:
        from .block import block_adam
        return block_adam(model, cfg)
    return None


def _adam_mini(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """Adam-mini: one second-moment value per block (attention head, embedding row, output neuron),
    the blocks read from the parameter names and the model's head counts, as LLaMA-Factory passes them."""
    try:
        from adam_mini import Adam_mini
    except ImportError:
        raise ConfigError("use_adam_mini needs the adam-mini package: pip install adam-mini") from None
    config = model.config
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return Adam_mini(named_parameters=named, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                     eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay, dim=config.hidden_size,
                     n_heads=config.num_attention_heads,
                     n_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                     verbose=False)
