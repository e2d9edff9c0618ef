"""Keys from LLaMA-Factory / HF YAMLs that ember does not implement, recognised rather than rejected.

Keys that change nothing on ember (or on this hardware) are dropped with a one-line notice;
keys that would change the result are refused with a pointer to ember's equivalent.
"""
from __future__ import annotations

import logging
from typing import Any

from .errors import ConfigError
from .foreign_mindone import take_mindone_keys
from .foreign_llamafactory import INSTEAD_LF, NO_EFFECT_LF

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
    "buffer_size": "streaming reads the files in their order, not through a shuffle buffer",
}

# refused: what to use instead
INSTEAD = {
    "deepspeed": "ember shards with PyTorch FSDP2: use distributed_strategy: fsdp",
    "fsdp": "use distributed_strategy: fsdp",
    "reward_model": "PPO is not available; stages are pt, sft, rm, dpo, orpo and simpo",
    "use_llama_pro": "LLaMA Pro block expansion is not available; use finetuning_type: freeze",
    "shift_attn": "shifted sparse attention is not available",
    "rope_scaling": "set rope_scaling in the model's config.json (model_config)",
    # LLaMA-Factory's multimodal models (Qwen-VL, LLaVA, ...): ember's VLM is nanoVLM's architecture
    "image_max_pixels": "LLaMA-Factory's multimodal models are not trained by ember; its VLM is nanoVLM's (task: vlm)",
    "video_max_pixels": "LLaMA-Factory's multimodal models are not trained by ember; its VLM is nanoVLM's (task: vlm)",
    "image_min_pixels": "LLaMA-Factory's multimodal models are not trained by ember; its VLM is nanoVLM's (task: vlm)",
    "video_min_pixels": "LLaMA-Factory's multimodal models are not trained by ember; its VLM is nanoVLM's (task: vlm)",
    "video_fps": "LLaMA-Factory's multimodal models are not trained by ember; its VLM is nanoVLM's (task: vlm)",
    "video_maxlen": "LLaMA-Factory's multimodal models are not trained by ember; its VLM is nanoVLM's (task: vlm)",
    "freeze_vision_tower": "for ember's VLM use task: vlm with lr_vision_backbone: 0 to freeze the vision encoder",
    "freeze_multi_modal_projector": "for ember's VLM use task: vlm with lr_mp: 0 to freeze the projector",
    "freeze_language_model": "for ember's VLM use task: vlm with lr_language_backbone: 0 to freeze the decoder",
    "ray_num_workers": "Ray is not used; start several processes with nproc_per_node (torchrun)",
    "export_quantization_bit": "GPTQ export is not available; ember export writes the merged model in full precision",
    "export_quantization_dataset": "GPTQ export is not available; ember export writes the merged model in full precision",
    "create_new_adapter": "continuing adapter_name_or_path trains that adapter; merge it first (ember export) "
                          "to start a new one on top",
}

# the rest of LLaMA-Factory's own keys, each with its reason
NO_EFFECT.update(NO_EFFECT_LF)
INSTEAD.update(INSTEAD_LF)


def take_foreign_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """Remove recognised foreign keys from one source: notice for harmless ones, error for the rest."""
    raw = take_mindone_keys(raw)  # seed 000's other mindone flags (renamed, or checked by value)
    kept = {}
    for key, value in raw.items():
        if key in INSTEAD and value not in (None, False, "", "none"):
            raise ConfigError(f"{key} is not supported by ember: {INSTEAD[key]}")
        if key in NO_EFFECT or key in INSTEAD:
            log.info("note: %s is accepted but has no effect: %s", key, NO_EFFECT.get(key, "it is off"))
            continue
        kept[key] = value
    return kept


def read_qlora_spelling(merged: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory writes QLoRA as `finetuning_type: lora` plus `quantization_bit: 4|8` (its own
    examples/train_qlora do): read over all sources at once, since the two keys may come from
    different ones (a YAML's lora, a command line's quantization_bit=4)."""
    bits = merged.get("quantization_bit")
    if merged.get("finetuning_type") == "lora" and bits is not None and str(bits).lower() not in ("none", "null", ""):
        return {**merged, "finetuning_type": "qlora"}
    return merged
