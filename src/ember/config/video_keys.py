"""Keys of task video_vae (seed 000's train_causalvae.py flags)."""
from __future__ import annotations

from pydantic import Field  # noqa: F401  (used as fields are added)

from .schema_base import Group


class VideoGroup(Group):
    """Video VAE (task video_vae)"""
