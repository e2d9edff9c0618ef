"""use_muon: torch's own Muon (momentum SGD whose update is orthogonalised by Newton-Schulz) on the hidden
matrices, AdamW on everything else (embeddings, output head, norms, biases), split by name as in
LLaMA-Factory. Its learning rate is scaled per matrix to AdamW's update size (0.2·sqrt(max(rows, cols)),
torch's "match_rms_adamw", which is what LLaMA-Factory's own Muon does), so one learning_rate serves both."""
from __future__ import annotations

import torch
from torch import nn

from ...config.errors import ConfigError


class MuonWithAdamW:
    """Two torch optimizers stepped as one; param_groups are theirs (the LR schedule sets both)."""

    def __init__(self, model: nn.Module, cfg):
        if not hasattr(torch.optim, "Muon"):
            raise ConfigError(f"use_muon needs torch.optim.Muon (torch 2.9 or later); this torch is {torch.__version__}")
        matrices, rest = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                hidden = p.ndim == 2 and "embed" not in name and "lm_head" not in name
                (matrices if hidden else rest).append(p)
        self.muon = torch.optim.Muon(matrices, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                     adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(rest, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                       eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
        self.param_groups = self.muon.param_groups + self.adamw.param_groups
        self.state = {}  # per-parameter state lives in the two optimizers

    def step(self, closure=None):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True):
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
