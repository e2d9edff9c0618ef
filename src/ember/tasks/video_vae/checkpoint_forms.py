"""Every form a CausalVAE's weights come in, read into one shape (VAEWeights, Open-Sora-Plan names):

- an Open-Sora-Plan VAE folder: config.json + diffusion_pytorch_model.safetensors (or .bin), which
  is also what ember exports; or config.json + a training .ckpt (its VideoBaseAE.from_pretrained);
- an Open-Sora-Plan training checkpoint (.ckpt/.pt): {"state_dict": {"gen_model", "dics_model"},
  "ema_state_dict", ...}, or a Lightning-style flat one whose loss sits under "loss.";
- a bare state dict (.safetensors, .ckpt, .pt, .pth, .bin);
- a MindSpore .ckpt from mindone (mindspore_ckpt.py);
- an ember checkpoint folder (checkpoint-<step>/model.safetensors, the task model's names).

Torch files are read with weights_only=True. Names the VAE does not have, or shapes that differ,
stop the load with one line naming the first few: never a partial load.
"""
from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from ...config.errors import ConfigError, first_line
from ...engine.checkpoint.weights import load_torch_object
from .mindspore_ckpt import is_mindspore_checkpoint, read_mindspore_checkpoint

log = logging.getLogger("ember")

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
#: training state beside the weights in a MindSpore or torch training checkpoint: not weights
TRAINING_STATE_PREFIXES = ("adam_m.", "adam_v.", "moment1.", "moment2.", "accum.", "global_step", "learning_rate",
                           "beta1_power", "beta2_power", "scale_sense", "loss_scale", "current_iterator_step",
                           "last_overflow_iterator_step", "epoch_num", "step_num")


@dataclass
class VAEWeights:
    vae: dict[str, torch.Tensor]                         # CausalVAEModel's names
    discriminator: dict[str, torch.Tensor] = field(default_factory=dict)  # NLayerDiscriminator3D's names
    logvar: torch.Tensor | None = None                   # the loss's log-variance scalar
    ema: dict[str, torch.Tensor] | None = None           # averaged VAE weights, CausalVAEModel's names
    skipped: list[str] = field(default_factory=list)     # perceptual network, optimizer state


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


def split_flat(tensors: dict[str, torch.Tensor], into: VAEWeights | None = None) -> VAEWeights:
    """A flat dict whose names may carry the loss ("loss.discriminator.", "loss.logvar"), a wrapper
    ("module."), ember's "vae." or a training state, sorted into a VAEWeights."""
    out = into or VAEWeights(vae={})
    for name, value in tensors.items():
        name = _strip(_strip(name, "module."), "vae.")
        bare = _strip(name, "loss.")
        if bare.startswith("discriminator."):
            out.discriminator[bare[len("discriminator."):]] = value
        elif bare == "logvar":
            out.logvar = value
        elif name.startswith("loss.") or bare.startswith(("perceptual_loss.", "lpips.")) \
                or name.startswith(TRAINING_STATE_PREFIXES):
            out.skipped.append(name)
        else:
            out.vae[name] = value
    return out


def _tensors_only(obj: dict, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path}: {what} is not a state dict of tensors")
    return obj


def _from_torch_object(obj, path: Path) -> VAEWeights:
    """An Open-Sora-Plan training checkpoint, a wrapped state dict or a bare one."""
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} does not hold a state dict")
    for key in ("model", "module"):  # trainer-style wrappers around everything else
        if isinstance(obj.get(key), dict) and "state_dict" not in obj:
            obj = obj[key]
    inner = obj.get("state_dict", obj)
    if isinstance(inner, dict) and isinstance(inner.get("gen_model"), dict):
        out = split_flat(_tensors_only(inner["gen_model"], path, "gen_model"))
        if isinstance(inner.get("dics_model"), dict):  # the loss module: discriminator, logvar, LPIPS
            split_flat({f"loss.{k}": v for k, v in _tensors_only(inner["dics_model"], path, "dics_model").items()}, out)
    else:
        out = split_flat(_tensors_only(inner, path, "its state dict"))
    ema = obj.get("ema_state_dict")
    if isinstance(ema, dict) and ema:
        # as the reference's init_from_ckpt does, the averaged weights are the model's when present
        out.ema = split_flat(_tensors_only(ema, path, "ema_state_dict")).vae
        log.info("%s: using its EMA weights (ema_state_dict) as the VAE's", path)
        out.vae = {**out.vae, **out.ema}
    return out


def _torch_file(path: Path) -> VAEWeights:
    return _from_torch_object(load_torch_object(path), path)


def _weights_file(path: Path) -> VAEWeights:
    if path.suffix == ".safetensors":
        try:
            return split_flat(load_file(str(path)))
        except Exception as err:
            raise ConfigError(f"cannot read {path}: {first_line(err)}") from None
    if path.suffix not in TORCH_SUFFIXES:
        raise ConfigError(f"{path}: unknown weights format '{path.suffix}' (a folder, .safetensors, "
                          f"or {', '.join(TORCH_SUFFIXES)}, which may also be a MindSpore .ckpt)")
    if not zipfile.is_zipfile(path) and is_mindspore_checkpoint(path):
        return split_flat(read_mindspore_checkpoint(path))
    return _torch_file(path)


