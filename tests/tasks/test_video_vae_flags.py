"""Seed 000's flags as mindone's train_causalvae.py means them: exp_name, amp_level O1/O2,
init_loss_scale, use_ema/ema_start_step, data_file_path/video_column, random_crop, dynamic_sample,
use_discriminator with the reference's alternating steps, eval_lpips."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from ember.config import build_config
from ember.tasks.video_vae.data import VideoClipDataset
from ember.tasks.video_vae.sources import list_sources
from ember.tasks.video_vae.video_io import to_clip_tensor

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
BASE = {"task": "video_vae", "video_path": "v", "model_config": "causal_vae-tiny", "perceptual_weight": 0}


def test_exp_name_is_a_folder_under_output_dir_once():
    cfg = build_config({**BASE, "exp_name": "9x256x256_optimized", "output_dir": "results/causalvae"})
    assert cfg.output_dir == "results/causalvae/9x256x256_optimized" and cfg.run_name == "9x256x256_optimized"
    again = build_config(cfg.to_dict())  # the resolved config.yaml, read back (resume): no second level
    assert again.output_dir == cfg.output_dir


def test_init_loss_scale_drives_fp16_and_is_reported_unused_under_bf16(caplog):
    from ember.config.schema import PrecisionGroup
    from ember.engine.runtime import Precision
    part = lambda **keys: build_config({**BASE, **keys}).part(PrecisionGroup)  # noqa: E731  what the trainer hands it
    fp16 = Precision(part(precision="fp16", init_loss_scale=512), torch.device("cpu"))
    assert fp16.scaler.get_scale() == 512
    with caplog.at_level(logging.WARNING, logger="ember"):
        bf16 = Precision(part(precision="bf16", init_loss_scale=512), torch.device("cpu"))
    assert bf16.scaler is None and "init_loss_scale 512 is unused" in caplog.text


def test_amp_level_o2_carries_activations_in_low_precision_o1_does_not():
    from ember.tasks.video_vae.model import CausalVAE, CausalVAEConfig
    from ember.tasks.video_vae.precision_policy import carry_low_precision
    torch.manual_seed(0)
    vae = CausalVAE(CausalVAEConfig.from_spec("causal_vae-tiny"))
    norms = [m for m in vae.modules() if isinstance(m, nn.GroupNorm)]
    with carry_low_precision(vae, "O1"):
        pass  # the policy's hooks are in place from here; the observer below runs after them
    seen: list[torch.dtype] = []
    hook = norms[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    dtypes = {}
    for level in ("O1", "O2"):
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16), carry_low_precision(vae, level), torch.no_grad():
            vae.encode(x)
        dtypes[level] = seen[0]
    assert dtypes == {"O1": torch.float32, "O2": torch.bfloat16}
    seen.clear()
    with torch.no_grad():  # outside the context the hooks do nothing
        vae.encode(x)
    assert seen[0] == torch.float32
    hook.remove()


def test_discriminator_only_with_use_discriminator_and_steps_alternate_from_disc_start():
    from ember.tasks.video_vae.task import VideoVAETask
    assert build_config(BASE).use_discriminator is False  # mindone's default
    assert VideoVAETask(build_config(BASE)).build_model().discriminator is None
    task = VideoVAETask(build_config({**BASE, "use_discriminator": True, "disc_start": 4, "disc_channels": 4}))
    assert [task.discriminator_step(s) for s in range(8)] == [False] * 5 + [True, False, True]
    batch = {"video": torch.rand(2, 3, 5, 16, 16) * 2 - 1, "index": torch.tensor([0, 1])}
    model = task.build_model()
    assert set(task.training_step(model, batch, 5)) == {"disc"}
    vae_loss = task.training_step(model, batch, 6)
    assert set(vae_loss) == {"vae"} and {"g_loss", "d_weight"} <= set(vae_loss["vae"].metrics)
    assert set(task.training_step(model, batch, 3)["vae"].metrics) == {"rec_loss", "nll_loss", "kl_loss"}


def test_ema_copies_before_ema_start_step_then_averages():
    from ember.tasks.video_vae.task import VideoVAETask
    task = VideoVAETask(build_config({**BASE, "use_ema": True, "ema_decay": 0.5, "ema_start_step": 2}))
    model = task.build_model()
    weight = model.vae.last_layer_weight()
    ema_of = lambda: model.ema.state_for(model.vae)  # noqa: E731
    name = next(k for k, v in model.vae.state_dict().items() if v.data_ptr() == weight.data_ptr())
    task.vae_stepped = True
    with torch.no_grad():
        weight.add_(1.0)
    task.after_optimizer_step(model, 1)  # before ema_start_step: a copy
    assert torch.equal(ema_of()[name], weight)
    before = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    task.after_optimizer_step(model, 2)  # from it: 0.5 · old + 0.5 · new
    assert torch.allclose(ema_of()[name], before + 0.5)
    task.vae_stepped = False  # a discriminator step leaves the EMA alone
    task.after_optimizer_step(model, 3)
    assert torch.allclose(ema_of()[name], before + 0.5)


def test_data_file_path_names_files_under_video_path_by_video_column(tmp_path):
    (tmp_path / "list.csv").write_text("clip,caption\na/x.mp4,one\nb/y.mp4,two\n")
    cfg = build_config({**BASE, "video_path": str(tmp_path / "videos"), "data_file_path": str(tmp_path / "list.csv"),
                        "video_column": "clip"})
    assert cfg.dataset == str(tmp_path / "list.csv")
    files, _ = list_sources(cfg.dataset, cfg.video_path, cfg.video_column)
    assert files == [str(tmp_path / "videos" / "a" / "x.mp4"), str(tmp_path / "videos" / "b" / "y.mp4")]


def test_random_crop_places_the_window_and_dynamic_sample_varies_the_stride():
    frames = np.zeros((2, 20, 40, 3), np.uint8)
    frames[:, :, :20] = 255  # white left half
    left = to_clip_tensor(frames, 20, crop_at=(0.0, 0.0))
    right = to_clip_tensor(frames, 20, crop_at=(1.0, 1.0))
    assert left.min() == 1.0 and right.max() == -1.0
    assert torch.equal(to_clip_tensor(frames, 20), to_clip_tensor(frames, 20, crop_at=None))
    plain = VideoClipDataset([("a.mp4", 200)], 5, 4, 16, seed=0, clips_per_video=40)
    dynamic = VideoClipDataset([("a.mp4", 200)], 5, 4, 16, seed=0, clips_per_video=40, dynamic_sample=True)
    strides = {np.diff(dynamic.frame_indices(i))[0] for i in range(40)}
    assert {np.diff(plain.frame_indices(i))[0] for i in range(40)} == {4}
    assert strides == {1, 2, 3, 4}  # mindone: randint(1, sample_rate) per clip
    assert dynamic.frame_indices(7) == dynamic.frame_indices(7)  # seeded


def _torchvision_layout_alexnet() -> nn.Sequential:
    """torchvision's alexnet().features layout, written out independently."""
    return nn.Sequential(nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2),
                         nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(3, 2))


