"""Keys of task video_vae (seed 000's train_causalvae.py flags).

mode and jit_level are MindSpore-style flags of the seed (its amp_level applies to every task,
so it lives with the precision keys in config/schema.py); each maps onto a PyTorch policy:

  mode       0  compiled graph: torch.compile the VAE (falls back to eager, with a notice, where
                compilation does not run, e.g. without a C++ compiler)
             1  eager PyTorch (the default: compiling costs minutes on a CPU)
  jit_level  O0 no compilation even in mode 0; O1 torch.compile default; O2 mode="max-autotune"
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...config.schema_base import Group


class VideoGroup(Group):
    """Video VAE (task video_vae)"""
    video_path: str | None = Field(None, description="folder of videos (mp4/avi/webm/mkv/mov, searched recursively; images count as one-frame clips) or a .csv/.json list of files")
    video_num_frames: int = Field(17, gt=0, description="frames per clip; the VAE takes 1 + 4k, so others are cut down to the nearest 1 + 4k")
    resolution: int = Field(256, gt=7, description="clips are resized on the short side and centre-cropped to resolution × resolution")
    sample_rate: int = Field(1, gt=0, description="take every sample_rate-th frame (1 = consecutive frames)")
    clips_per_video: int = Field(1, gt=0, description="clips drawn from each video per epoch, each from its own seeded random start")
    short_videos: Literal["skip", "pad"] = Field("skip", description="videos too short for a clip even at sample_rate 1: skip them (counted and named at start) or repeat their last frame")
    kl_weight: float = Field(1e-6, ge=0, description="weight of the KL term")
    recon_loss: Literal["l1", "l2"] = Field("l1", description="reconstruction loss")
    perceptual_weight: float = Field(0.0, ge=0, description="weight of an LPIPS perceptual loss; needs perceptual_weights (none can be downloaded here)")
    perceptual_weights: str | None = Field(None, description="LPIPS weights file for perceptual_weight > 0")
    disc_start: int = Field(5000, description="step from which the GAN loss and the discriminator train; < 0 = no discriminator")
    disc_weight: float = Field(0.5, ge=0, description="scale of the adaptive GAN weight")
    disc_loss: Literal["hinge", "vanilla"] = Field("hinge", description="discriminator loss")
    disc_learning_rate: float | None = Field(None, gt=0, description="discriminator learning rate (default: learning_rate)")
    disc_channels: int = Field(64, gt=0, description="width of the 3D PatchGAN discriminator's first layer")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of the VAE weights used for evaluation and export; 0 = off")
    num_recon_clips: int = Field(2, ge=0, description="validation clips written as mp4 and PNG strips at each evaluation")
    mode: Literal[0, 1] = Field(1, description="0 = compiled graph (torch.compile), 1 = eager")
    jit_level: Literal["O0", "O1", "O2"] = Field("O1", description="with mode 0: O0 no compile, O1 default, O2 max-autotune")

    @model_validator(mode="before")
    @classmethod
    def _video_task_defaults(cls, raw):
        """For task video_vae the seed's flags stand in for the generic keys: video_path is the
        dataset, and the model is the seed's causal_vae-488 unless model_config says otherwise."""
        if isinstance(raw, dict) and raw.get("task") == "video_vae":
            if raw.get("dataset") is None and raw.get("video_path") is not None:
                raw = {**raw, "dataset": raw["video_path"]}
            if raw.get("model_config") is None and raw.get("model_config_") is None:
                raw = {**raw, "model_config": "causal_vae-488"}
        return raw
