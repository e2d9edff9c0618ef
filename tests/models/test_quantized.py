"""QLoRA on the CPU: LoRA adapters on a bitsandbytes 4- or 8-bit base.

bitsandbytes repacks 4-bit weights for avx512-bf16 CPUs on the first eval-mode, no-grad forward.
On such CPUs that layout crashes on widths that are not multiples of 32 (the tiny Llama's MLP is
176 wide) and the packed path has no autograd, so every backward after an evaluation pass gets
wrong LoRA gradients. ember keeps the portable layout; these tests show both that its gradients
after an eval pass are the gradients before it, and that the hazard is real on this CPU.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pytest
import torch

from conftest import read_metrics
from ember.config import ConfigError, build_config
from ember.engine.trainer import Trainer
from ember.tasks import build_task

bnb = pytest.importorskip("bitsandbytes")

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "data"


def cpu_has_avx512_bf16() -> bool:
    try:
        from bitsandbytes.functional import has_avx512bf16
        return bool(has_avx512bf16())
    except ImportError:
        try:
            return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
        except OSError:
            return False


def qlora_config(model_dir, output_dir, **overrides):
    base = dict(model_name_or_path=str(model_dir), stage="sft", template="default", finetuning_type="qlora",
                quantization_bit=4, lora_target="all", lora_rank=4, dataset="pydoc_alpaca,pydoc_sharegpt",
                dataset_dir=str(DEMO), max_samples=8, cutoff_len=256, per_device_train_batch_size=4,
                learning_rate=1e-2, max_steps=2, logging_steps=1, save_steps=0, output_dir=str(output_dir),
                disable_tqdm=True)
    base.update(overrides)
    return build_config(base)


@pytest.fixture(scope="module")
def model32_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama with every width a multiple of 32 (MLP 192 instead of 176): eval does not crash
    there even with repacking, so the gradient hazard can be observed on its own."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from ember.models.hf import load_tokenizer
    out = tmp_path_factory.mktemp("tiny_llama_32")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.intermediate_size = 192
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    load_tokenizer(str(tiny_model_dir), "model_name_or_path").save_pretrained(out)
    return out


def widths(model) -> set[int]:
    return {w for m in model.modules() if isinstance(m, bnb.nn.Linear4bit) for w in (m.in_features, m.out_features)}


def lora_grads(task, model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    task.training_step(model, batch, 0)["model"].total.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def grads_before_and_after_eval(cfg):
    """One SGD step (so lora_B is non-zero), reference gradients, an eval pass, gradients again."""
    task = build_task(cfg)
    train, _, collate = task.build_data()
    batch = collate([train[i] for i in range(4)])
    torch.manual_seed(0)
    model = task.build_model()
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    task.training_step(model, batch, 0)["model"].total.backward()
    optimizer.step()
    before = lora_grads(task, model, batch)
    model.eval()
    eval_error = None
    with torch.no_grad():
        try:
            logits = model(input_ids=batch["input_ids"], use_cache=False).logits
            assert torch.isfinite(logits).all()
        except Exception as err:  # the hazard on widths that are not multiples of 32
            eval_error = err
    model.train()
    after = lora_grads(task, model, batch)
    return model, before, after, eval_error


# ---- training ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bits, kind", [(4, "nf4"), (4, "fp4"), (8, "nf4")])
def test_qlora_trains_and_evaluates_on_cpu(tiny_model_dir, tmp_path, bits, kind):
    """A few steps with an eval pass after each: the second step's backward follows an evaluation."""
    out = tmp_path / "run"
    cfg = qlora_config(tiny_model_dir, out, quantization_bit=bits, quantization_type=kind, val_size=4, eval_steps=1,
                       per_device_eval_batch_size=4)
    trainer = Trainer(cfg, build_task(cfg))
    trainer.fit()
    layer = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    assert any(isinstance(m, layer) for m in trainer.model.modules()), "the base should be quantized"
    if bits == 4:
        assert any(w % 32 for w in widths(trainer.model)), "the tiny model should have a width not a multiple of 32"
        if kind == "fp4":
            assert any(m.weight.quant_state.quant_type == "fp4" for m in trainer.model.modules()
                       if isinstance(m, bnb.nn.Linear4bit))
    records = read_metrics(out)
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 2 and all(math.isfinite(v) for v in evals)
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "every lora_B should have moved from zero"
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("which", ["tiny (MLP 176 wide)", "widths multiple of 32"])
def test_lora_gradients_after_an_eval_pass_are_unchanged(tiny_model_dir, model32_dir, tmp_path, which):
    model_dir = tiny_model_dir if which.startswith("tiny") else model32_dir
    model, before, after, eval_error = grads_before_and_after_eval(qlora_config(model_dir, tmp_path))
    assert eval_error is None, f"evaluation failed: {eval_error!r}"
    names = [n for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n]
    assert len(names) == 2 * 7 * 2 and set(after) == set(names)
    assert all(after[n].abs().sum() > 0 for n in names), [n for n in names if not after[n].abs().sum() > 0]
    for name in names:
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.skipif(not cpu_has_avx512_bf16(), reason="the CPU lacks avx512_bf16: bitsandbytes never repacks "
                                                      "4-bit weights here, so there is no hazard to show")