def test_eval_lpips_reports_lpips_per_frame(tmp_path, monkeypatch):
    from ember.tasks.video_vae.task import VideoVAETask
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)  # a random trunk in torchvision's file format stands in for the ImageNet one
    torch.save({f"features.{k}": v for k, v in _torchvision_layout_alexnet().state_dict().items()},
               tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    task = VideoVAETask(build_config({**BASE, "eval_lpips": True, "num_recon_clips": 0}))
    model = task.build_model().eval()
    with torch.no_grad():
        metrics = task.eval_metrics(model, {"video": torch.rand(1, 3, 5, 64, 64) * 2 - 1})
    assert {"psnr", "ssim", "lpips"} <= set(metrics) and metrics["lpips"] > 0


def test_other_mindone_flags_are_renamed_accepted_or_refused_with_a_reason():
    from ember.config.errors import ConfigError
    from ember.config.loader import load_config
    seed = ["--task", "video_vae", "--video_path", "v", "--model_config", "causal_vae-tiny"]
    cfg = load_config([*seed, "--use_recompute", "True", "--ckpt_max_keep", "3", "--loss_type", "l2",
                       "--log_interval", "5", "--dataset_sink_mode", "False", "--vae_keep_gn_fp32", "True",
                       "--disc_cls", "causalvideovae.model.losses.LPIPSWithDiscriminator3D"])
    assert (cfg.gradient_checkpointing, cfg.save_total_limit, cfg.recon_loss, cfg.logging_steps) == (True, 3, "l2", 5)
    for flags, says in ((["--loss_scaler_type", "static"], "loss_scaler_type.*GradScaler"),
                        (["--use_parallel", "True"], "use_parallel.*nproc_per_node"),
                        (["--vae_keep_gn_fp32", "False"], "vae_keep_gn_fp32.*fp32"),
                        (["--dataset_sink_mode", "True"], "dataset_sink_mode"),
                        (["--loss_type", "l1", "--recon_loss", "l2"], "loss_type.*recon_loss")):
        with pytest.raises(ConfigError, match=says):
            load_config([*seed, *flags])
