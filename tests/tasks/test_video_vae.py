"""Task video_vae end to end: seed 000's command line scaled down, the GAN and EMA path, export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ember.cli import main
from ember.config import build_config
from ember.config.errors import ConfigError
from ember.tasks.video_vae.model import CausalVAE
from ember.tasks.video_vae.synth import bouncing_shapes, write_demo_videos
from ember.tasks.video_vae.video_io import write_video

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """mp4 (libx264) and avi (mpeg4) made by PyAV, plus one corrupt file; a separate val folder."""
    root = tmp_path_factory.mktemp("clips")
    write_demo_videos(root / "train", 3, num_frames=12, size=40, seed=0, codec="libx264", suffix=".mp4")
    write_demo_videos(root / "train", 2, num_frames=12, size=40, seed=1, codec="mpeg4", suffix=".avi")
    (root / "train" / "broken.avi").write_bytes(b"RIFF" + b"\x00" * 300)
    write_video(root / "val.mp4", bouncing_shapes(9, 32, np.random.default_rng(5)))
    return root


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_seed_command_scaled_down_runs_and_saves_every_save_steps(videos, tmp_path, caplog):
    out = tmp_path / "results" / "causalvae"
    argv = ["train", "--task", "video_vae", "--exp_name", "9x32x32_optimized", "--batch_size", "2",
            "--precision", "bf16", "--amp_level", "O2", "--max_steps", "4", "--save_steps", "2",
            "--output_dir", str(out), "--video_path", str(videos / "train"), "--video_num_frames", "6",
            "--resolution", "32", "--sample_rate", "1", "--dataloader_num_workers", "0",
            "--start_learning_rate", "3e-5", "--lr_scheduler", "cosine", "--optim", "adamw",
            "--betas", "0.9", "0.999", "--clip_grad", "True", "--weight_decay", "0.01", "--mode", "0",
            "--init_loss_scale", "512", "--jit_level", "O1",
            # scaled to this machine: the tiny preset instead of the seed's full-size model
            "--model_config", "causal_vae-tiny", "--disable_tqdm", "true", "--logging_steps", "1",
            # no VGG16 weights offline for the reference's LPIPS term
            "--perceptual_weight", "0"]
    assert main(argv) == 0
    out = out / "9x32x32_optimized"  # mindone's exp_name: a folder under output_dir
    assert (out / "checkpoint-2" / "COMPLETE").is_file() and (out / "checkpoint-4" / "COMPLETE").is_file()
    assert "broken.avi" in caplog.text  # the corrupt file is named, and training went on
    assert "init_loss_scale 512 is unused" in caplog.text  # bf16 scales no loss
    config = (out / "config.yaml").read_text()
    assert "run_name: 9x32x32_optimized" in config and "bf16: true" in config
    assert len([m for m in metrics(out) if "loss" in m]) == 4
    assert CausalVAE.from_pretrained(out).config.hidden_size == 32  # the export is Open-Sora-Plan's folder
    # the seed's --load_from_checkpoint starts a new run from those weights
    again = tmp_path / "again"
    assert main(["train", "--task", "video_vae", "--model_config", "causal_vae-tiny", "--video_path",
                 str(videos / "train"), "--video_num_frames", "5", "--resolution", "16", "--max_steps", "1",
                 "--batch_size", "2", "--save_steps", "0", "--output_dir", str(again), "--disable_tqdm", "true",
                 "--perceptual_weight", "0",
                 "--load_from_checkpoint", str(out / "checkpoint-4")]) == 0


@pytest.mark.slow
def test_gan_ema_evaluation_and_reconstructions(videos, tmp_path):
    out = tmp_path / "gan"
    assert main(["train", "--task", "video_vae", "--model_config", "causal_vae-tiny",
                 "--video_path", str(videos / "train"), "--eval_dataset", str(videos / "val.mp4").rsplit("/", 1)[0],
                 "--video_num_frames", "5", "--resolution", "16", "--batch_size", "2", "--max_steps", "3",
                 "--use_discriminator", "true", "--disc_start", "1", "--disc_channels", "8", "--disc_loss", "vanilla",
                 "--use_ema", "true", "--ema_decay", "0.5", "--perceptual_weight", "0",
                 "--eval_steps", "3", "--save_steps", "3", "--logging_steps", "1", "--learning_rate", "1e-3",
                 "--output_dir", str(out), "--disable_tqdm", "true"]) == 0
    rows = metrics(out)
    # from disc_start the steps alternate as in the reference: odd ones train the discriminator alone,
    # even ones the VAE with the GAN term (d_weight, g_loss logged)
    assert "loss_disc" not in rows[0] and "d_weight" not in rows[0] and "loss" in rows[0]
    assert "loss_disc" in rows[1] and "loss" not in rows[1]
    assert "loss" in rows[2] and "d_weight" in rows[2] and "loss_disc" not in rows[2]
    final = rows[-1]
    assert {"psnr", "ssim", "ema_psnr", "ema_ssim", "eval_loss"} <= set(final)
    assert (out / "reconstructions" / "step-000003.png").is_file()
    assert (out / "reconstructions" / "step-000003-clip0.mp4").stat().st_size > 0
    from safetensors.torch import load_file
    saved = load_file(str(out / "checkpoint-3" / "model.safetensors"))
    assert any(k.startswith("ema.") for k in saved) and any(k.startswith("discriminator.") for k in saved)
    exported = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    ema_weight = saved["ema.decoder__conv_out__conv__weight"]
    assert torch.equal(exported["decoder.conv_out.conv.weight"], ema_weight)  # export uses the EMA


def test_amp_level_and_mode_map_to_precision_policies():
    base = {"task": "video_vae", "video_path": "v", "model_config": "causal_vae-tiny", "precision": "bf16"}
    assert build_config({**base, "amp_level": "O2"}).bf16
    o3 = build_config({**base, "amp_level": "O3"})
    assert o3.pure_bf16 and not o3.bf16
    o0 = build_config({**base, "amp_level": "O0"})
    assert not (o0.bf16 or o0.fp16 or o0.pure_bf16)
    assert build_config({"task": "video_vae", "video_path": "v"}).model_config_ == "causal_vae-488"
    with pytest.raises(ConfigError, match="jit_level"):
        build_config({**base, "jit_level": "O3"})


def test_perceptual_loss_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    from ember.tasks.video_vae.task import VideoVAETask
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no VGG16 in the torch hub cache
    cfg = build_config({"task": "video_vae", "video_path": "v", "model_config": "causal_vae-tiny",
                        "perceptual_weight": 0.1})
    with pytest.raises(ConfigError, match="LPIPS"):
        VideoVAETask(cfg)


def test_fsdp_is_refused_with_the_strategy_that_works():
    from ember.tasks.video_vae.task import VideoVAETask
    cfg = build_config({"task": "video_vae", "video_path": "v", "model_config": "causal_vae-tiny",
                        "distributed_strategy": "fsdp"})
    with pytest.raises(ConfigError, match="fsdp.*use ddp"):
        VideoVAETask(cfg)
    VideoVAETask(build_config({"task": "video_vae", "video_path": "v", "model_config": "causal_vae-tiny",
                              "perceptual_weight": 0}))
