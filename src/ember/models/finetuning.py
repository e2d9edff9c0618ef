"""Which weights train: full, freeze (some decoder layers), LoRA and QLoRA adapters (peft)."""
from __future__ import annotations

import logging
import re

from torch import nn

from ..config.errors import ConfigError

log = logging.getLogger("ember")
LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")


def _names(value: str | None) -> list[str]:
    return [n.strip() for n in (value or "").split(",") if n.strip()]


def apply_freeze(model: nn.Module, cfg) -> None:
    """Train the last N decoder layers (N > 0) or the first -N (N < 0), optionally only some
    modules inside them (freeze_trainable_modules), plus named modules outside them."""
    n_layers = model.config.num_hidden_layers
    k = cfg.freeze_trainable_layers
    if k == 0 or abs(k) > n_layers:
        raise ConfigError(f"freeze_trainable_layers must be between -{n_layers} and {n_layers}, not 0; got {k}")
    chosen = set(range(n_layers - k, n_layers)) if k > 0 else set(range(-k))
    modules = None if cfg.freeze_trainable_modules == "all" else set(_names(cfg.freeze_trainable_modules))
    extra = set(_names(cfg.freeze_extra_modules))
    inside, outside = set(), set()
    for name, param in model.named_parameters():
        parts = name.split(".")
        match = LAYER.search(f".{name}")
        if match:
            inside.update(parts[parts.index(match.group(1)) + 1:-1])
            train = int(match.group(1)) in chosen and (modules is None or bool(modules & set(parts)))
        else:
            outside.update(parts[:-1])
            train = bool(extra & set(parts))
        param.requires_grad_(train)
    for wanted, found, key in ((modules or set(), inside, "freeze_trainable_modules"),
                               (extra, outside, "freeze_extra_modules")):
        unknown = wanted - found
        if unknown:
            raise ConfigError(f"{key}: no module named {', '.join(sorted(unknown))} "
                              f"(available: {', '.join(sorted(found))})")


def linear_names(model: nn.Module) -> set[str]:
    return {name.split(".")[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def load_adapter(model: nn.Module, path: str, is_trainable: bool = False) -> nn.Module:
    """A PEFT adapter folder on the model; a .bin adapter is read with weights_only=True, and a
    file that holds more than tensors is refused with one line, not a traceback."""
    import pickle

    from peft import PeftModel

    from ..engine.checkpoint.weights import unpickling_refusal
    try:
        return PeftModel.from_pretrained(model, path, is_trainable=is_trainable)
    except pickle.UnpicklingError as err:
        raise ConfigError(f"adapter_name_or_path: refused to load the adapter in {path}: "
                          f"{unpickling_refusal(err)}") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"adapter_name_or_path: cannot load an adapter from {path}: "
                          f"{(str(err).strip().splitlines() or [type(err).__name__])[0]}") from None


def apply_lora(model: nn.Module, cfg) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    if cfg.adapter_name_or_path:
        log.info("continuing the adapter in %s", cfg.adapter_name_or_path)
        return load_adapter(model, cfg.adapter_name_or_path, is_trainable=True)
    targets = "all-linear" if cfg.lora_target == "all" else _names(cfg.lora_target)
    if targets != "all-linear":
        # k-bit layers are not nn.Linear subclasses in every version: compare against all leaf names
        available = {name.split(".")[-1] for name, _ in model.named_modules()}
        unknown = sorted(set(targets) - available)
        if unknown:
            raise ConfigError(f"lora_target: no module named {', '.join(unknown)} "
                              f"(linear layers: {', '.join(sorted(linear_names(model)))}; or use all)")
    # a reward model (sequence classification): peft then trains and saves its new score head too
    task_type = "SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"
    config = LoraConfig(task_type=task_type, r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
                        lora_dropout=cfg.lora_dropout, target_modules=targets, use_dora=cfg.use_dora,
                        use_rslora=cfg.use_rslora, modules_to_save=_names(cfg.additional_target) or None)
    return get_peft_model(model, config)


def apply_finetuning(model: nn.Module, cfg) -> nn.Module:
    if cfg.finetuning_type == "freeze":
        apply_freeze(model, cfg)
    elif cfg.finetuning_type in ("lora", "qlora"):
        model = apply_lora(model, cfg)
    log.info("trainable params: %s", parameter_summary(model))
    return model


def parameter_summary(model: nn.Module) -> str:
    trainable, total = count_parameters(model)
    return f"{trainable:,} / {total:,} ({100 * trainable / max(total, 1):.2f}%)"


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting packed 4-bit weights at their real size."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total
