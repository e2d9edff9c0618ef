"""nanoVLM's checkpoint folder (its save_pretrained: config.json with flat vit_*/lm_*/mp_* fields +
model.safetensors), read into ember's VisionLanguageModel and written back.

nanoVLM's ViT is SigLIP and its decoder is Llama, layer for layer, so a checkpoint maps by renaming,
with three reshapes: the ViT's fused qkv projection is split into q/k/v (and fused again on the way
out), its position embedding is a (1, N, D) parameter rather than an Embedding's (N, D) table, and
the tied LM head is stored once, as decoder.head.weight.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ...config.errors import ConfigError

CONFIG, WEIGHTS = "config.json", "model.safetensors"
# nanoVLM name → ember name (after the fused/reshaped tensors are handled apart)
RENAMES = [
    (r"MP\.proj\.", "projector.proj."),
    (r"vision_encoder\.patch_embedding\.conv\.", "vision_encoder.embeddings.patch_embedding."),
    (r"vision_encoder\.blocks\.(\d+)\.ln1\.", r"vision_encoder.encoder.layers.\1.layer_norm1."),
    (r"vision_encoder\.blocks\.(\d+)\.ln2\.", r"vision_encoder.encoder.layers.\1.layer_norm2."),
    (r"vision_encoder\.blocks\.(\d+)\.attn\.out_proj\.", r"vision_encoder.encoder.layers.\1.self_attn.out_proj."),
    (r"vision_encoder\.blocks\.(\d+)\.mlp\.", r"vision_encoder.encoder.layers.\1.mlp."),
    (r"vision_encoder\.layer_norm\.", "vision_encoder.post_layernorm."),
    (r"decoder\.token_embedding\.", "decoder.model.embed_tokens."),
    (r"decoder\.blocks\.(\d+)\.attn\.out_proj\.", r"decoder.model.layers.\1.self_attn.o_proj."),
    (r"decoder\.blocks\.(\d+)\.attn\.([qkv])_proj\.", r"decoder.model.layers.\1.self_attn.\2_proj."),
    (r"decoder\.blocks\.(\d+)\.mlp\.", r"decoder.model.layers.\1.mlp."),
    (r"decoder\.blocks\.(\d+)\.norm1\.", r"decoder.model.layers.\1.input_layernorm."),
    (r"decoder\.blocks\.(\d+)\.norm2\.", r"decoder.model.layers.\1.post_attention_layernorm."),
    (r"decoder\.norm\.", "decoder.model.norm."),
    (r"decoder\.head\.", "decoder.lm_head."),
]
QKV = re.compile(r"vision_encoder\.blocks\.(\d+)\.attn\.qkv_proj\.(weight|bias)")
POSITIONS_NANO = "vision_encoder.patch_embedding.position_embedding"
POSITIONS_EMBER = "vision_encoder.embeddings.position_embedding.weight"
INV_FREQ = "decoder.rotary_embd.inv_freq"  # a buffer nanoVLM recomputes; HF Llama keeps its own


def read_config(folder) -> dict | None:
    """nanoVLM's config.json as a dict, or None when the folder is not a nanoVLM checkpoint."""
    file = Path(folder) / CONFIG
    if not Path(folder).is_dir() or not file.is_file() or not (Path(folder) / WEIGHTS).is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and "vit_hidden_dim" in data and "lm_hidden_dim" in data else None


def is_nanovlm_folder(folder) -> bool:
    return folder is not None and read_config(folder) is not None


def image_token_id(nano: dict) -> int:
    """nanoVLM adds vlm_extra_tokens after the base vocabulary in their dict order."""
    names = list(nano["vlm_extra_tokens"])
    return nano["lm_base_vocab_size"] + names.index("image_token")


def vision_config(nano: dict) -> dict:
    if nano.get("vit_cls_flag"):
        raise ConfigError("nanoVLM checkpoint with vit_cls_flag true: a class token has no SigLIP counterpart")
    return {"model_type": "siglip_vision_model", "hidden_size": nano["vit_hidden_dim"],
            "intermediate_size": nano["vit_inter_dim"], "num_hidden_layers": nano["vit_n_blocks"],
            "num_attention_heads": nano["vit_n_heads"], "image_size": nano["vit_img_size"],
            "patch_size": nano["vit_patch_size"], "layer_norm_eps": nano["vit_ln_eps"],
            "attention_dropout": nano["vit_dropout"], "hidden_act": "gelu_pytorch_tanh", "num_channels": 3}


