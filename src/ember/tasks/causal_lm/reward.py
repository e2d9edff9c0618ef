"""Stage rm: a reward model, the decoder with a scalar head, trained on answer pairs.

The model is transformers' *ForSequenceClassification with num_labels=1 built on the decoder
(its `score` head new, the LM head dropped), so the exported folder loads with
AutoModelForSequenceClassification and scores a text exactly as training did: the head's
output at the last token that is not padding. With LoRA the head trains fully beside the
adapters (peft's SEQ_CLS task saves it with the adapter). LLaMA-Factory's rm stage uses TRL's
value head at the same position; ember's head is the one transformers loads.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from ...config.errors import ConfigError
from ...engine.task import Loss
from ...models.hf import read_model_config, refuse_custom_code, require_local_folder
from ...models.quantized import disable_cpu_repacking, quantization_config
from .pref_losses import pair_metrics, pairwise_reward_losses


def load_reward_model(cfg, tokenizer) -> nn.Module:
    quantized = cfg.finetuning_type == "qlora"
    if quantized and not cfg.model_name_or_path:
        raise ConfigError("finetuning_type qlora quantizes pretrained weights: set model_name_or_path")
    if cfg.model_name_or_path:
        require_local_folder(cfg.model_name_or_path, "model_name_or_path")
        refuse_custom_code(cfg.model_name_or_path, "model_name_or_path", cfg.trust_remote_code)
        # QLoRA: the decoder in k-bit; transformers keeps the new `score` head (the last module) unquantized
        extra = {"quantization_config": quantization_config(cfg), "device_map": {"": "cpu"}} if quantized else {}
        model = AutoModelForSequenceClassification.from_pretrained(
            cfg.model_name_or_path, num_labels=1, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code,
            **extra)
        if quantized:  # as load_quantized_causal_lm: the portable 4-bit layout, fp32 norms, input grads
            from peft import prepare_model_for_kbit_training
            disable_cpu_repacking(model)
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        data = read_model_config(cfg.model_config_)
        data.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id)
        model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(**data, num_labels=1),
                                                                dtype=torch.float32)
    # the head reads the last non-padding token: transformers finds it through pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


class RewardObjective:
    """Bradley-Terry loss on the scores of the chosen and rejected answers of each pair."""

    def __init__(self, cfg):
        self.cfg = cfg

    def before_finetuning(self, model: nn.Module) -> None:
        pass

    def after_finetuning(self, model: nn.Module) -> nn.Module:
        if self.cfg.finetuning_type == "freeze":  # a new head must train whatever layers do
            model.score.requires_grad_(True)
        return model

    def step(self, model: nn.Module, batch: dict) -> Loss:
        scores = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                       use_cache=False).logits.squeeze(-1).float()
        pairs = scores.size(0) // 2
        losses, chosen, rejected = pairwise_reward_losses(scores[:pairs], scores[pairs:])
        metrics = pair_metrics(chosen, rejected, chosen, rejected)
        del metrics["logps/chosen"], metrics["logps/rejected"]  # a reward model has no log-probs
        return Loss(losses.sum(), pairs, metrics)
