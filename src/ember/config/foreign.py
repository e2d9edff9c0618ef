"""Keys from LLaMA-Factory / HF YAMLs that ember does not implement, recognised rather than rejected.

Keys that change nothing on ember (or on this hardware) are dropped with a one-line notice;
keys that would change the result are refused with a pointer to ember's equivalent.
"""
from __future__ import annotations

import logging
from typing import Any

from .errors import ConfigError

log = logging.getLogger("ember")

# accepted: the reason it changes nothing here
NO_EFFECT = {
    "flash_attn": "ember uses PyTorch's scaled-dot-product attention, which picks flash kernels itself on GPUs",
    "enable_liger_kernel": "fused kernels are not used; results are the same",
    "use_unsloth": "unsloth is not used; results are the same",
    "quantization_method": "ember quantizes with bitsandbytes",
    "export_legacy_format": "exports are always safetensors",
    "export_device": "export runs on the CPU",
    "infer_backend": "ember generate uses transformers",
    "logging_dir": "tensorboard events go to output_dir/tensorboard",
    "save_strategy": "checkpoints follow save_steps",
    "logging_first_step": "the first logged step follows logging_steps",
    "ddp_find_unused_parameters": "ember's DDP settings are chosen per task",
    "include_num_input_tokens_seen": "tokens_seen is always logged",
    "upcast_layernorm": "norms keep the precision of their weights",
    "print_param_status": "the trainable-parameter summary is always printed",
    "dataloader_pin_memory": "pinned memory is used whenever the device is a GPU",
    "mix_strategy": "datasets are concatenated",
    "buffer_size": "streaming is not used",
    "streaming": "datasets are read from local files",
    "tokenized_path": "tokenisation is cached by the datasets library",
}

# refused: what to use instead
INSTEAD = {
    "deepspeed": "ember shards with PyTorch FSDP2: use distributed_strategy: fsdp",
    "fsdp": "use distributed_strategy: fsdp",
    "use_galore": "GaLore is not available; use finetuning_type: lora",
    "use_badam": "BAdam is not available; use finetuning_type: freeze or lora",
    "use_apollo": "APOLLO is not available; use optim: adamw",
    "reward_model": "PPO is not available; stages are pt, sft, rm, dpo, orpo and simpo",
    "use_llama_pro": "LLaMA Pro block expansion is not available; use finetuning_type: freeze",
    "pissa_init": "PiSSA initialisation is not available; use finetuning_type: lora",
    "shift_attn": "shifted sparse attention is not available",
    "rope_scaling": "set rope_scaling in the model's config.json (model_config)",
}


def take_foreign_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """Remove recognised foreign keys from one source: notice for harmless ones, error for the rest."""
    kept = {}
    for key, value in raw.items():
        if key in INSTEAD and value not in (None, False, "", "none"):
            raise ConfigError(f"{key} is not supported by ember: {INSTEAD[key]}")
        if key in NO_EFFECT or key in INSTEAD:
            log.info("note: %s is accepted but has no effect: %s", key, NO_EFFECT.get(key, "it is off"))
            continue
        kept[key] = value
    return kept