def decoder_config(nano: dict) -> dict:
    if nano.get("lm_attn_scaling", 1.0) != 1.0:
        raise ConfigError(f"nanoVLM checkpoint with lm_attn_scaling {nano['lm_attn_scaling']}: only 1.0 maps onto Llama")
    return {"model_type": "llama", "vocab_size": nano["lm_vocab_size"], "hidden_size": nano["lm_hidden_dim"],
            "intermediate_size": nano["lm_inter_dim"], "num_hidden_layers": nano["lm_n_blocks"],
            "num_attention_heads": nano["lm_n_heads"], "num_key_value_heads": nano["lm_n_kv_heads"],
            "rms_norm_eps": nano["lm_rms_eps"], "rope_theta": nano["lm_re_base"],
            "max_position_embeddings": nano["lm_max_position_embeddings"],
            "tie_word_embeddings": nano["lm_tie_weights"], "hidden_act": "silu",
            "attention_dropout": nano["lm_dropout"], "attention_bias": False, "mlp_bias": False}


def to_ember(tensors: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """nanoVLM state dict → ember's names and shapes."""
    out = {}
    for name, value in tensors.items():
        if name == INV_FREQ:
            continue
        if name == POSITIONS_NANO:
            out[POSITIONS_EMBER] = value.reshape(value.shape[-2], value.shape[-1])
            continue
        fused = QKV.fullmatch(name)
        if fused:
            block, kind = fused.groups()
            for part, piece in zip("qkv", value.chunk(3, dim=0)):
                out[f"vision_encoder.encoder.layers.{block}.self_attn.{part}_proj.{kind}"] = piece.clone()
            continue
        new = _rename(name, RENAMES)
        if new is None:
            raise ConfigError(f"nanoVLM checkpoint: no ember counterpart for weight {name}")
        out[new] = value
    # the tie is stored once, as the head: give ember both names (one tensor), as its state_dict has
    if tied and "decoder.lm_head.weight" in out:
        out["decoder.model.embed_tokens.weight"] = out["decoder.lm_head.weight"]
    return out


def _rename(name: str, rules) -> str | None:
    for pattern, target in rules:
        new, hits = re.subn(f"^{pattern}", target, name)
        if hits:
            return new
    return None


def vlm_config(nano: dict):
    """ember's VLMConfig for a nanoVLM config; the original is kept, for its tokens, images and export."""
    from .model import VLMConfig
    return VLMConfig(vision_config=vision_config(nano), decoder_config=decoder_config(nano),
                     mp_pixel_shuffle_factor=nano["mp_pixel_shuffle_factor"], image_token_id=image_token_id(nano),
                     image_token=nano["vlm_extra_tokens"]["image_token"], image_token_layout="nanovlm",
                     nanovlm=nano)


def read_ember_weights(folder) -> dict[str, torch.Tensor] | None:
    """A nanoVLM folder's weights under ember's names (None for any other folder): how
    load_from_checkpoint reads one (through VLMTask.read_weights)."""
    nano = read_config(folder)
    if nano is None:
        return None
    from safetensors.torch import load_file
    return to_ember(load_file(str(Path(folder) / WEIGHTS)), bool(nano.get("lm_tie_weights")))


def load_model(folder):
    """A VisionLanguageModel from a nanoVLM folder, every weight checked."""
    from .model import VisionLanguageModel
    nano = read_config(folder)
    model = VisionLanguageModel(vlm_config(nano))
    tensors = read_ember_weights(folder)
    own = model.state_dict()
    missing = sorted(own.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - own.keys())
    wrong = [k for k in tensors.keys() & own.keys() if tensors[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ConfigError(f"{Path(folder) / WEIGHTS} does not match its config.json: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}, of another shape {wrong[:3]}")
    model.load_state_dict(tensors)
    return model



def prepare_tokenizer(tokenizer, nano: dict, template: str | None) -> None:
    """Make a base tokenizer (the user's local copy of lm_tokenizer) the one nanoVLM trained with:
    its extra tokens appended in order, pad = eos, and nanoVLM's chat template unless `template` is set."""
    added = [t for t in nano["vlm_extra_tokens"].values() if t not in tokenizer.get_vocab()]
    tokenizer.add_special_tokens({"additional_special_tokens": added}, replace_extra_special_tokens=False)
    tokenizer.pad_token = tokenizer.eos_token
    if template is None and nano.get("lm_chat_template"):
        tokenizer.chat_template = nano["lm_chat_template"]
    image_token = nano["vlm_extra_tokens"]["image_token"]
    got, want = tokenizer.convert_tokens_to_ids(image_token), image_token_id(nano)
    if got != want or len(tokenizer) > nano["lm_vocab_size"]:
        raise ConfigError(f"the tokenizer does not fit the nanoVLM checkpoint: {image_token} is id {got}, the model "
                          f"expects {want} (lm_base_vocab_size {nano['lm_base_vocab_size']} + its place in "
                          f"vlm_extra_tokens); give tokenizer_name_or_path a local copy of {nano.get('lm_tokenizer')}")
