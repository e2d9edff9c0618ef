"""GaLore, APOLLO, Adam-mini, Muon and BAdam with LLaMA-Factory's keys: each step changes the weights the
way the method says, checked against formulas written here; each resumes (or refuses to) from a checkpoint."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import read_metrics
from ember.config import ConfigError, build_config
from ember.engine.optimizers import method_optimizer

IDS = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
Q = "model.layers.0.self_attn.q_proj.weight"


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, vocab_size=128, tie_word_embeddings=False))


def one_step(model=None, **keys):
    """(model, optimizer, weight change, gradient) of one step on a fixed batch."""
    model = model or tiny_llama()
    cfg = build_config(dict(model_config="llama-tiny", dataset="x", learning_rate=1e-3, **keys))
    optimizer = method_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(input_ids=IDS, labels=IDS).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return model, optimizer, {n: p.detach() - before[n] for n, p in model.named_parameters()}, grads


def rank(matrix, tol=1e-5) -> int:
    s = torch.linalg.svdvals(matrix)
    return int((s > tol * s[0]).sum())


def test_galore_updates_target_matrices_within_rank_r():
    model, _, delta, _ = one_step(use_galore=True, galore_rank=2, galore_target="q_proj,v_proj")
    for name, d in delta.items():
        if name.endswith(("q_proj.weight", "v_proj.weight")):
            assert rank(d) <= 2 and d.abs().max() > 0, name
        elif name.endswith(("k_proj.weight", "o_proj.weight")):
            assert rank(d) > 2, f"{name} is not a target: a full-rank Adam step"


def test_apollo_scales_the_raw_gradient_per_channel():
    _, _, delta, grads = one_step(use_apollo=True, apollo_rank=2)
    for name in (Q, "model.layers.0.mlp.down_proj.weight"):
        ratio = delta[name] / grads[name]
        spread = min((ratio.std(dim) / ratio.mean(dim).abs()).max().item() for dim in (0, 1))
        assert spread < 1e-2, f"{name}: the update is a per-channel multiple of the gradient"
    ratio = delta["model.layers.0.self_attn.k_proj.weight"] / grads["model.layers.0.self_attn.k_proj.weight"]
    assert torch.all(ratio < 0)


def test_adam_mini_uses_one_second_moment_per_head():
    model, optimizer, delta, grads = one_step(use_adam_mini=True)
    state = optimizer.state[dict(model.named_parameters())[Q]]
    assert state["vmean"].numel() == 4, "q_proj: one value per attention head"
    g = grads[Q].view(4, -1)  # Adam's first step with one v per head: -lr · g / sqrt(mean over the head of g²)
    expected = -1e-3 * g / (g.pow(2).mean(1, keepdim=True).sqrt() + 1e-8)
    assert torch.allclose(delta[Q].view(4, -1), expected, rtol=1e-3, atol=1e-9)


def test_muon_orthogonalises_hidden_matrices_and_adamw_steps_the_rest():
    model, _, delta, grads = one_step(use_muon=True)
    for name in (Q, "model.layers.1.mlp.up_proj.weight"):
        s, g = torch.linalg.svdvals(delta[name]), torch.linalg.svdvals(grads[name])
        k = int((g > 0.1 * g[0]).sum())  # the gradient's main directions, spread over a factor up to 10
        assert g[0] / g[k - 1] > 5 and s[0] / s[k - 1] < 2, f"{name}: Newton-Schulz flattens the spectrum"
    # size matched to AdamW's (0.2·sqrt(max side)): the update's RMS is 0.2·lr times the orthogonal factor's
    assert 0.5 < (delta[Q].pow(2).mean().sqrt() / (0.2 * 1e-3)).item() < 1.5
    reference = tiny_llama()  # embeddings, head and norms: exactly torch's AdamW
    names = ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"]
    params = dict(reference.named_parameters())
    adamw = torch.optim.AdamW([params[n] for n in names], lr=1e-3, weight_decay=0.0)
    reference(input_ids=IDS, labels=IDS).loss.backward()
    before = {n: params[n].detach().clone() for n in names}
    adamw.step()
    for n in names:
        assert torch.allclose(delta[n], params[n].detach() - before[n], atol=1e-7), n


def test_badam_trains_one_block_of_layers_at_a_time():
    model = tiny_llama()
    _, optimizer, delta, _ = one_step(model, use_badam=True, badam_switch_mode="ascending", badam_switch_interval=2)
    changed = {n.split(".")[2] for n, d in delta.items() if d.abs().max() > 0}
    assert changed == {"0"}, "only decoder layer 0 moves in the first block"
    assert delta["model.embed_tokens.weight"].abs().max() == 0 and delta["lm_head.weight"].abs().max() == 0
    # badam switches after each step s with (s + 1) % interval == 0 (so the first block has one step):
    # steps 2 and 3 train layer 1, step 4 layer 0 again
    for expected in ("1", "1", "0"):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model(input_ids=IDS, labels=IDS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        moved = {n.split(".")[2] for n, p in model.named_parameters() if (p.detach() - before[n]).abs().max() > 0}
        assert moved == {expected}


@pytest.mark.parametrize("keys, message", [
    (dict(use_galore=True, finetuning_type="lora"), "use_galore.*adapters"),
    (dict(use_galore=True, use_muon=True), "choose one optimizer"),
    (dict(use_adam_mini=True, optim="sgd"), "leave optim at adamw"),
    (dict(use_badam=True, resume_from_checkpoint="true"), "use_badam cannot resume"),
    (dict(use_badam=True, badam_mode="ratio"), "badam_mode ratio"),
])
def test_combinations_refused_in_one_line(keys, message):
    with pytest.raises(ConfigError, match=message):
        build_config(dict(model_config="llama-tiny", dataset="x", **keys))


@pytest.mark.parametrize("key", ["use_galore", "use_apollo", "use_adam_mini", "use_muon"])
def test_resumed_run_equals_the_uninterrupted_one(key, make_config, train, tmp_path):
    extra = {"galore_rank": 4, "galore_update_interval": 3} if key == "use_galore" else \
        {"apollo_rank": 4, "apollo_update_interval": 3} if key == "use_apollo" else {}
    extra["lr_scheduler_type"] = "constant"  # so stopping at 2 of 4 steps changes no learning rate
    whole = make_config(**{key: True}, **extra, max_steps=4, save_steps=2, output_dir=str(tmp_path / "whole"))
    train(whole)
    half = make_config(**{key: True}, **extra, max_steps=2, save_steps=2, output_dir=str(tmp_path / "half"))
    train(half)
    train(make_config(**{key: True}, **extra, max_steps=4, save_steps=2, output_dir=str(tmp_path / "half"),
                      resume_from_checkpoint="true"))
    losses = [[r["loss"] for r in read_metrics(tmp_path / run) if "loss" in r] for run in ("whole", "half")]
    assert losses[0] == losses[1] and len(losses[0]) == 4
