"""Keys of task video_vae (seed 000: mindone's opensora_pku train_causalvae.py flags, and the loss
of Open-Sora-Plan's LPIPSWithDiscriminator3D with the defaults of both scripts' parsers).

mode and jit_level are MindSpore-style flags of the seed (its amp_level applies to every task,
so it lives with the precision keys in config/schema.py); each maps onto a PyTorch policy:

  mode       0  compiled graph: torch.compile the VAE (falls back to eager, with a notice, where
                compilation does not run, e.g. without a C++ compiler)
             1  eager PyTorch (the default: compiling costs minutes on a CPU)
  jit_level  O0 no compilation even in mode 0; O1 torch.compile default; O2 mode="max-autotune"

Defaults that changed to the reference's (issue 19): perceptual_weight 1.0 (was 0), disc_start 5
(was 5000), ema_decay 0.999 with use_ema turning the EMA on (was ema_decay 0 = off), and the
discriminator only with use_discriminator (mindone's default: off).
"""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from ...config.schema_base import Group


class VideoGroup(Group):
    """Video VAE (task video_vae)"""
    video_path: str | None = Field(None, description="folder of videos (mp4/avi/webm/mkv/mov, searched recursively; images count as one-frame clips) or a .csv/.json list of files")
    data_file_path: str | None = Field(None, description="a .csv/.json/.jsonl list of the training videos (mindone's flag): the column video_column names each file, relative to video_path")
    video_column: str = Field("video", description="with data_file_path: the column that holds each video's path")
    video_num_frames: int = Field(17, gt=0, description="frames per clip; the VAE takes 1 + 4k, so others are cut down to the nearest 1 + 4k")
    resolution: int = Field(256, gt=7, description="clips are resized on the short side and cropped to resolution × resolution")
    random_crop: bool = Field(False, description="crop each training clip at a seeded random place instead of the centre (validation stays centred)")
    sample_rate: int = Field(1, gt=0, description="take every sample_rate-th frame (1 = consecutive frames)")
    dynamic_sample: bool = Field(False, description="each training clip takes a seeded random frame stride in 1..sample_rate (mindone's dynamic_sample)")
    clips_per_video: int = Field(1, gt=0, description="clips drawn from each video per epoch, each from its own seeded random start")
    short_videos: Literal["skip", "pad"] = Field("skip", description="videos too short for a clip even at sample_rate 1: skip them (counted and named at start) or repeat their last frame")
    kl_weight: float = Field(1e-6, ge=0, description="weight of the KL term (summed over a clip's latent values)")
    recon_loss: Literal["l1", "l2"] = Field("l1", description="reconstruction loss (Open-Sora-Plan's loss_type)")
    logvar_init: float = Field(0.0, description="initial value of the loss's log-variance scalar (nll = rec / exp(logvar) + logvar; not trained, as in the reference)")
    perceptual_weight: float = Field(1.0, ge=0, description="weight of the LPIPS (VGG16) term; needs the lpips package and VGG16 weights (perceptual_weights or torchvision's cache); 0 = off")
    perceptual_weights: str | None = Field(None, description="torchvision's VGG16 ImageNet weights file (vgg16-397923af.pth) for LPIPS (default: looked up in the torch hub cache)")
    use_discriminator: bool = Field(False, description="train the 3D PatchGAN discriminator and add its generator term from disc_start (mindone's default: off)")
    disc_start: int = Field(5, ge=0, description="step from which the GAN term counts and the discriminator trains (on odd steps; the VAE on even ones)")
    disc_weight: float = Field(0.5, ge=0, description="scale of the adaptive GAN weight; 0 = no discriminator")
    disc_loss: Literal["hinge", "vanilla"] = Field("hinge", description="discriminator loss")
    disc_learning_rate: float | None = Field(None, gt=0, description="discriminator learning rate (default: learning_rate)")
    disc_channels: int = Field(64, gt=0, description="width of the discriminator's first layer (the reference's ndf)")
    wavelet_weight: float = Field(0.1, ge=0, description="weight of the reference's wavelet term; CausalVAE gives no wavelet coefficients, so the term is 0 there and here")
    wavelet_loss: bool = Field(False, description="the reference's wavelet-loss switch; no effect with CausalVAE (see wavelet_weight)")
    use_ema: bool = Field(False, description="keep an EMA of the VAE weights, used for evaluation (ema_* metrics) and export")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="decay of the EMA (with use_ema)")
    ema_start_step: int = Field(0, ge=0, description="with use_ema: before this step the EMA copies the weights; from it on, it averages them")
    eval_lpips: bool = Field(False, description="evaluation also reports lpips (AlexNet LPIPS per frame, as the reference's eval script); needs torchvision's alexnet weights (eval_lpips_weights or its cache)")
    eval_lpips_weights: str | None = Field(None, description="torchvision's AlexNet ImageNet weights file for eval_lpips (default: looked up in the torch hub cache)")
    num_recon_clips: int = Field(2, ge=0, description="validation clips written as mp4 and PNG strips at each evaluation")
    exp_name: str | None = Field(None, description="experiment name (mindone): the run writes to output_dir/exp_name and is named exp_name")
    mode: Literal[0, 1] = Field(1, description="0 = compiled graph (torch.compile), 1 = eager")
    jit_level: Literal["O0", "O1", "O2"] = Field("O1", description="with mode 0: O0 no compile, O1 default, O2 max-autotune")

    @model_validator(mode="before")
    @classmethod
    def _video_task_defaults(cls, raw):
        """For task video_vae the seed's flags stand in for the generic keys: video_path (or
        data_file_path) is the dataset, the model is the seed's causal_vae-488 unless model_config
        says otherwise, and exp_name is a folder under output_dir, as mindone makes it. exp_name is
        then spent (the resolved config holds the joined output_dir), so reloading it does not nest."""
        if isinstance(raw, dict) and raw.get("task") != "video_vae" and "exp_name" in raw:
            raw = {k: v for k, v in raw.items() if k != "exp_name"}  # elsewhere exp_name is run_name alone
        if isinstance(raw, dict) and raw.get("task") == "video_vae":
            if raw.get("dataset") is None and (raw.get("data_file_path") or raw.get("video_path")) is not None:
                raw = {**raw, "dataset": raw.get("data_file_path") or raw["video_path"]}
            if raw.get("model_config") is None and raw.get("model_config_") is None:
                raw = {**raw, "model_config": "causal_vae-488"}
            if raw.get("exp_name"):
                base = raw.get("output_dir") or cls.model_fields["output_dir"].default
                raw = {**raw, "output_dir": os.path.join(str(base), str(raw["exp_name"])), "exp_name": None,
                       "run_name": raw.get("run_name") or raw["exp_name"]}
        return raw