def test_without_disabling_cpu_repacking_the_hazard_exists(tiny_model_dir, model32_dir, tmp_path, monkeypatch):
    """The control for the test above: with bitsandbytes' own behaviour, eval crashes on the tiny model's
    176-wide MLP, and on a model whose widths are multiples of 32 the gradients after eval are wrong."""
    import ember.models.quantized as quantized
    monkeypatch.setattr(quantized, "disable_cpu_repacking", lambda model: None)
    _, _, _, eval_error = grads_before_and_after_eval(qlora_config(tiny_model_dir, tmp_path / "a"))
    assert eval_error is not None, "expected bitsandbytes' repacked layout to fail on a width of 176"
    _, before, after, eval_error = grads_before_and_after_eval(qlora_config(model32_dir, tmp_path / "b"))
    assert eval_error is None
    worst = max(float((after[n] - before[n]).abs().max()) for n in before)
    assert worst > 1e-3, "expected the repacked layout to corrupt LoRA gradients after eval"


# ---- configuration --------------------------------------------------------------------------------

def test_qlora_without_model_name_or_path_is_refused(tokenizer_dir, corpus_dir):
    with pytest.raises(ConfigError, match="model_name_or_path"):
        build_config(dict(model_config="llama-tiny", tokenizer_name_or_path=str(tokenizer_dir), dataset="tiny_text",
                          dataset_dir=str(corpus_dir), finetuning_type="qlora", quantization_bit=4))


def test_qlora_without_quantization_bit_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="quantization_bit"):
        qlora_config(tiny_model_dir, tmp_path, quantization_bit=None)


def test_lora_with_quantization_bit_is_qlora_as_in_llamafactory(tiny_model_dir, tmp_path):
    assert qlora_config(tiny_model_dir, tmp_path, finetuning_type="lora").finetuning_type == "qlora"


@pytest.mark.parametrize("kind", ["full", "freeze"])
def test_quantization_bit_without_adapters_is_refused(tiny_model_dir, tmp_path, kind):
    with pytest.raises(ConfigError, match=f"quantization_bit is set but finetuning_type is {kind}.*lora"):
        qlora_config(tiny_model_dir, tmp_path, finetuning_type=kind)


@pytest.mark.parametrize("bits", [3, 16])
def test_unsupported_quantization_bits_are_refused(tiny_model_dir, tmp_path, bits):
    with pytest.raises(ConfigError, match="quantization_bit"):
        qlora_config(tiny_model_dir, tmp_path, quantization_bit=bits)


def test_parameter_summary_counts_the_quantized_base_at_full_size(tiny_model_dir, tmp_path, caplog):
    """The 4-bit base holds two weights per byte: the summary's total is the same as for plain LoRA."""
    def summary(cfg):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ember"):
            build_task(cfg).build_model()
        line = next(r.getMessage() for r in caplog.records if "trainable" in r.getMessage())
        found = re.search(r"([\d,]+)\s*/\s*([\d,]+)\s*\(\s*([\d.]+)\s*%\)", line)
        assert found, line
        return tuple(int(found.group(i).replace(",", "")) for i in (1, 2))

    lora = summary(qlora_config(tiny_model_dir, tmp_path, finetuning_type="lora", quantization_bit=None))
    assert summary(qlora_config(tiny_model_dir, tmp_path)) == lora
    assert summary(qlora_config(tiny_model_dir, tmp_path, quantization_bit=8)) == lora
