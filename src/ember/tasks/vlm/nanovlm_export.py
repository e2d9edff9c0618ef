"""nanoVLM checkpoints out: a folder nanoVLM's VisionLanguageModel.from_pretrained loads unchanged.

nanoVLM reads config.json into its VLMConfig dataclass (so only its own fields may appear) and the
weights with safetensors' load_model, strictly: every tensor of its model, its rotary inv_freq buffer
included, and the tied embedding once, under decoder.head.weight.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from ...config.errors import ConfigError
from .nanovlm import CONFIG, INV_FREQ, POSITIONS_EMBER, POSITIONS_NANO, RENAMES, WEIGHTS

EMBED, HEAD = "decoder.model.embed_tokens.weight", "decoder.lm_head.weight"
QKV_EMBER = re.compile(r"vision_encoder\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")
GROUPS = {r"\1": r"(\d+)", r"\2": "([qkv])"}


def _reverse(pattern: str, target: str) -> tuple[str, str]:
    """An ember → nanoVLM rule from a nanoVLM → ember one (group references become groups again)."""
    new_pattern = re.escape(target)
    for ref, group in GROUPS.items():
        new_pattern = new_pattern.replace(re.escape(ref), group)
    new_target = pattern.replace(r"\.", ".")
    for ref, group in GROUPS.items():
        new_target = new_target.replace(group, ref)
    return new_pattern, new_target


REVERSE = [_reverse(p, t) for p, t in RENAMES]


def to_nanovlm(state: dict[str, torch.Tensor], nano: dict) -> dict[str, torch.Tensor]:
    """ember state dict → nanoVLM's names and shapes."""
    from .nanovlm import _rename
    out, qkv = {}, {}
    for name, value in state.items():
        value = value.detach().cpu()
        fused = QKV_EMBER.fullmatch(name)
        if fused:
            block, part, kind = fused.groups()
            qkv.setdefault((block, kind), {})[part] = value
        elif name == POSITIONS_EMBER:
            out[POSITIONS_NANO] = value.unsqueeze(0)
        elif name == EMBED and nano["lm_tie_weights"]:
            continue  # stored once, as the head (below)
        else:
            new = _rename(name, REVERSE)
            if new is None:
                raise ConfigError(f"export_format nanovlm: weight {name} has no place in a nanoVLM model "
                                  "(nanoVLM's decoder is Llama without biases, its encoder SigLIP)")
            out[new] = value
    for (block, kind), parts in qkv.items():
        out[f"vision_encoder.blocks.{block}.attn.qkv_proj.{kind}"] = torch.cat([parts[p] for p in "qkv"])
    if nano["lm_tie_weights"] and "decoder.head.weight" not in out:
        out["decoder.head.weight"] = state[EMBED].detach().cpu()
    head_dim = nano["lm_hidden_dim"] // nano["lm_n_heads"]
    # nanoVLM's own formula, so the buffer is bit-identical to the one its constructor makes
    out[INV_FREQ] = 1.0 / (nano["lm_re_base"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
    return {k: v.contiguous() for k, v in out.items()}


def nanovlm_config(model) -> dict:
    """The model's nanoVLM config: the one it came with, its shape fields read from the live model."""
    nano = model.config.nanovlm
    if nano is None:
        raise ConfigError("export_format nanovlm needs a model that came from a nanoVLM checkpoint (it carries "
                          "nanoVLM's extra tokens and settings); this model was built in ember")
    vision, decoder = model.vision_encoder.config, model.decoder.config
    if decoder.model_type != "llama" or getattr(decoder, "attention_bias", False) or getattr(decoder, "mlp_bias", False):
        raise ConfigError(f"export_format nanovlm: the decoder is {decoder.model_type} with biases; nanoVLM's is Llama")
    theta = (getattr(decoder, "rope_parameters", None) or {}).get("rope_theta", getattr(decoder, "rope_theta", None))
    return nano | {
        "vit_hidden_dim": vision.hidden_size, "vit_inter_dim": vision.intermediate_size,
        "vit_patch_size": vision.patch_size, "vit_img_size": vision.image_size, "vit_n_heads": vision.num_attention_heads,
        "vit_n_blocks": vision.num_hidden_layers, "vit_ln_eps": vision.layer_norm_eps,
        "lm_hidden_dim": decoder.hidden_size, "lm_inter_dim": decoder.intermediate_size, "lm_rms_eps": decoder.rms_norm_eps,
        "lm_re_base": theta, "lm_vocab_size": decoder.vocab_size, "lm_n_heads": decoder.num_attention_heads,
        "lm_n_kv_heads": decoder.num_key_value_heads, "lm_n_blocks": decoder.num_hidden_layers,
        "lm_tie_weights": bool(decoder.tie_word_embeddings), "mp_pixel_shuffle_factor": model.config.mp_pixel_shuffle_factor,
        "mp_image_token_length": model.config.tokens_per_image,
    }


def save_nanovlm(model, path, state_dict: dict | None = None) -> Path:
    """Write `model` (a VisionLanguageModel; `state_dict`: its full weights, e.g. gathered under FSDP) as
    nanoVLM's save_pretrained would."""
    nano = nanovlm_config(model)
    tensors = to_nanovlm(model.state_dict() if state_dict is None else state_dict, nano)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(json.dumps(nano, indent=4))
    # the metadata safetensors' save_model writes for a dropped duplicate (the tied embedding)
    metadata = {"decoder.token_embedding.weight": "decoder.head.weight"} if nano["lm_tie_weights"] else {"format": "pt"}
    save_file(tensors, str(folder / WEIGHTS), metadata=metadata)
    return folder
