"""Task registry: the config's `task` key → the class that builds model and data for it."""
from __future__ import annotations

from importlib import import_module

from ..config.errors import ConfigError

TASKS = {"causal_lm": ("ember.tasks.causal_lm", "CausalLMTask"),
         "vlm": ("ember.tasks.vlm", "VLMTask"),
         "video_vae": ("ember.tasks.video_vae", "VideoVAETask")}


def build_task(cfg):
    if cfg.task not in TASKS:
        raise ConfigError(f"task '{cfg.task}' is not available yet in this version of ember; "
                          f"available: {', '.join(TASKS)}")
    module, name = TASKS[cfg.task]
    return getattr(import_module(module), name)(cfg)
