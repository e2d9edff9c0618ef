"""The paths only a GPU takes: batch copies on a side stream, fp16 loss scaling, bf16 autocast,
compile (with and without gradient_checkpointing), packed SFT through the GPU's attention mask.

Marked `cuda`: skipped without a GPU (tests/conftest.py), run by bench/gpu_check.sh on one.
Each compares a GPU run with what is known to be right (the CPU, fp32, eager, unpacked), to the
tolerance the GPU's arithmetic allows.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import read_metrics

pytestmark = pytest.mark.cuda
DEMO = Path(__file__).resolve().parents[2] / "examples" / "data"


def losses(output_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(output_dir) if "loss" in r]


def test_side_stream_copies_arrive_whole_and_in_order():
    from ember.engine.step import window_to_device
    window = [{"x": torch.full((256, 1024), float(i)).pin_memory()} for i in range(4)]
    seen = []
    for batch, ready in window_to_device(window, torch.device("cuda")):
        torch.cuda.current_stream().wait_event(ready)  # what the step does before its forward
        seen.append(batch["x"].mean().item())
    assert seen == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_gpu_run_follows_the_cpu_run(make_config, train, tmp_path, precision):
    """fp32 on the GPU is the CPU run up to kernel rounding; bf16 and fp16 (GradScaler) stay
    within low-precision distance of it and the scaler skips no step on this healthy run."""
    cpu = train(make_config(device="cpu", output_dir=str(tmp_path / "cpu")))
    keys = {"bf16": {"bf16": True}, "fp16": {"fp16": True}, "fp32": {}}[precision]
    gpu = train(make_config(device="cuda", output_dir=str(tmp_path / "gpu"), **keys))
    tolerance = 1e-4 if precision == "fp32" else 3e-2
    torch.testing.assert_close(losses(tmp_path / "gpu"), losses(tmp_path / "cpu"), rtol=tolerance, atol=tolerance)
    if precision == "fp16":
        assert gpu.precision.scaler is not None and gpu.precision.skipped_steps == 0
    assert cpu.precision.scaler is None


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compile_matches_eager(make_config, train, tmp_path, checkpointing):
    common = dict(device="cuda", bf16=True, gradient_checkpointing=checkpointing)
    train(make_config(output_dir=str(tmp_path / "eager"), **common))
    train(make_config(output_dir=str(tmp_path / "compiled"), compile=True, **common))
    torch.testing.assert_close(losses(tmp_path / "compiled"), losses(tmp_path / "eager"), rtol=2e-2, atol=2e-2)


def test_checkpointing_on_the_gpu_is_the_same_run(make_config, train, tmp_path):
    for name, on in (("off", False), ("on", True)):
        train(make_config(device="cuda", output_dir=str(tmp_path / name), gradient_checkpointing=on))
    torch.testing.assert_close(losses(tmp_path / "on"), losses(tmp_path / "off"), rtol=1e-6, atol=1e-6)


def test_packed_sft_on_the_gpu_mask_path_matches_the_cpu(tiny_model_dir, train, tmp_path):
    """On a GPU, packed rows are isolated by transformers' mask from position_ids (not ember's
    CPU splitting); the losses must be the CPU's."""
    from ember.config import build_config

    def run(device):
        return train(build_config(dict(
            model_name_or_path=str(tiny_model_dir), stage="sft", template="default", packing=True,
            dataset="pydoc_alpaca", dataset_dir=str(DEMO), max_samples=24, cutoff_len=256,
            per_device_train_batch_size=2, learning_rate=1e-3, max_steps=3, logging_steps=1, save_steps=0,
            device=device, output_dir=str(tmp_path / device), disable_tqdm=True)))
    run("cpu"), run("cuda")
    torch.testing.assert_close(losses(tmp_path / "cuda"), losses(tmp_path / "cpu"), rtol=1e-4, atol=1e-4)