def _ember_checkpoint(folder: Path) -> VAEWeights:
    """checkpoint-<step>/model.safetensors: the task model's names (vae., discriminator., ema.)."""
    try:
        tensors = load_file(str(folder / "model.safetensors"))
    except Exception as err:
        raise ConfigError(f"cannot read {folder / 'model.safetensors'}: {first_line(err)}") from None
    ema = {k[len("ema."):].replace("__", "."): v for k, v in tensors.items() if k.startswith("ema.")}
    out = split_flat({k: v for k, v in tensors.items() if not k.startswith("ema.")})
    out.ema = ema or None
    return out


def read_vae_weights(source: str | Path) -> VAEWeights:
    path = Path(source)
    if path.is_file():
        return _weights_file(path)
    if not path.is_dir():
        raise ConfigError(f"no file or folder at {path}")
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (path / name).is_file():
            return _weights_file(path / name)
    if (path / "model.safetensors").is_file():
        return _ember_checkpoint(path)
    ckpts = sorted(path.glob("*.ckpt"))
    if ckpts:  # the reference's from_pretrained: config.json + a training checkpoint, the last one
        return _weights_file(ckpts[-1])
    raise ConfigError(f"{path} holds no CausalVAE weights (diffusion_pytorch_model.safetensors or .bin, "
                      "model.safetensors of an ember checkpoint, or a .ckpt)")


def config_for(source: str | Path) -> str:
    """The config spec a source's weights belong to: its own config.json, the run's model_config
    for an ember checkpoint folder, a config.json beside a file, else the 488 preset."""
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    if (folder / "config.json").is_file():
        return str(folder / "config.json")
    run_config = folder.parent / "config.yaml"
    if path.is_dir() and run_config.is_file():
        import yaml
        try:
            spec = (yaml.safe_load(run_config.read_text()) or {}).get("model_config")
        except (yaml.YAMLError, AttributeError):
            spec = None  # not a run's config: fall back to the seed's size
        if spec:
            return str(spec)
    return "causal_vae-488"


def mismatches(own: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> str:
    """'' when names and shapes are the same, else what differs, the first few of each kind."""
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    wrong = [f"{k} {list(tensors[k].shape)} vs {list(own[k].shape)}" for k in tensors
             if k in own and tensors[k].shape != own[k].shape]
    parts = [f"{len(names)} {what}: {', '.join(names[:3])}{', …' if len(names) > 3 else ''}"
             for names, what in ((missing, "missing"), (unexpected, "unknown"), (wrong, "of another shape")) if names]
    return "; ".join(parts)


def strict_load(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str, check_only: bool = False) -> None:
    """Every name and shape the same, or one line naming what differs (check_only: names and shapes alone, e.g. of a model on the meta device)."""
    problems = mismatches(module.state_dict(), tensors)
    if problems:
        raise ConfigError(f"the VAE weights in {source} do not fit the model ({problems})")
    if not check_only:
        module.load_state_dict(tensors)


def task_model_tensors(model: torch.nn.Module, source: str, ignore_mismatched_sizes: bool = False) -> dict:
    """The weights at `source` under the names of the task's model (VideoVAEModel: vae., logvar,
    discriminator., ema.) for the engine's load: the VAE's are required whole; a checkpoint's
    discriminator and loss logvar are taken when the model has them, else the model's fresh ones
    stay; the EMA starts from the checkpoint's averages, or else from the loaded VAE."""
    from .ema import _buffer_name
    weights = read_vae_weights(source)
    if not ignore_mismatched_sizes:  # else the engine loads what fits and names the rest
        problems = mismatches(model.vae.state_dict(), weights.vae)
        if problems:
            own_config = config_for(source)
            hint = (f"; set model_config: {own_config} (the config.json beside the weights)"
                    if own_config.endswith("config.json") else
                    "; model_config must describe the network the weights were trained as (a preset or its config.json)")
            raise ConfigError(f"the VAE weights in {source} do not fit the model ({problems}){hint}")
    tensors = {f"vae.{k}": v for k, v in weights.vae.items()}
    own = model.state_dict()
    if model.discriminator is not None:
        if weights.discriminator:
            problems = mismatches(model.discriminator.state_dict(), weights.discriminator)
            if problems and not ignore_mismatched_sizes:
                raise ConfigError(f"the discriminator weights in {source} do not fit the model's "
                                  f"(disc_channels, layers) ({problems})")
            tensors.update({f"discriminator.{k}": v for k, v in weights.discriminator.items()})
        else:
            log.info("%s has no discriminator: training starts a fresh one", source)
            tensors.update({k: v for k, v in own.items() if k.startswith("discriminator.")})
    elif weights.discriminator:
        log.info("%s: its discriminator is not used (the run trains no discriminator)", source)
    if "logvar" in own:
        tensors["logvar"] = weights.logvar.reshape(own["logvar"].shape) if weights.logvar is not None else own["logvar"]
    if model.ema is not None:
        average = weights.ema or {}
        tensors.update({f"ema.{_buffer_name(k)}": average.get(k, weights.vae[k])
                        for k, _ in model.vae.named_parameters() if k in weights.vae})
    if weights.skipped:
        log.info("%s: %d tensors that are not weights of this model skipped (perceptual network, optimizer "
                 "state), e.g. %s", source, len(weights.skipped), weights.skipped[0])
    return tensors
