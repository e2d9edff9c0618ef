"""Causal language modelling: stage pt (pretraining on raw text), full fine-tuning."""
from __future__ import annotations

import datasets
import torch
import torch.nn.functional as F

from ..data.pretrain import IGNORE, build_blocks, collate_blocks
from ..data.readers import read_dataset, text_column
from ..data.registry import resolve_datasets
from ..engine.optim import default_param_groups
from ..engine.task import Loss
from ..models.hf import load_causal_lm, load_tokenizer, new_causal_lm
from ..config.errors import ConfigError


class CausalLMTask:
    def __init__(self, cfg):
        self.cfg = cfg
        source = cfg.tokenizer_name_or_path or cfg.model_name_or_path
        if source is None:
            raise ConfigError("training from model_config needs tokenizer_name_or_path "
                              "(make one with `ember tokenizer`)")
        key = "tokenizer_name_or_path" if cfg.tokenizer_name_or_path else "model_name_or_path"
        self.tokenizer = load_tokenizer(source, key)

    def _texts(self, names: str) -> datasets.Dataset:
        specs = resolve_datasets(names, self.cfg.dataset_dir)
        parts = [text_column(read_dataset(spec, self.cfg.max_samples), spec) for spec in specs]
        return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]

    def build_data(self):
        cfg = self.cfg
        train_texts, val_texts = self._texts(cfg.dataset), None
        if cfg.eval_dataset:
            val_texts = self._texts(cfg.eval_dataset)
        elif cfg.val_size > 0:
            size = int(cfg.val_size) if cfg.val_size >= 1 else cfg.val_size
            if (size if isinstance(size, int) else 1) >= len(train_texts):
                raise ConfigError(f"val_size {cfg.val_size} leaves no training documents (there are {len(train_texts)})")
            split = train_texts.train_test_split(test_size=size, seed=cfg.seed, shuffle=True)
            train_texts, val_texts = split["train"], split["test"]
        train = build_blocks(train_texts, self.tokenizer, cfg, "train")
        val = build_blocks(val_texts, self.tokenizer, cfg, "validation") if val_texts is not None else None
        return train, val, collate_blocks(self.tokenizer.pad_token_id)

    def build_model(self) -> torch.nn.Module:
        if self.cfg.model_name_or_path:
            model = load_causal_lm(self.cfg.model_name_or_path)
            if model.get_input_embeddings().num_embeddings < len(self.tokenizer):
                model.resize_token_embeddings(len(self.tokenizer))
        else:
            model = new_causal_lm(self.cfg.model_config_, self.tokenizer)
        return model

    def param_groups(self, model):
        return default_param_groups(model, self.cfg)

    def training_step(self, model, batch, step: int) -> dict[str, Loss]:
        # use_cache=False: no KV cache is needed in training, and with it Llama honours
        # position_ids for packed documents
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                       use_cache=False).logits
        labels = batch["labels"][:, 1:]
        logits = logits[:, :-1]
        total = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                                ignore_index=IGNORE, reduction="sum")
        return {"model": Loss(total, (labels != IGNORE).sum())}

    def export(self, model, path: str) -> None:
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
