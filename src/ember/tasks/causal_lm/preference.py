"""Stages dpo, orpo and simpo: the policy against a reference (or against itself) on answer pairs.

A batch holds the chosen rows, then the rejected rows (data/preference.py: collate_pairs), so
both answers of every pair go through one forward. Sequence log-probabilities are summed over
the answer tokens exactly (fp32 log-softmax); the loss is returned summed over pairs with the
number of pairs as its count, so the engine's normalisation over micro-batches and ranks makes
accumulation and data parallelism exact.

The reference: with LoRA/QLoRA the policy itself with its adapters disabled (peft's
disable_adapter(): no second copy of the weights); with full or freeze training a frozen copy
of the starting model, or `ref_model` from a folder. It lives outside the trained model, so it
is in no checkpoint, optimizer or export, and it is rebuilt identically on resume.

With precompute_ref_log_probs the reference runs once instead: one pass over the training and
validation rows as the model is built (the starting weights, before fine-tuning is applied;
under LoRA these are the base, which is what disabling the adapters gives), each row's
log-prob stored as a column of the dataset, so it travels with its row through the sampler and
resumes exactly; no reference model is kept. Under DDP/FSDP the ranks share the pass (each runs
every world-th batch) and exchange the values. The pass is in memory (the datasets library caches
the tokenisation; ember keeps no dataset cache of its own) and is redone on resume.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os

import torch
from torch import nn

from ...data.labels import IGNORE
from ...engine.task import Loss
from ...models.hf import load_causal_lm
from ...models.lm_loss import next_token_labels
from .pref_losses import LENGTH_NORMALISED, REFERENCE_FREE, pair_metrics, preference_losses

log = logging.getLogger("ember")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of the labelled tokens (fp32) and how many there are."""
    targets = next_token_labels(labels)
    mask = targets != IGNORE
    logits = logits.float()
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logps = (picked - torch.logsumexp(logits, dim=-1)) * mask
    return logps.sum(-1), mask.sum(-1)


