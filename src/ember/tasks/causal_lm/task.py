"""Causal language modelling: stage pt (raw text), sft (conversations), rm and dpo/orpo/simpo (answer
pairs: reward.py, preference.py); full, freeze, LoRA, QLoRA."""
from __future__ import annotations

import datasets
import torch

from ...config.errors import ConfigError
from ...data.labels import IGNORE
from ...data.media import refuse_media
from ...data.packing import build_sft_dataset, collate_sft
from ...data.preference import build_pair_dataset, collate_pairs
from ...data.pretrain import build_blocks, collate_blocks
from ...data.readers import read_dataset, text_column
from ...data.registry import resolve_datasets
from ...data.sft import encode_sft
from ...data.streaming import StreamedSamples
from ...data.tokenized_cache import tokenized_sets
from ...data.templates import load_template
from ...engine.task import Loss, Task
from ...models.finetuning import apply_finetuning, finetuning_param_groups
from ...models.hf import load_causal_lm, load_tokenizer, new_causal_lm
from ...models.lm_loss import linear_cross_entropy, logits_cross_entropy, next_token_labels
from .kto import KTOObjective
from .preference import PreferenceObjective
from .reward import RewardObjective, load_reward_model

# model types whose causal-LM head is exactly `lm_head(last_hidden_state)` (no logit scaling
# or soft-capping), so the loss may be taken from the hidden states directly
PLAIN_HEAD_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3"}


