"""Other flags of mindone's train_causalvae.py (seed 000) and its commons.py parser that seed users
pass, beyond the ones ember declares (tasks/video_vae/keys.py) or spells as aliases.

Each one is read as what it means there: renamed to ember's key, accepted where its value is what
ember does anyway, or refused with one line naming what to do instead (never silently ignored).
"""
from __future__ import annotations

from typing import Any

from .errors import ConfigError

# mindone flag -> ember key with the same meaning
RENAMED = {
    "loss_type": "recon_loss",            # Open-Sora-Plan's name of the reconstruction loss
    "use_recompute": "gradient_checkpointing",
    "ckpt_max_keep": "save_total_limit",
    "log_interval": "logging_steps",
    "gen_wd": "weight_decay",             # the generator's (VAE's) weight decay
    "train_batch_size": "per_device_train_batch_size",
    "val_batch_size": "per_device_eval_batch_size",
}

# mindone flag -> (the value ember always has, what to do for another value)
FIXED = {
    "dataset_sink_mode": (False, "MindSpore's data sinking has no PyTorch counterpart; leave it false"),
    "use_parallel": (None, "ember starts several processes from the launch: --nproc_per_node N (or torchrun)"),
    "loss_scaler_type": ("dynamic", "only fp16 scales the loss, dynamically (GradScaler); no static scaler"),
    "drop_overflow_update": (True, "fp16 steps whose gradients overflow are always skipped (GradScaler)"),
    "vae_keep_gn_fp32": (True, "the VAE's norms always compute in fp32 (amp_level O1/O2)"),
    "print_losses": (None, None),         # ember logs every loss term anyway
    "save_training_resume": (True, "every ember checkpoint resumes the run; save_only_model: true keeps weights only"),
    "step_mode": (None, None),            # save_steps decides, as in mindone when save_steps is given
    "disc_cls": ("LPIPSWithDiscriminator3D", "ember trains Open-Sora-Plan's LPIPSWithDiscriminator3D only"),
}


def _truthy(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


def take_mindone_keys(raw: dict) -> dict:
    """One source with mindone's other flags renamed, or checked and dropped."""
    out = dict(raw)
    for flag, key in RENAMED.items():
        if flag in out:
            value = out.pop(flag)
            if key in raw and raw[key] != value:
                raise ConfigError(f"{flag} ({value!r}) and {key} ({raw[key]!r}) say different things; {flag} is "
                                  f"mindone's name of {key}: give one")
            out[key] = value
    for flag, (always, otherwise) in FIXED.items():
        if flag not in out:
            continue
        value = _truthy(out.pop(flag))
        if always is None or otherwise is None:
            continue
        same = str(value).endswith(always) if isinstance(always, str) else value == always
        if not same:
            raise ConfigError(f"{flag}: {value!r} is not supported: {otherwise}")
    if "use_parallel" in raw and _truthy(raw["use_parallel"]) is True and "nproc_per_node" not in raw:
        raise ConfigError("use_parallel: ember starts several processes from the launch: --nproc_per_node N "
                          "(or torchrun); without it the run uses one process")
    return out
