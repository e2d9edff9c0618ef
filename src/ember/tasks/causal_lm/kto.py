"""Stage kto: one answer per prompt, tagged desirable or undesirable (LLaMA-Factory's kto_tag).

A batch holds the B samples, then their B KL samples (each prompt with a mirrored row's
answer: data/preference.py), in one forward; the reference is the one of stage dpo (adapters
disabled under LoRA, else a frozen copy or ref_model). The KL estimate is taken per
micro-batch, as TRL and LLaMA-Factory take it per device batch, so unlike the other stages KTO's
loss depends on how a batch is split into micro-batches (and it is not averaged over ranks).
"""
from __future__ import annotations

import torch

from ...engine.task import Loss
from .pref_losses import kto_losses
from .preference import PreferenceObjective, _model_inputs, sequence_logps


class KTOObjective(PreferenceObjective):

    def __init__(self, cfg):
        super().__init__(cfg)
        self.loss_type = "kto"  # summed log-probs, with a reference

    def step(self, model, batch: dict) -> Loss:
        cfg = self.cfg
        logps, lengths = sequence_logps(model(**_model_inputs(batch)).logits, batch["labels"])
        ref = self._reference_logps(model, batch)
        n = logps.size(0) // 2
        desirable = batch["kto_tag"].to(logps.device)
        # the KL samples set the reference point only: no gradient flows through them
        losses, rewards, kl = kto_losses(logps[:n], ref[:n], logps[n:].detach(), ref[n:], desirable, cfg.pref_beta,
                                         cfg.kto_chosen_weight, cfg.kto_rejected_weight)
        if cfg.pref_ftx > 0:  # LLaMA-Factory's SFT term, on the desirable answers
            losses = losses - cfg.pref_ftx * torch.where(desirable, logps[:n] / lengths[:n].clamp(min=1), 0.0)
        return Loss(losses.sum(), n, self._metrics(rewards, logps[:n].detach(), desirable, kl, n))

    @staticmethod
    def _metrics(rewards, logps, desirable, kl, n: int) -> dict:
        """TRL's: rewards and log-probs averaged over the desirable (chosen) or undesirable
        (rejected) samples, each over its own count; kl per micro-batch, weighted by its samples."""
        chosen, rejected = desirable.float(), (~desirable).float()
        return {"rewards/chosen": Loss((rewards * chosen).sum(), chosen.sum()),
                "rewards/rejected": Loss((rewards * rejected).sum(), rejected.sum()),
                "logps/chosen": Loss((logps * chosen).sum(), chosen.sum()),
                "logps/rejected": Loss((logps * rejected).sum(), rejected.sum()),
                "kl": kl * n}
