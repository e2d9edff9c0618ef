"""LoRA+, PiSSA, OFT and NEFTune with LLaMA-Factory's keys, each checked for the change it makes to
training, against a computation written here (not read back from peft or transformers)."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from ember.config import build_config
from ember.engine.optim import build_optimizer
from ember.engine.trainer import Trainer
from ember.tasks import build_task


@pytest.fixture
def lm_config(tiny_model_dir, corpus_dir, tmp_path):
    def make(**overrides):
        base = dict(model_name_or_path=str(tiny_model_dir), dataset="tiny_text", dataset_dir=str(corpus_dir),
                    max_samples=40, cutoff_len=32, per_device_train_batch_size=4, learning_rate=1e-3, max_steps=2,
                    logging_steps=1, save_steps=0, output_dir=str(tmp_path / "run"), disable_tqdm=True)
        return build_config({**base, **overrides})
    return make


def built(cfg):
    task = build_task(cfg)
    train, _, collate = task.build_data()
    torch.manual_seed(0)
    return task, task.build_model(), collate([train[i] for i in range(4)])


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"]).logits


def base_model(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


# ---- LoRA+ -------------------------------------------------------------------------------------

def test_loraplus_b_matrices_step_at_ratio_times_lr(lm_config):
    cfg = lm_config(finetuning_type="lora", loraplus_lr_ratio=16.0, optim="sgd", learning_rate=0.01)
    task, model, batch = built(cfg)
    with torch.no_grad():  # B starts at zero (so A gets no gradient): give both a gradient to compare
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    groups = task.param_groups(model)["model"]
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    assert set(lr_of) == set(names), "every trainable weight is in one group"
    for pid, name in names.items():  # the paper's rule, written from the parameter names
        assert lr_of[pid] == pytest.approx(0.01 * 16 if "lora_B" in name else 0.01), name
    optimizer = build_optimizer(groups, cfg, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loss = task.training_step(model, batch, 0)["model"]
    (loss.total / loss.count).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer.step()
    for name, p in model.named_parameters():
        if p.requires_grad:  # plain SGD: the update is exactly -lr × grad, lr per group
            lr = 0.01 * (16 if "lora_B" in name else 1)
            assert torch.allclose(p.detach() - before[name], -lr * grads[name], atol=1e-7), name
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n)


def test_loraplus_needs_lora(lm_config):
    with pytest.raises(Exception, match="loraplus_lr_ratio.*lora"):
        lm_config(finetuning_type="full", loraplus_lr_ratio=16.0)


# ---- PiSSA -------------------------------------------------------------------------------------

@pytest.mark.parametrize("pissa_iter", [-1, 4])
def test_pissa_starts_at_the_base_output_with_a_residual_base(lm_config, tiny_model_dir, pissa_iter):
    cfg = lm_config(finetuning_type="lora", pissa_init=True, pissa_iter=pissa_iter, lora_rank=4)
    _, model, batch = built(cfg)
    base = base_model(tiny_model_dir)
    assert torch.allclose(logits(model.eval(), batch), logits(base, batch), atol=1e-4)
    original = dict(base.named_parameters())
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    w = original["model.layers.0.self_attn.q_proj.weight"]
    residual = layer.base_layer.weight.detach()
    assert (residual - w).abs().max() > 1e-3, "PiSSA moves the principal part out of the base weight"
    scale = layer.scaling["default"]
    principal = scale * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert torch.allclose(residual + principal, w, atol=1e-5)
    if pissa_iter == -1:  # exact SVD: the adapter holds the top-r part, so the residual has w's lower singular values
        s = torch.linalg.svdvals(w)
        assert torch.allclose(torch.linalg.svdvals(principal), torch.cat([s[:4], torch.zeros(len(s) - 4)]), atol=1e-4)


def test_pissa_convert_writes_a_plain_lora_adapter_for_the_original_base(lm_config, tiny_model_dir, tmp_path):
    from peft import PeftModel
    cfg = lm_config(finetuning_type="lora", pissa_init=True, pissa_convert=True, lora_rank=4, learning_rate=1e-2)
    trainer = Trainer(cfg, build_task(cfg))
    trainer.fit()
    out = tmp_path / "run"
    converted = PeftModel.from_pretrained(base_model(tiny_model_dir), str(out / "pissa_converted")).eval()
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    trained = trainer.raw.eval()
    with torch.no_grad():
        assert torch.allclose(converted(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-4)
        assert not torch.allclose(base_model(tiny_model_dir)(input_ids=ids).logits, trained(input_ids=ids).logits,
                                  atol=1e-4), "training changed the model"


# ---- OFT ---------------------------------------------------------------------------------------

def test_oft_rotates_weights_keeping_their_singular_values(lm_config, tiny_model_dir):
    cfg = lm_config(finetuning_type="oft", oft_block_size=16, learning_rate=5e-2, max_steps=4)
    _, model, batch = built(cfg)
    assert all("oft_" in n for n, p in model.named_parameters() if p.requires_grad)
    base = base_model(tiny_model_dir)
    assert torch.allclose(logits(model.eval(), batch), logits(base, batch), atol=1e-5), "OFT starts at the identity"
    trainer = Trainer(cfg, build_task(cfg))
    trainer.fit()
    merged = trainer.raw.merge_and_unload()
    for name, w in base.named_parameters():
        if name.endswith("proj.weight"):
            new = dict(merged.named_parameters())[name].detach()
            moved = ((new - w).norm() / w.norm()).item()
            s_new, s_old = torch.linalg.svdvals(new), torch.linalg.svdvals(w)
            spectrum_moved = ((s_new - s_old).norm() / s_old.norm()).item()
            # a rotation keeps every singular value; peft's default Cayley-Neumann series (as LLaMA-Factory
            # uses it) is orthogonal up to its truncation, so the spectrum moves far less than the weight
            assert moved > 0.05 and spectrum_moved < 0.1 * moved, (name, moved, spectrum_moved)


# ---- NEFTune -----------------------------------------------------------------------------------

def test_neftune_noise_in_training_only_at_alpha_over_sqrt_ld(lm_config):
    alpha = 5.0
    _, model, batch = built(lm_config(finetuning_type="lora", neftune_noise_alpha=alpha))
    embed = model.get_input_embeddings()
    ids = batch["input_ids"]
    clean = torch.nn.functional.embedding(ids, embed.weight).detach()
    model.eval()
    assert torch.equal(embed(ids), clean), "no noise in evaluation"
    model.train()
    noise = (embed(ids) - clean).detach()
    length, dim = ids.shape[1], clean.shape[-1]
    bound = alpha / math.sqrt(length * dim)
    assert noise.abs().max() <= bound * (1 + 1e-5)
    # uniform on [-b, b]: standard deviation b/sqrt(3), mean 0
    assert noise.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert abs(noise.mean().item()) < bound * 0.05


def test_neftune_changes_the_training_loss_not_the_eval_loss(lm_config):
    plain_task, plain, batch = built(lm_config(finetuning_type="lora"))
    noisy_task, noisy, _ = built(lm_config(finetuning_type="lora", neftune_noise_alpha=10.0))
    noisy.load_state_dict(plain.state_dict())

    def loss(task, model):
        with torch.no_grad():
            out = task.training_step(model, batch, 0)["model"]
        return (out.total / out.count).item()
    plain.eval(), noisy.eval()
    assert loss(noisy_task, noisy) == loss(plain_task, plain)
    plain.train(), noisy.train()
    assert loss(noisy_task, noisy) != loss(plain_task, plain)


def test_dpo_with_oft_uses_the_base_with_adapters_off_as_reference(tiny_model_dir, tmp_path):
    """OFT starts at the identity, so at step 0 the policy equals its reference (adapters disabled):
    DPO's first loss is log 2 exactly, and training moves it."""
    from conftest import read_metrics
    from pathlib import Path
    demo = Path(__file__).resolve().parents[2] / "examples" / "data"
    cfg = build_config(dict(model_name_or_path=str(tiny_model_dir), stage="dpo", finetuning_type="oft", oft_block_size=16,
                            template="default", dataset="pydoc_pref_alpaca", dataset_dir=str(demo), max_samples=8,
                            cutoff_len=64, per_device_train_batch_size=4, learning_rate=5e-2, max_steps=3,
                            logging_steps=1, save_steps=0, output_dir=str(tmp_path / "dpo"), disable_tqdm=True))
    Trainer(cfg, build_task(cfg)).fit()
    losses = [r["loss"] for r in read_metrics(tmp_path / "dpo") if "loss" in r]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5) and losses[-1] != pytest.approx(math.log(2), abs=1e-4)


def test_export_refuses_the_pissa_adapter_and_merges_the_converted_one(lm_config, tiny_model_dir, tmp_path):
    from ember.config import ConfigError
    from ember.export import export_merged, parse_export_config
    cfg = lm_config(finetuning_type="lora", pissa_init=True, pissa_convert=True, lora_rank=4, learning_rate=1e-2)
    trainer = Trainer(cfg, build_task(cfg))
    trainer.fit()
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="PiSSA adapter.*pissa_converted"):
        export_merged(parse_export_config(dict(model_name_or_path=str(tiny_model_dir), adapter_name_or_path=str(out),
                                               export_dir=str(tmp_path / "merged"))))
    merged = export_merged(parse_export_config(dict(model_name_or_path=str(tiny_model_dir), export_dir=str(tmp_path / "m2"),
                                                    adapter_name_or_path=str(out / "pissa_converted"))))
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(base_model(merged)(input_ids=ids).logits, trainer.raw.eval()(input_ids=ids).logits, atol=1e-4)