class CausalLMTask(Task):
    counts_flops = True

    def __init__(self, cfg):
        self.cfg = cfg
        source = cfg.tokenizer_name_or_path or cfg.model_name_or_path
        if source is None:
            raise ConfigError("training from model_config needs tokenizer_name_or_path "
                              "(make one with `ember tokenizer`)")
        key = "tokenizer_name_or_path" if cfg.tokenizer_name_or_path else "model_name_or_path"
        self.tokenizer = load_tokenizer(source, key, cfg.trust_remote_code)
        # LLaMA-Factory's template: it also changes the tokenizer (eos, stop words, chat_template)
        self.template = load_template(self.tokenizer, cfg)
        # the stages on answer pairs: their loss (and reference model), else None
        self.pairs = (RewardObjective(cfg) if cfg.stage == "rm" else KTOObjective(cfg) if cfg.stage == "kto" else
                      PreferenceObjective(cfg) if cfg.stage in ("dpo", "orpo", "simpo") else None)
        if cfg.precompute_ref_log_probs and not getattr(self.pairs, "uses_reference", False):
            raise ConfigError(f"precompute_ref_log_probs: stage {cfg.stage} "
                              f"{'with pref_loss ' + cfg.pref_loss + ' ' if cfg.stage == 'dpo' else ''}"
                              "has no reference model (it applies to dpo and kto)")
        self._pair_sets = None  # (train, validation), kept for the reference pass of precompute_ref_log_probs

    # ---- data ---------------------------------------------------------------------------
    def read_datasets(self, names: str) -> list:
        """(spec, rows) of each named dataset, as training reads them (ember preview reads them too)."""
        return [(spec, read_dataset(spec, self.cfg.max_samples, self.cfg.seed))
                for spec in resolve_datasets(names, self.cfg.dataset_dir)]

    def _prepare(self, parts: list, label: str):
        cfg = self.cfg
        for spec, ds in parts:  # whole datasets, or streamed chunks of them
            refuse_media(ds, spec)  # never train text-only on a dataset with pictures, silently
        if cfg.stage == "pt":
            texts = [text_column(ds, spec) for spec, ds in parts]
            joined = datasets.concatenate_datasets(texts) if len(texts) > 1 else texts[0]
            return build_blocks(joined, self.tokenizer, cfg, label, cfg.template)
        if self.pairs is not None:
            return build_pair_dataset(parts, self.template, self.tokenizer, cfg, label)
        encoded = [encode_sft(ds, spec, self.template, self.tokenizer, cfg) for spec, ds in parts]
        joined = datasets.concatenate_datasets(encoded) if len(encoded) > 1 else encoded[0]
        return build_sft_dataset(joined, cfg.cutoff_len, cfg.packing, label)

    def build_data(self):
        cfg = self.cfg
        if cfg.streaming:  # read lazily, chunk by chunk; validation (eval_dataset) is read whole
            train = StreamedSamples(resolve_datasets(cfg.dataset, cfg.dataset_dir), self._prepare, cfg.max_samples)
            val = self._prepare(self.read_datasets(cfg.eval_dataset), "validation") if cfg.eval_dataset else None
        else:
            train, val = tokenized_sets(cfg, self._tokenized_sets)  # saved to / reused from tokenized_path
        pad = self.tokenizer.pad_token_id
        if cfg.stage == "pt":
            return train, val, collate_blocks(pad)
        if self.pairs is not None:
            # KTO: each sample, then its KL sample; else each pair's chosen, then its rejected answer
            self._sides = ("", "kl_") if cfg.stage == "kto" else ("chosen_", "rejected_")
            self._pair_sets = (train, val)
            return train, val, collate_pairs(pad, self._sides)
        return train, val, collate_sft(pad, cfg.cutoff_len if cfg.compile else None)

    def _tokenized_sets(self):
        """(train, validation or None): read, split and tokenised."""
        cfg = self.cfg
        train_parts, val_parts = self.read_datasets(cfg.dataset), None
        if cfg.eval_dataset:
            val_parts = self.read_datasets(cfg.eval_dataset)
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
        return train, self._prepare(val_parts, "validation") if val_parts else None

    # ---- model --------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        if cfg.stage == "rm":
            model = load_reward_model(cfg, self.tokenizer)
        elif cfg.finetuning_type == "qlora":
            from ...models.quantized import load_quantized_causal_lm
            model = load_quantized_causal_lm(cfg)
        elif cfg.model_name_or_path:
            model = load_causal_lm(cfg.model_name_or_path, cfg.trust_remote_code)
        else:
            model = new_causal_lm(cfg.model_config_, self.tokenizer)
        if model.get_input_embeddings().num_embeddings < len(self.tokenizer):
            model.resize_token_embeddings(len(self.tokenizer))
        if cfg.stage == "sft" and cfg.packing and _packs_by_segments(model.config):
            # packed rows: attention per sample (the sum of len² over samples), not over whole rows
            from ...models.packed_attention import NAME
            model.set_attn_implementation(NAME)
        if self.pairs is not None and cfg.precompute_ref_log_probs:
            if self._pair_sets is not None:  # one reference pass over the data; no reference is kept
                self.pairs.precompute_reference(model, list(self._pair_sets),
                                                collate_pairs(self.tokenizer.pad_token_id, self._sides), self._sides)
            return self.pairs.after_finetuning(apply_finetuning(model, cfg))
        if self.pairs is not None:
            self.pairs.before_finetuning(model)  # a frozen reference copy, where one is needed
            return self.pairs.after_finetuning(apply_finetuning(model, cfg))
        return apply_finetuning(model, cfg)

    def param_groups(self, model):
        return finetuning_param_groups(model, self.cfg)  # LoRA+ groups, or the default ones

    def training_step(self, model, batch, step: int) -> dict[str, Loss]:
        if self.pairs is not None:
            return {"model": self.pairs.step(model, batch)}
        labels = next_token_labels(batch["labels"])
        # use_cache=False: no KV cache is needed in training, and only then does transformers'
        # mask isolate packed samples by their position_ids (on CPU ember_packed splits them itself)
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                      position_ids=batch.get("position_ids"), use_cache=False)
        head = _plain_head(model)
        if head is not None:  # the loss straight from the hidden states, no full logits tensor
            hidden = model.get_decoder()(**inputs).last_hidden_state
            total = linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), head.weight, labels.reshape(-1))
        else:
            total = logits_cross_entropy(model(**inputs).logits, labels)
        return {"model": Loss(total, (labels != IGNORE).sum())}

    def flops(self, model, batch) -> torch.Tensor | int:
        """Training FLOPs of one micro-batch, as PaLM counts them (appendix B): per real token
        2 per weight for the forward pass, 2 for the gradient of the activations and 2 for the
        gradient of each trainable weight (6N in full training), plus 12·L·H·Q·T for attention
        over rows of T positions. N leaves out the input-embedding lookup (no matmul) but keeps
        the output head, tied or not (it is a matmul over the vocabulary)."""
        per_token, attention = self._flop_terms(model)
        mask = batch.get("attention_mask")
        width = batch["input_ids"].shape[1]
        tokens = mask.sum() if mask is not None else batch["input_ids"].numel()
        return tokens * (per_token + attention * width)

    def _flop_terms(self, model) -> tuple[int, int]:
        if getattr(self, "_flop_cache", (None,))[0] is not model:
            embedding = model.get_input_embeddings().weight
            matmul = [p for p in model.parameters() if p is not embedding and p.ndim >= 2]
            total = sum(p.numel() for p in matmul)
            trainable = sum(p.numel() for p in matmul if p.requires_grad)
            head = model.get_output_embeddings()
            if head is not None and head.weight is embedding:  # tied: the head's matmul still runs
                total += embedding.numel()
                trainable += embedding.numel() if embedding.requires_grad else 0
            config = model.config
            heads = config.num_attention_heads
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
            self._flop_cache = (model, 4 * total + 2 * trainable, 12 * config.num_hidden_layers * heads * head_dim)
        return self._flop_cache[1:]

    def export(self, model, path: str, state_dict: dict | None = None) -> None:
        """HF model folder for full/freeze; a PEFT adapter (loadable onto the base) for LoRA/QLoRA."""
        model.save_pretrained(path, state_dict=state_dict)
        self.tokenizer.save_pretrained(path)
        if getattr(model, "pissa_initial", None) is not None:  # pissa_convert
            from ...models.finetuning import save_pissa_converted
            save_pissa_converted(model, f"{path}/pissa_converted")


def _packs_by_segments(config) -> bool:
    """Plain causal self-attention through SDPA, no sliding window (its mask would be lost)."""
    return (config.model_type in PLAIN_HEAD_TYPES and getattr(config, "_attn_implementation", None) == "sdpa"
            and getattr(config, "sliding_window", None) is None)


def _plain_head(model) -> torch.nn.Linear | None:
    """The output layer when the fused loss may replace the model's own head, else None.

    Only for a model called directly: DDP and FSDP must see their wrapper's forward (DDP has
    no get_decoder; FSDP2 keeps weights sharded outside forward, as DTensors)."""
    if not hasattr(model, "get_decoder") or getattr(model.config, "model_type", None) not in PLAIN_HEAD_TYPES:
        return None
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None or type(head.weight) is not torch.nn.Parameter:
        return None
    return head
