"""GaLore (galore-torch) and APOLLO (apollo-torch): AdamW whose state for the target matrices lives in a
low-rank projection of their gradients. Param groups as LLaMA-Factory makes them: the target linear
layers' matrices in one group carrying the projection settings, the other weights in a decayed and a
non-decayed group.

Checkpoints: both packages keep a projector object in each target's state; a checkpoint holds it as a
plain dict of its fields (ember reads optimizer state with weights_only=True, so it must be tensors and
numbers), and resuming rebuilds the object from those fields."""
from __future__ import annotations

import logging
from importlib import import_module

import torch
from torch import nn

from ...config.errors import ConfigError
from ..optim import decay_split

log = logging.getLogger("ember")
MARK = "ember_projector"
# the projector classes a checkpoint may name: nothing else is ever constructed from one
PROJECTORS = {"galore_torch.galore_projector.GaLoreProjector", "apollo_torch.svd_projector.GaLoreProjector",
              "apollo_torch.random_projector.GradientProjector"}


def target_matrices(model: nn.Module, targets: str) -> list[nn.Parameter]:
    """Trainable matrices of the linear layers whose name contains a target (all = every linear layer
    but the output head), as LLaMA-Factory selects them."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if targets == "all":
        wanted = {name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}
    else:
        wanted = {t.strip() for t in targets.split(",") if t.strip()}
    chosen = [m.weight for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and m is not head and any(t in name for t in wanted)
              and m.weight.requires_grad]
    if not chosen:
        raise ConfigError(f"no trainable linear layer matches the target {targets!r}")
    return chosen


def projected_adamw(model: nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.use_galore:
        key, package, target = "use_galore", "galore_torch", cfg.galore_target
        extra = dict(rank=cfg.galore_rank, update_proj_gap=cfg.galore_update_interval, scale=cfg.galore_scale,
                     proj_type=cfg.galore_proj_type)
    else:
        key, package, target = "use_apollo", "apollo_torch", cfg.apollo_target
        extra = dict(rank=cfg.apollo_rank, proj=cfg.apollo_proj, proj_type=cfg.apollo_proj_type,
                     update_proj_gap=cfg.apollo_update_interval, scale=cfg.apollo_scale,
                     scale_type=cfg.apollo_scale_type)
    try:
        module = import_module(package)
    except ImportError:
        raise ConfigError(f"{key} needs the {package.replace('_', '-')} package: "
                          f"pip install {package.replace('_', '-')}") from None
    if cfg.galore_layerwise if cfg.use_galore else cfg.apollo_layerwise:
        log.warning("%s_layerwise: ember steps one optimizer after the whole backward (the same update, with more "
                    "gradient memory held); it clips gradients at max_grad_norm, which LLaMA-Factory's per-layer mode "
                    "does not do (set max_grad_norm: 0 to match it)", key[4:])
    projected = target_matrices(model, target)
    ids = {id(p) for p in projected}
    groups = decay_split(((n, p) for n, p in model.named_parameters() if id(p) not in ids), cfg.weight_decay)
    groups.append({"params": projected, "weight_decay": cfg.weight_decay, **extra})
    base = module.GaLoreAdamW if cfg.use_galore else module.APOLLOAdamW
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    if cfg.use_apollo:
        kwargs["scale_front"] = cfg.apollo_scale_front
    return type(base.__name__, (CheckpointableProjectors, base), {})(groups, **kwargs)


class CheckpointableProjectors:
    """Mixed in before the package's optimizer: projector objects in and out of state dicts as fields."""

    def state_dict(self):
        saved = super().state_dict()
        saved["state"] = {index: {**entry, "projector": _fields(entry["projector"])} if "projector" in entry else entry
                          for index, entry in saved["state"].items()}
        return saved

    def load_state_dict(self, state_dict):
        # taken out before torch casts the state (it would rewrite the strings among the fields)
        projectors = {index: entry["projector"] for index, entry in state_dict["state"].items() if "projector" in entry}
        state = {index: {k: v for k, v in entry.items() if k != "projector"} for index, entry in state_dict["state"].items()}
        super().load_state_dict({**state_dict, "state": state})
        by_index = {index: p for saved, group in zip(state_dict["param_groups"], self.param_groups)
                    for index, p in zip(saved["params"], group["params"])}
        for index, fields in projectors.items():
            self.state[by_index[index]]["projector"] = _rebuild(fields)


def _fields(projector) -> dict:
    kind = f"{type(projector).__module__}.{type(projector).__qualname__}"
    return {MARK: kind, **vars(projector)}


def _rebuild(fields: dict):
    kind = fields[MARK]
    if kind not in PROJECTORS:
        raise ConfigError(f"the checkpoint's optimizer state names an unknown projector {kind!r}")
    module, name = kind.rsplit(".", 1)
    projector = object.__new__(getattr(import_module(module), name))
    projector.__dict__.update({k: v for k, v in fields.items() if k != MARK})
    return projector
