"""Per-pair preference losses on sequence log-probabilities, as LLaMA-Factory computes them.

Every function takes [pairs] tensors and returns (losses, chosen_rewards, rejected_rewards),
each [pairs]; the caller sums the losses (the engine normalises by the number of pairs).
The formulas are TRL's (LLaMA-Factory calls TRL's dpo_loss and writes ORPO and SimPO itself);
tests/tasks/test_pref_losses.py checks each against TRL on the same log-probabilities.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

REFERENCE_FREE = ("orpo", "simpo")  # no reference model: these compare the policy with itself
LENGTH_NORMALISED = ("ipo", "orpo", "simpo")  # log-probs averaged over answer tokens, not summed


def dpo_losses(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
               beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0):
    """DPO (sigmoid; with label_smoothing, conservative DPO), hinge (SLiC), IPO or kto_pair."""
    logits = (chosen - rejected) - (ref_chosen - ref_rejected)
    if loss_type == "kto_pair":
        return kto_pair_losses(chosen, rejected, ref_chosen, ref_rejected, beta)
    if loss_type == "sigmoid":
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  - F.logsigmoid(-beta * logits) * label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":  # the log-probs are per-token averages here (LENGTH_NORMALISED)
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss_type}")
    return losses, beta * (chosen - ref_chosen).detach(), beta * (rejected - ref_rejected).detach()


def kto_pair_losses(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, beta: float):
    """KTO on pairs (HALOs eq. 7, TRL's former DPO loss_type kto_pair, which LLaMA-Factory's
    pref_loss kto_pair calls): each chosen answer is pushed above the rejected half's mean
    log-ratio (the KL estimate, clamped at 0), each rejected one below the chosen half's. TRL
    averages the 2B terms; a pair's loss here is the mean of its two, so the engine's mean over
    pairs is that same number. The estimates are per micro-batch (as KTO's) and keep their
    gradient, as TRL's did."""
    chosen_ratios, rejected_ratios = chosen - ref_chosen, rejected - ref_rejected
    chosen_kl, rejected_kl = chosen_ratios.mean().clamp(min=0), rejected_ratios.mean().clamp(min=0)
    losses = ((1 - torch.sigmoid(beta * (chosen_ratios - rejected_kl)))
              + (1 - torch.sigmoid(beta * (chosen_kl - rejected_ratios)))) / 2
    return losses, beta * chosen_ratios.detach(), beta * rejected_ratios.detach()


def orpo_losses(chosen: torch.Tensor, rejected: torch.Tensor, beta: float):
    """ORPO on per-token average log-probs: the chosen answer's NLL plus beta times the odds-ratio
    term. log(1 - p) is taken as log1p(-exp(logp)) as LLaMA-Factory does."""
    log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
    losses = -chosen - beta * F.logsigmoid(log_odds)
    return losses, beta * chosen.detach(), beta * rejected.detach()


def simpo_losses(chosen: torch.Tensor, rejected: torch.Tensor, beta: float, gamma: float):
    """SimPO on per-token average log-probs: a margin gamma between the scaled averages."""
    logits = (chosen - rejected) - gamma / beta
    return -F.logsigmoid(beta * logits), beta * chosen.detach(), beta * rejected.detach()


def kto_losses(logps: torch.Tensor, ref_logps: torch.Tensor, kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor,
               desirable: torch.Tensor, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """KTO per sample: the reference point is the batch's KL estimate between policy and reference
    on mismatched answers (mean, clamped at 0, no gradient); desirable answers are pushed above it,
    undesirable ones below. Returns (losses, rewards, kl); rewards = beta * log-ratio."""
    kl = (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    logratios = logps - ref_logps
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios))))
    return losses, beta * logratios.detach(), kl


def pairwise_reward_losses(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor):
    """The reward model's Bradley-Terry loss: -log sigmoid(r_chosen - r_rejected)."""
    losses = -F.logsigmoid(chosen_scores - rejected_scores)
    return losses, chosen_scores.detach(), rejected_scores.detach()


def preference_losses(loss_type: str, chosen, rejected, ref_chosen, ref_rejected, cfg):
    """The loss cfg names (pref_loss), on [pairs] log-probs; references are None when reference-free."""
    if loss_type == "orpo":
        return orpo_losses(chosen, rejected, cfg.pref_beta)
    if loss_type == "simpo":
        return simpo_losses(chosen, rejected, cfg.pref_beta, cfg.simpo_gamma)
    return dpo_losses(chosen, rejected, ref_chosen, ref_rejected, cfg.pref_beta, loss_type, cfg.dpo_label_smoothing)


def pair_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict[str, torch.Tensor]:
    """TRL's and LLaMA-Factory's logged names, each summed over the pairs (the engine divides)."""
    return {"rewards/chosen": chosen_rewards.sum(), "rewards/rejected": rejected_rewards.sum(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().sum(),
            "rewards/margins": (chosen_rewards - rejected_rewards).sum(),
            "logps/chosen": chosen_logps.detach().sum(), "logps/rejected": rejected_logps.detach().sum()}
