"""gradient_checkpointing: the same losses and gradients as without it, for every family with
repeated blocks (LM full and LoRA, VLM decoder and vision encoder, video VAE), less memory, and
LLaMA-Factory's disable_gradient_checkpointing read as its opposite.

Equality is checked on one training step of each family's own loss path (the LM's chunked loss
through get_decoder included), with the engine's checkpoint_blocks applied to the blocks the
family names; whole runs through the Trainer check that the engine applies it.
"""
from __future__ import annotations

import copy
import ctypes
import sys
from pathlib import Path

import pytest
import torch

from conftest import curve
from ember.config import build_config
from ember.engine.recompute import checkpoint_blocks
from ember.tasks import build_task
from ember.tasks.video_vae.model import CausalVAE, CausalVAEConfig, repeated_blocks

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TOKENIZER = EXAMPLES / "data" / "tokenizer"


def _step(task, model, batch):
    torch.manual_seed(0)  # dropout and posterior noise draw the same numbers in both runs
    losses = task.training_step(model, batch, step=0)
    total = sum(loss.total for loss in losses.values())
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_step(task, batch):
    """One step with the family's blocks checkpointed equals the step without, bit for bit."""
    plain = task.build_model().train()
    recomputed = copy.deepcopy(plain)
    assert checkpoint_blocks(task.recomputed_blocks(recomputed)) > 0
    loss, grads = _step(task, plain, batch)
    loss_ckpt, grads_ckpt = _step(task, recomputed, batch)
    assert grads and grads.keys() == grads_ckpt.keys()
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=0, atol=0, msg=name)


def first_batch(task, size=2):
    train, _, collate = task.build_data()
    return collate([train[i] for i in range(min(size, len(train)))])


@pytest.mark.parametrize("finetuning_type", ["full", "lora", "qlora"])
def test_lm_step_is_bit_identical(make_config, tiny_model_dir, finetuning_type):
    quantized = {"quantization_bit": 4} if finetuning_type == "qlora" else {}
    cfg = make_config(model_config=None, model_name_or_path=str(tiny_model_dir), finetuning_type=finetuning_type,
                      lora_target="all", cutoff_len=64, **quantized)
    task = build_task(cfg)
    assert_same_step(task, first_batch(task))


def test_vlm_step_is_bit_identical_in_decoder_and_vision_encoder(tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    from make_shapes_vqa import generate
    generate(tmp_path / "shapes", n_train=4, n_val=2, size=32, seed=0)
    cfg = build_config(dict(task="vlm", vision_config="siglip-tiny", mp_pixel_shuffle_factor=4, model_config="llama-tiny",
                            tokenizer_name_or_path=str(TOKENIZER), template="default", dataset="shapes_train",
                            dataset_dir=str(tmp_path / "shapes"), seq_length=128, output_dir=str(tmp_path / "run")))
    task = build_task(cfg)
    kinds = {type(block).__name__ for block in task.recomputed_blocks(task.build_model())}
    assert kinds == {"LlamaDecoderLayer", "SiglipEncoderLayer"}
    assert_same_step(task, first_batch(task))


def test_vae_forward_and_gradients_are_bit_identical():
    torch.manual_seed(0)
    plain = CausalVAE(CausalVAEConfig.from_spec("causal_vae-tiny")).train()
    recomputed = copy.deepcopy(plain)
    assert checkpoint_blocks(repeated_blocks(recomputed)) >= 8
    clip = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    noise = torch.randn(1, *plain.config.latent_shape(5, 16, 16))
    results = []
    for model in (plain, recomputed):
        recon, posterior = model(clip, noise=noise)
        loss = (recon - clip).abs().mean() + 1e-6 * posterior.kl().sum()
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=0, atol=0, msg=name)


def test_every_k_th_block_and_eval_without_recompute():
    blocks = [torch.nn.Linear(4, 4) for _ in range(5)]
    assert checkpoint_blocks(blocks, every=2) == 3  # blocks 0, 2, 4
    assert [b.forward.__name__ for b in blocks] == ["_recomputed_forward", "forward"] * 2 + ["_recomputed_forward"]
    with torch.no_grad():
        assert blocks[0](torch.ones(1, 4)).shape == (1, 4)


def test_a_training_run_is_the_same_with_it(make_config, train, tmp_path):
    runs = [train(make_config(output_dir=str(tmp_path / name), gradient_checkpointing=on, gradient_checkpointing_every=2))
            for name, on in (("off", False), ("on", True))]
    assert curve(tmp_path / "off") == curve(tmp_path / "on")
    for a, b in zip(runs[0].raw.parameters(), runs[1].raw.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_compiled_blocks_recompute_the_same_run(make_config, train, tmp_path):
    """compile traces each block's checkpoint as one region; the run is the eager one."""
    train(make_config(output_dir=str(tmp_path / "eager"), max_steps=3))
    train(make_config(output_dir=str(tmp_path / "compiled"), max_steps=3, compile=True, gradient_checkpointing=True))
    eager, compiled = ([r["loss"] for r in curve(tmp_path / name)] for name in ("eager", "compiled"))
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("written, expected", [(True, False), (False, True), ("false", True)])
def test_llama_factorys_disable_key(make_config, written, expected):
    assert make_config(disable_gradient_checkpointing=written).gradient_checkpointing is expected


# ---- memory -------------------------------------------------------------------------------
def _low_mmap_threshold() -> ctypes.CDLL:
    """glibc with a fixed, low mmap threshold: every tensor above 64 KiB is its own mapping,
    returned to the system when freed, so the resident peak is the tensors alive at once rather
    than what the allocator happened to keep from earlier work."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
    return libc


def _peak_bytes(libc, fn) -> int:
    """Peak resident memory added while fn runs (Linux: VmHWM, reset through clear_refs)."""
    def status(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))
    libc.malloc_trim(0)  # free heap pages back to the system: the base holds only live memory
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak, to the current RSS
    base = status("VmRSS")
    fn()
    return status("VmHWM") - base


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
def test_lm_activation_memory_is_lower(make_config, tmp_path):
    libc = _low_mmap_threshold()
    cfg = make_config(cutoff_len=256)
    task = build_task(cfg)
    torch.manual_seed(0)
    plain = task.build_model()
    for layer in range(6):  # more layers: activations grow with depth, checkpointed ones do not
        plain.model.layers.append(copy.deepcopy(plain.model.layers[0]))
    plain.config.num_hidden_layers = len(plain.model.layers)  # the forward runs this many
    recomputed = copy.deepcopy(plain)
    checkpoint_blocks(task.recomputed_blocks(recomputed))
    ids = torch.randint(0, plain.config.vocab_size, (4, 512))
    batch = {"input_ids": ids, "labels": ids}

    def step(model):
        return lambda: task.training_step(model, batch, 0)["model"].total.backward()
    step(recomputed)(), step(plain)()  # warm up: first-call allocations are not activations
    peaks = {name: _peak_bytes(libc, step(model)) for name, model in (("plain", plain), ("recomputed", recomputed))}
    assert peaks["recomputed"] < 0.5 * peaks["plain"], peaks
