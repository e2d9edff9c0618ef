"""Seed 000's command end to end, verbatim but for paths and a CPU-sized model and resolution,
starting from each form its user may hold: (a) an Open-Sora-Plan VAE folder, (b) mindone's
MindSpore .ckpt (the seed's own causal_vae_488_init.ckpt is one), (c) ember's own export of run (a).
Each trains, saves a checkpoint and exports a folder Open-Sora-Plan's from_pretrained reads."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ember.cli import main
from ember.models import CausalVAE
from ember.tasks.video_vae.synth import write_demo_videos

FIXTURES = Path(__file__).parents[1] / "fixtures" / "causalvae"
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def seed_command(videos: Path, output_dir: Path, start_from: Path, frames: str) -> list[str]:
    return ["train", "--task", "video_vae",
            "--exp_name", "9x32x32_optimized", "--batch_size", "2", "--precision", "bf16", "--amp_level", "O2",
            "--max_steps", "2", "--save_steps", "2", "--output_dir", str(output_dir), "--video_path", str(videos),
            "--video_num_frames", frames, "--resolution", "32", "--sample_rate", "1", "--dataloader_num_workers", "0",
            "--load_from_checkpoint", str(start_from), "--start_learning_rate", "3e-5", "--lr_scheduler", "cosine",
            "--optim", "adamw", "--betas", "0.9", "0.999", "--clip_grad", "True", "--weight_decay", "0.01",
            "--mode", "0", "--init_loss_scale", "512", "--jit_level", "O1",
            # scaled to a CPU: the fixture's tiny Open-Sora-Plan config, no LPIPS network to download,
            # eager (compiling costs minutes here; tests/tasks/test_video_vae.py runs mode 0 compiled)
            "--mode", "1",
            "--model_config", str(FIXTURES / "tiny_config.json"), "--perceptual_weight", "0",
            "--disable_tqdm", "true", "--logging_steps", "1"]


@pytest.mark.slow
def test_seed_command_from_reference_folder_mindspore_ckpt_and_own_export(tmp_path):
    videos = tmp_path / "videos"
    write_demo_videos(videos, 2, num_frames=16, size=32, seed=0)
    reference_folder = tmp_path / "osp_vae"
    reference_folder.mkdir()
    shutil.copy(FIXTURES / "tiny_config.json", reference_folder / "config.json")
    shutil.copy(FIXTURES / "tiny_model.safetensors", reference_folder / "diffusion_pytorch_model.safetensors")
    reference = load_file(str(FIXTURES / "tiny_model.safetensors"))

    # the seed's 16 frames once (13 are used: 1 + 4k); 9 frames for the other two, to save time
    runs = {"a": (reference_folder, "16"), "b": (FIXTURES / "tiny_model_mindspore.ckpt", "9")}
    for name, (start_from, frames) in runs.items():
        out = tmp_path / f"run_{name}"
        assert main(seed_command(videos, out, start_from, frames)) == 0
        run = out / "9x32x32_optimized"
        assert (run / "checkpoint-2" / "COMPLETE").is_file()
        exported = CausalVAE.from_pretrained(run)  # config.json + diffusion_pytorch_model.safetensors
        # trained from the reference weights: near them (2 steps at lr 3e-5), not a fresh random model
        drift = max((exported.state_dict()[k] - v).abs().max().item() for k, v in reference.items())
        assert 0 < drift < 0.01
        # the run's last checkpoint folder holds the same VAE (its config from the run's config.yaml)
        from_checkpoint = CausalVAE.from_pretrained(run / "checkpoint-2").state_dict()
        assert all(torch.equal(from_checkpoint[k], v) for k, v in exported.state_dict().items())

    # (c) ember's own export of run (a) is a starting point too
    out = tmp_path / "run_c"
    assert main(seed_command(videos, out, tmp_path / "run_a" / "9x32x32_optimized", "9")) == 0
    assert (out / "9x32x32_optimized" / "checkpoint-2" / "COMPLETE").is_file()
    start = CausalVAE.from_pretrained(tmp_path / "run_a" / "9x32x32_optimized")
    after = CausalVAE.from_pretrained(out / "9x32x32_optimized")
    assert 0 < max((after.state_dict()[k] - v).abs().max().item() for k, v in start.state_dict().items()) < 0.01
    assert torch.isfinite(after.decoder.conv_out.conv.weight).all()
