"""QLoRA bases: a pretrained causal LM loaded with bitsandbytes 4- or 8-bit weights."""
from __future__ import annotations

import torch

from ..config.errors import ConfigError
from .hf import load_causal_lm


def quantization_config(cfg):
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ConfigError("finetuning_type qlora needs bitsandbytes: pip install bitsandbytes") from None
    if cfg.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if (cfg.bf16 or cfg.pure_bf16) else torch.float16 if cfg.fp16 else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quantization_type,
                              bnb_4bit_use_double_quant=cfg.double_quantization, bnb_4bit_compute_dtype=compute)


def load_quantized_causal_lm(cfg) -> torch.nn.Module:
    from peft import prepare_model_for_kbit_training

    model = load_causal_lm(cfg.model_name_or_path, cfg.trust_remote_code, quantization_config(cfg))
    disable_cpu_repacking(model)
    # fp32 norms and input gradients for the adapters; no gradient checkpointing unless asked
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def disable_cpu_repacking(model: torch.nn.Module) -> None:
    """bitsandbytes repacks 4-bit weights for avx512-bf16 CPUs on the first no-grad eval-mode
    forward. The repacked layout crashes on widths that are not multiples of 32 and, after any
    evaluation pass, silently gives LoRA wrong (often zero) gradients, since the repacked path has no
    autograd. Keeping the portable layout avoids both."""
    import bitsandbytes as bnb
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
