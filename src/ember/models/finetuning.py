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
    # PiSSA (LLaMA-Factory's pissa_init): A and B from the principal singular vectors of each weight,
    # which keeps only the residual; pissa_iter -1 is the exact SVD, else that many fast-SVD iterations
    init = True if not cfg.pissa_init else "pissa" if cfg.pissa_iter == -1 else f"pissa_niter_{cfg.pissa_iter}"
    config = LoraConfig(task_type=_task_type(model), r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
                        lora_dropout=cfg.lora_dropout, target_modules=_targets(model, cfg.lora_target, "lora_target"),
                        use_dora=cfg.use_dora, use_rslora=cfg.use_rslora, init_lora_weights=init,
                        modules_to_save=_names(cfg.additional_target) or None)
    model = get_peft_model(model, config)
    if cfg.pissa_convert:
        model.pissa_initial = _save_initial_adapter(model)
    elif cfg.pissa_init:
        log.warning("pissa_init: the adapter saved in output_dir goes with the PiSSA residual of the base, not the "
                    "base itself (as in LLaMA-Factory); pissa_convert: true also writes a plain LoRA adapter for the "
                    "original base in output_dir/pissa_converted")
    return model


def _save_initial_adapter(model) -> "tempfile.TemporaryDirectory":
    """The adapter as PiSSA initialised it, before any step: peft's conversion to a plain LoRA
    adapter needs it at the end (a temporary folder, gone with the model)."""
    import tempfile
    folder = tempfile.TemporaryDirectory(prefix="ember-pissa-init-")
    config = model.peft_config["default"]
    init, config.init_lora_weights = config.init_lora_weights, True  # saved as plain LoRA weights
    try:
        model.save_pretrained(folder.name)
    finally:
        config.init_lora_weights = init
    return folder


def save_pissa_converted(model, out: str) -> None:
    """pissa_convert: the trained PiSSA adapter rewritten as a plain LoRA adapter (rank 2r) for the
    original base weights, in <out>, as LLaMA-Factory writes output_dir/pissa_converted."""
    model.save_pretrained(out, path_initial_model_for_weight_conversion=model.pissa_initial.name)
    log.info("PiSSA adapter converted to a plain LoRA adapter for the original base in %s", out)


def apply_oft(model: nn.Module, cfg) -> nn.Module:
    """Orthogonal fine-tuning (finetuning_type oft): each target weight is multiplied by a learned
    block-diagonal orthogonal matrix, with LLaMA-Factory's keys mapped as it maps them onto peft."""
    from peft import OFTConfig, get_peft_model

    if cfg.adapter_name_or_path:
        log.info("continuing the adapter in %s", cfg.adapter_name_or_path)
        return load_adapter(model, cfg.adapter_name_or_path, is_trainable=True)
    config = OFTConfig(task_type=_task_type(model), r=cfg.oft_rank, oft_block_size=cfg.oft_block_size,
                       target_modules=_targets(model, cfg.oft_target, "oft_target"), module_dropout=cfg.module_dropout,
                       modules_to_save=_names(cfg.additional_target) or None)
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. a block size that divides no layer's width
        raise ConfigError(f"oft_rank/oft_block_size: {str(err).strip().splitlines()[0]}") from None


def _task_type(model: nn.Module) -> str:
    # a reward model (sequence classification): peft then trains and saves its new score head too
    return "SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"


def _targets(model: nn.Module, value: str, key: str):
    targets = "all-linear" if value == "all" else _names(value)
    if targets != "all-linear":
        # k-bit layers are not nn.Linear subclasses in every version: compare against all leaf names
        available = {name.split(".")[-1] for name, _ in model.named_modules()}
        unknown = sorted(set(targets) - available)
        if unknown:
            raise ConfigError(f"{key}: no module named {', '.join(unknown)} "
                              f"(linear layers: {', '.join(sorted(linear_names(model)))}; or use all)")
    return targets


def apply_finetuning(model: nn.Module, cfg) -> nn.Module:
    if cfg.finetuning_type == "freeze":
        apply_freeze(model, cfg)
    elif cfg.finetuning_type in ("lora", "qlora"):
        model = apply_lora(model, cfg)
    elif cfg.finetuning_type == "oft":
        model = apply_oft(model, cfg)
    if getattr(cfg, "neftune_noise_alpha", None):
        from transformers.integrations.neftune import activate_neftune
        # NEFTune: uniform noise of scale alpha/sqrt(L·d) on the input embeddings, in training mode only
        # (transformers' hook, as HF's Trainer and so LLaMA-Factory apply it)
        activate_neftune(model, cfg.neftune_noise_alpha)
    log.info("trainable params: %s", parameter_summary(model))
    return model


class _GroupsOnly:
    """Stands in for an optimizer class so peft's LoRA+ hands over its parameter groups; the engine
    builds the real optimizer (AdamW, ...) from them."""
    def __init__(self, groups, **_):
        self.param_groups = groups


def finetuning_param_groups(model: nn.Module, cfg) -> dict[str, list[dict]]:
    """LoRA+ (loraplus_lr_ratio): peft's grouping, B matrices (and trainable 1-D weights) at
    learning_rate × ratio, adapters on embeddings at loraplus_lr_embedding; else the default groups."""
    from ..engine.optim import default_param_groups
    if not getattr(cfg, "loraplus_lr_ratio", None):
        return default_param_groups(model, cfg)
    from peft.optimizers import create_loraplus_optimizer
    made = create_loraplus_optimizer(model, _GroupsOnly, lr=cfg.learning_rate, loraplus_lr_ratio=cfg.loraplus_lr_ratio,
                                     loraplus_lr_embedding=cfg.loraplus_lr_embedding,
                                     loraplus_weight_decay=cfg.weight_decay)
    return {"model": [group for group in made.param_groups if group["params"]]}


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
