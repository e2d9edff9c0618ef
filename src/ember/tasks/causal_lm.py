"""Causal language modelling: stage pt (raw text) and sft (conversations); full, freeze, LoRA, QLoRA."""
from __future__ import annotations

import datasets
import torch
import torch.nn.functional as F

from ..config.errors import ConfigError
from ..data.packing import build_sft_dataset, collate_sft
from ..data.pretrain import IGNORE, build_blocks, collate_blocks
from ..data.readers import read_dataset, text_column
from ..data.registry import resolve_datasets
from ..data.sft import encode_sft
from ..data.templates import ensure_chat_template
from ..engine.optim import default_param_groups
from ..engine.task import Loss
from ..models.finetuning import apply_finetuning
from ..models.hf import load_causal_lm, load_tokenizer, new_causal_lm


class CausalLMTask:
    def __init__(self, cfg):
        self.cfg = cfg
        source = cfg.tokenizer_name_or_path or cfg.model_name_or_path
        if source is None:
            raise ConfigError("training from model_config needs tokenizer_name_or_path "
                              "(make one with `ember tokenizer`)")
        key = "tokenizer_name_or_path" if cfg.tokenizer_name_or_path else "model_name_or_path"
        self.tokenizer = load_tokenizer(source, key)
        if cfg.stage == "sft":
            ensure_chat_template(self.tokenizer, cfg.template)

    # ---- data ---------------------------------------------------------------------------
    def _read(self, names: str) -> list:
        return [(spec, read_dataset(spec, self.cfg.max_samples)) for spec in resolve_datasets(names, self.cfg.dataset_dir)]

    def _prepare(self, parts: list, label: str):
        cfg = self.cfg
        if cfg.stage == "pt":
            texts = [text_column(ds, spec) for spec, ds in parts]
            joined = datasets.concatenate_datasets(texts) if len(texts) > 1 else texts[0]
            return build_blocks(joined, self.tokenizer, cfg, label)
        encoded = [encode_sft(ds, spec, self.tokenizer, cfg) for spec, ds in parts]
        joined = datasets.concatenate_datasets(encoded) if len(encoded) > 1 else encoded[0]
        return build_sft_dataset(joined, cfg.cutoff_len, cfg.packing, label)

    def build_data(self):
        cfg = self.cfg
        train_parts, val_parts = self._read(cfg.dataset), None
        if cfg.eval_dataset:
            val_parts = self._read(cfg.eval_dataset)
        elif cfg.val_size > 0:
            # hold out documents (or samples), not tokens: the split never cuts a document
            size = int(cfg.val_size) if cfg.val_size >= 1 else cfg.val_size
            total = sum(len(ds) for _, ds in train_parts)
            if isinstance(size, int) and size >= total:
                raise ConfigError(f"val_size {cfg.val_size} leaves no training samples (there are {total})")
            splits = [(spec, ds.train_test_split(test_size=size if not isinstance(size, int) else
                                                 max(1, round(size * len(ds) / total)), seed=cfg.seed))
                      for spec, ds in train_parts]
            train_parts = [(spec, s["train"]) for spec, s in splits]
            val_parts = [(spec, s["test"]) for spec, s in splits]
        train = self._prepare(train_parts, "train")
        val = self._prepare(val_parts, "validation") if val_parts else None
        pad = self.tokenizer.pad_token_id
        return train, val, collate_blocks(pad) if cfg.stage == "pt" else collate_sft(pad)

    # ---- model --------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        if cfg.finetuning_type == "qlora":
            from ..models.quantized import load_quantized_causal_lm
            model = load_quantized_causal_lm(cfg)
        elif cfg.model_name_or_path:
            model = load_causal_lm(cfg.model_name_or_path, cfg.trust_remote_code)
        else:
            model = new_causal_lm(cfg.model_config_, self.tokenizer)
        if model.get_input_embeddings().num_embeddings < len(self.tokenizer):
            model.resize_token_embeddings(len(self.tokenizer))
        return apply_finetuning(model, cfg)

    def param_groups(self, model):
        return default_param_groups(model, self.cfg)

    def training_step(self, model, batch, step: int) -> dict[str, Loss]:
        # use_cache=False: no KV cache is needed in training, and only then does the decoder
        # isolate packed samples by their position_ids
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                       position_ids=batch.get("position_ids"), use_cache=False).logits
        labels = batch["labels"][:, 1:]
        logits = logits[:, :-1]
        total = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                                ignore_index=IGNORE, reduction="sum")
        return {"model": Loss(total, (labels != IGNORE).sum())}

    def export(self, model, path: str, state_dict: dict | None = None) -> None:
        """HF model folder for full/freeze; a PEFT adapter (loadable onto the base) for LoRA/QLoRA."""
        model.save_pretrained(path, state_dict=state_dict)
        self.tokenizer.save_pretrained(path)
