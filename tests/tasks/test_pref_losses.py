"""ember's preference losses against TRL's own loss code, on the same log-probabilities.

TRL (a test-only dependency) computes its losses inside its trainers; its methods are called
here unbound, on a stand-in for the trainer holding only the attributes they read, and (for
DPO and the reward model) a stand-in model whose outputs are the chosen log-probabilities.
Each of ember's losses, and DPO's logged rewards, must match within 1e-6.
"""
from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from ember.tasks.causal_lm.pref_losses import (dpo_losses, kto_pair_losses, orpo_losses, pair_metrics,
                                               pairwise_reward_losses, simpo_losses)

pytest.importorskip("trl")
TOL = 1e-6
PAIRS, WIDTH = 6, 12


def _accelerator():
    return SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)


def _trainer_stub(model, **attrs):
    return SimpleNamespace(model=model, accelerator=_accelerator(), aux_loss_enabled=False, ld_alpha=None,
                           precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_weights=[1.0],
                           use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
                           _total_train_tokens=0, _tp_size=1, args=SimpleNamespace(center_rewards_coefficient=None),
                           label_smoothing=0.0, **attrs)


class FixedOutputs(torch.nn.Module):
    """A 'model' whose per-token log-probs sum to the given sequence log-probs (or whose logits
    are the given scores): TRL's loss code then sees exactly these numbers."""

    def __init__(self, logps=None, scores=None):
        super().__init__()
        self.logps, self.scores = logps, scores

    def forward(self, input_ids, **kwargs):
        rows = input_ids.shape[0]
        if self.scores is not None:
            return SimpleNamespace(logits=self.scores.unsqueeze(-1))
        per_token = torch.zeros(rows, WIDTH - 1, dtype=self.logps.dtype)
        per_token[:, 0] = self.logps
        zeros = torch.zeros(rows, WIDTH - 1, dtype=self.logps.dtype)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def _logps(seed: int, low=-40.0, high=-2.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [low + (high - low) * torch.rand(PAIRS, generator=g, dtype=torch.float64) for _ in range(4)]


def _lengths(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 100)
    return (torch.randint(1, WIDTH, (PAIRS,), generator=g), torch.randint(1, WIDTH, (PAIRS,), generator=g))


def trl_dpo(loss_type, beta, chosen, rejected, ref_chosen, ref_rejected, lengths=None):
    from trl.trainer.dpo_trainer import DPOTrainer
    model = FixedOutputs(logps=torch.cat([chosen, rejected]))
    stub = _trainer_stub(model, loss_types=[loss_type], beta=beta)
    completion = torch.zeros(2 * PAIRS, WIDTH, dtype=torch.long)
    for row, n in enumerate(torch.cat(lengths) if lengths else [1] * (2 * PAIRS)):
        completion[row, 1:1 + int(n)] = 1
    inputs = {"input_ids": torch.zeros(2 * PAIRS, WIDTH, dtype=torch.long), "completion_mask": completion,
              "attention_mask": torch.ones(2 * PAIRS, WIDTH, dtype=torch.long),
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in stub._metrics["train"].items()}


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_sigmoid_and_hinge_equal_trl(loss_type, beta):
    chosen, rejected, ref_chosen, ref_rejected = _logps(1)
    losses, chosen_rewards, rejected_rewards = dpo_losses(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type)
    expected, logged = trl_dpo(loss_type, beta, chosen, rejected, ref_chosen, ref_rejected)
    assert abs(losses.mean().item() - expected.item()) <= TOL
    ours = {k: (v / PAIRS).item() for k, v in pair_metrics(chosen_rewards, rejected_rewards, chosen, rejected).items()}
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected"):
        assert abs(ours[key] - logged[key]) <= TOL, key


def test_ipo_on_length_averaged_logps_equals_trl():
    """LLaMA-Factory averages IPO's log-probs over the answer tokens; TRL divides the log-ratios
    by the same lengths: one formula."""
    chosen, rejected, ref_chosen, ref_rejected = _logps(2)
    n_chosen, n_rejected = _lengths(2)
    losses, *_ = dpo_losses(chosen / n_chosen, rejected / n_rejected, ref_chosen / n_chosen,
                            ref_rejected / n_rejected, 0.1, "ipo")
    expected, _ = trl_dpo("ipo", 0.1, chosen, rejected, ref_chosen, ref_rejected, lengths=(n_chosen, n_rejected))
    assert abs(losses.mean().item() - expected.item()) <= TOL


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_dpo_label_smoothing_equals_trl_conservative_sigmoid(smoothing):
    """Conservative DPO as TRL's CPO trainer writes it, on the policy-minus-reference log-ratios."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    chosen, rejected, ref_chosen, ref_rejected = _logps(3)
    losses, *_ = dpo_losses(chosen, rejected, ref_chosen, ref_rejected, 0.2, "sigmoid", smoothing)
    stub = SimpleNamespace(alpha=0.0, loss_type="sigmoid", beta=0.2, label_smoothing=smoothing,
                           accelerator=_accelerator())
    expected, *_ = CPOTrainer.cpo_loss(stub, chosen - ref_chosen, rejected - ref_rejected)
    assert (losses - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.4])
def test_simpo_equals_trl(gamma):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    chosen, rejected, _, _ = _logps(4, low=-4.0, high=-0.1)  # per-token averages
    losses, chosen_rewards, rejected_rewards = simpo_losses(chosen, rejected, 2.0, gamma)
    stub = SimpleNamespace(alpha=0.0, loss_type="simpo", beta=2.0, simpo_gamma=gamma, label_smoothing=0.0,
                           accelerator=_accelerator())
    expected, expected_chosen, expected_rejected = CPOTrainer.cpo_loss(stub, chosen, rejected)
    assert (losses - expected).abs().max().item() <= TOL
    assert (chosen_rewards - expected_chosen).abs().max().item() <= TOL
    assert (rejected_rewards - expected_rejected).abs().max().item() <= TOL


def test_orpo_is_the_chosen_nll_plus_trl_odds_ratio_term():
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer
    chosen, rejected, _, _ = _logps(5, low=-4.0, high=-0.05)
    losses, *_ = orpo_losses(chosen, rejected, 0.1)
    stub = SimpleNamespace(beta=0.1, accelerator=_accelerator())
    ratio_losses, *_ = ORPOTrainer.odds_ratio_loss(stub, chosen, rejected)  # beta * log sigmoid(log odds)
    assert (losses - (-chosen - ratio_losses)).abs().max().item() <= TOL


def test_reward_loss_equals_trl_reward_trainer():
    from trl.trainer.reward_trainer import RewardTrainer
    g = torch.Generator().manual_seed(6)
    scores = torch.randn(2 * PAIRS, generator=g, dtype=torch.float64) * 3
    losses, *_ = pairwise_reward_losses(scores[:PAIRS], scores[PAIRS:])
    model = FixedOutputs(scores=scores)
    model.train()
    stub = _trainer_stub(model)
    inputs = {"input_ids": torch.zeros(2 * PAIRS, 3, dtype=torch.long),
              "attention_mask": torch.ones(2 * PAIRS, 3, dtype=torch.long)}
    expected = RewardTrainer.compute_loss(stub, model, inputs)
    assert abs(losses.mean().item() - expected.item()) <= TOL


def test_dpo_with_the_policy_as_reference_is_ln2():
    chosen, rejected, _, _ = _logps(7)
    losses, *_ = dpo_losses(chosen, rejected, chosen.clone(), rejected.clone(), 0.1)
    assert torch.equal(losses, torch.full_like(losses, math.log(2)))


def trl_kto(beta, logps, ref_logps, kl_logps, ref_kl_logps, desirable, wd, wu):
    from trl.trainer.kto_trainer import KTOTrainer

    class Model(FixedOutputs):  # the KL call gets the KL input ids (ones), the main call zeros
        def forward(self, input_ids, **kwargs):
            self.logps = kl_logps if bool(input_ids[0, 0] == 1) else logps
            return super().forward(input_ids, **kwargs)

    model = Model(logps=logps)
    stub = _trainer_stub(model, beta=beta, calculate_KL=True, loss_type="kto", desirable_weight=wd,
                         undesirable_weight=wu)
    stub._compute_kl_logps = lambda m, batch: KTOTrainer._compute_kl_logps(stub, m, batch)
    rows = logps.numel()
    inputs = {"input_ids": torch.zeros(rows, WIDTH, dtype=torch.long), "KL_input_ids": torch.ones(rows, WIDTH, dtype=torch.long),
              "attention_mask": torch.ones(rows, WIDTH, dtype=torch.long),
              "KL_attention_mask": torch.ones(rows, WIDTH, dtype=torch.long),
              "completion_mask": torch.ones(rows, WIDTH, dtype=torch.long),
              "KL_completion_mask": torch.ones(rows, WIDTH, dtype=torch.long),
              "label": desirable, "ref_logps": ref_logps, "ref_KL_logps": ref_kl_logps}
    loss = KTOTrainer._compute_loss(stub, model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in stub._metrics["train"].items()}


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 1.33), (0.7, 1.0)])
def test_kto_equals_trl(weights):
    from ember.tasks.causal_lm.kto import KTOObjective
    from ember.tasks.causal_lm.pref_losses import kto_losses
    logps, ref_logps, kl_logps, ref_kl_logps = _logps(8)
    kl_logps = ref_kl_logps + 0.5  # a positive KL estimate, so the reference point moves
    desirable = torch.tensor([True, False, True, True, False, False])
    losses, rewards, kl = kto_losses(logps, ref_logps, kl_logps, ref_kl_logps, desirable, 0.1, *weights)
    expected, logged = trl_kto(0.1, logps, ref_logps, kl_logps, ref_kl_logps, desirable, *weights)
    assert abs(losses.mean().item() - expected.item()) <= TOL
    ours = KTOObjective._metrics(rewards, logps, desirable, kl, PAIRS)
    assert abs(kl.item() - logged["kl"]) <= TOL and kl.item() > 0
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert abs((ours[key].total / ours[key].count).item() - logged[key]) <= TOL, key


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_kto_pair_equals_trl_kto_on_each_half(shift):
    """TRL dropped DPO's kto_pair (LLaMA-Factory's pref_loss kto_pair called it); its formula is
    KTO with the chosen half judged against the rejected half's KL estimate and vice versa. So
    it is TRL's KTO loss on all-desirable chosen answers with the rejected ones as KL samples,
    averaged with TRL's KTO loss on all-undesirable rejected answers with the chosen ones as KL
    samples. shift > 0 makes both KL estimates positive, so the reference points move."""
    chosen, rejected, ref_chosen, ref_rejected = _logps(9)
    chosen, rejected = ref_chosen + shift + (chosen - ref_chosen) / 20, ref_rejected + shift + (rejected - ref_rejected) / 20
    beta = 0.3
    losses, chosen_rewards, rejected_rewards = dpo_losses(chosen, rejected, ref_chosen, ref_rejected, beta, "kto_pair")
    every, none = torch.ones(PAIRS, dtype=torch.bool), torch.zeros(PAIRS, dtype=torch.bool)
    on_chosen, logged = trl_kto(beta, chosen, ref_chosen, rejected, ref_rejected, every, 1.0, 1.0)
    on_rejected, _ = trl_kto(beta, rejected, ref_rejected, chosen, ref_chosen, none, 1.0, 1.0)
    assert abs(losses.mean().item() - (on_chosen.item() + on_rejected.item()) / 2) <= TOL
    assert (chosen_rewards - beta * (chosen - ref_chosen)).abs().max().item() <= TOL
    assert abs(chosen_rewards.mean().item() - logged["rewards/chosen"]) <= TOL
    if shift:
        assert logged["kl"] > 0
    assert torch.equal(kto_pair_losses(chosen, rejected, ref_chosen, ref_rejected, beta)[0], losses)