def _model_inputs(batch: dict) -> dict:
    # use_cache=False: no KV cache in training (and the mask then follows attention_mask exactly)
    return dict(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False)


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside DDP (the reference forward needs no gradient hooks); FSDP2 has no wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class PreferenceObjective:
    """The dpo stage's loss (pref_loss: sigmoid, hinge, ipo, orpo, simpo); stage orpo or simpo
    is stage dpo with that pref_loss."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.loss_type = cfg.stage if cfg.stage in REFERENCE_FREE else cfg.pref_loss
        self.reference: nn.Module | None = None
        self._placed = False

    @property
    def uses_reference(self) -> bool:
        return self.loss_type not in REFERENCE_FREE

    def before_finetuning(self, model: nn.Module) -> None:
        """Keep a frozen reference where disabling adapters cannot give one."""
        cfg = self.cfg
        if not self.uses_reference:
            return
        if cfg.ref_model:
            self.reference = load_causal_lm(cfg.ref_model, cfg.trust_remote_code)
        elif cfg.finetuning_type in ("full", "freeze"):
            self.reference = copy.deepcopy(model)
        if self.reference is not None:
            self.reference.eval().requires_grad_(False)

    def after_finetuning(self, model: nn.Module) -> nn.Module:
        return model

    def precompute_reference(self, model: nn.Module, sets: list, collate, sides: tuple[str, str]) -> None:
        """One pass of the reference over every row of `sets` (PairDatasets): each row's reference
        log-prob becomes the column <side>ref_logps. `model` is the starting model, before
        fine-tuning is applied; ref_model, when set, is loaded for the pass and dropped after it."""
        from ...config.schema import DistributedGroup, PrecisionGroup
        from ...engine.distributed import World
        from ...engine.runtime import Precision, pick_device
        cfg = self.cfg
        device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
        precision = Precision(cfg.part(PrecisionGroup), device)
        if cfg.ref_model:
            reference = load_causal_lm(cfg.ref_model, cfg.trust_remote_code)
        elif precision.param_dtype is not None:  # pure_bf16: as the live reference, in bf16 (a transient copy)
            reference = copy.deepcopy(model)
        else:
            reference = model
        home = next(reference.parameters()).device
        placed = getattr(reference, "hf_quantizer", None) is not None  # k-bit models are placed when loaded
        if not placed:
            reference.to(device=device, dtype=precision.param_dtype)
        was_training = reference.training
        reference.eval()
        size = max(1, cfg.per_device_eval_batch_size)
        # under DDP/FSDP each rank computes every world-th batch and the ranks exchange their
        # values: the pass costs 1/world of the time, and every batch is composed (and padded)
        # as on one process, so the values are the same bit for bit
        world = World(cfg.part(DistributedGroup))
        done = 0
        for dataset in sets:
            if dataset is None or len(dataset) == 0:
                continue
            starts = range(0, len(dataset), size)
            mine = {}
            for index, start in enumerate(starts):
                if index % world.size != world.rank:
                    continue
                batch = collate([dataset[i] for i in range(start, min(start + size, len(dataset)))])
                batch = {k: v.to(next(reference.parameters()).device) for k, v in batch.items()}
                with torch.no_grad(), precision.autocast():
                    logps, lengths = sequence_logps(reference(**_model_inputs(batch)).logits, batch["labels"])
                if self.loss_type in LENGTH_NORMALISED:
                    logps = logps / lengths.clamp(min=1)
                mine[index] = logps.cpu().tolist()
            done += len(mine)
            merged = {index: part for shard in world.gather(mine) for index, part in shard.items()}
            values = [value for index in range(len(starts)) for value in merged[index]]
            n = len(dataset)
            for i, side in enumerate(sides):
                dataset.add_column(f"{side}ref_logps", values_of_side(values, size, n, i))
        reference.train(was_training)
        if reference is model and not placed and home != device:
            model.to(home)  # the engine places (and casts) the model it trains itself
        del reference
        self.precomputed_batches = done  # this rank's share of the pass
        log.info("reference log-probabilities precomputed for %s rows (%d batches on this rank of %d); "
                 "no reference model is kept", " + ".join(str(len(d)) for d in sets if d is not None), done,
                 world.size)

    def _reference_model(self, policy: nn.Module) -> nn.Module:
        if not self._placed:  # on the policy's device and in its dtype (pure_bf16), once
            param = next(p for p in policy.parameters() if p.is_floating_point())
            self.reference.to(device=param.device, dtype=param.dtype)
            self._placed = True
        return self.reference

    def _reference_logps(self, model: nn.Module, batch: dict) -> torch.Tensor:
        if "ref_logps" in batch:  # precompute_ref_log_probs: computed once, carried by the batch
            return batch["ref_logps"].to(batch["labels"].device)
        if self.cfg.precompute_ref_log_probs:
            raise RuntimeError("precompute_ref_log_probs is set but the batch carries no ref_logps "
                               "(build_data must run before build_model)")
        policy = _unwrapped(model)
        if self.reference is not None:
            ref, context = self._reference_model(policy), contextlib.nullcontext()
        else:  # LoRA: the same weights with the adapters off are the starting model
            ref, context = policy, policy.disable_adapter()
        with torch.no_grad(), context:
            logps, lengths = sequence_logps(ref(**_model_inputs(batch)).logits, batch["labels"])
        return logps / lengths.clamp(min=1) if self.loss_type in LENGTH_NORMALISED else logps

    def step(self, model: nn.Module, batch: dict) -> Loss:
        logps, lengths = sequence_logps(model(**_model_inputs(batch)).logits, batch["labels"])
        average = logps / lengths.clamp(min=1)
        scored = average if self.loss_type in LENGTH_NORMALISED else logps
        pairs = scored.size(0) // 2
        chosen, rejected = scored[:pairs], scored[pairs:]
        ref_chosen = ref_rejected = None
        if self.uses_reference:
            ref = self._reference_logps(model, batch)
            ref_chosen, ref_rejected = ref[:pairs], ref[pairs:]
        losses, chosen_rewards, rejected_rewards = preference_losses(
            self.loss_type, chosen, rejected, ref_chosen, ref_rejected, self.cfg)
        if self.cfg.pref_ftx > 0:  # LLaMA-Factory's SFT term: the chosen answer's mean token NLL
            losses = losses - self.cfg.pref_ftx * average[:pairs]
        metrics = pair_metrics(chosen_rewards, rejected_rewards, chosen, rejected)
        return Loss(losses.sum(), pairs, metrics)


def values_of_side(values: list, size: int, n: int, side: int) -> list:
    """The collated order is, per batch of b rows, the b first-side rows then the b second-side
    rows: side 0's (or 1's) values, in row order."""
    out = []
    for start in range(0, n, size):
        b = min(size, n - start)
        offset = 2 * start
        out.extend(values[offset + side * b: offset + (side + 1) * b])
    return out
