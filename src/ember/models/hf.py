"""Loading HF causal LMs and tokenizers from local folders, or building one from a config."""
from __future__ import annotations

import json
import pickle
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..config.errors import ConfigError
from ..config.files import read_json_object
from ..engine.checkpoint.weights import unpickling_refusal


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("ember.presets").iterdir() if p.name.endswith(".json"))


def read_model_config(spec: str) -> dict:
    """A preset name, a config.json path, or a folder holding one → the config as a dict."""
    if spec in preset_names():
        return json.loads(resources.files("ember.presets").joinpath(f"{spec}.json").read_text())
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"model_config '{spec}' is neither a preset ({', '.join(preset_names())}) nor a config.json file")
    data = read_json_object(path, "model_config")
    if "model_type" not in data:
        raise ConfigError(f"model_config {path} has no model_type (e.g. \"llama\")")
    return data




def refuse_custom_code(path: str, key: str, trust_remote_code: bool) -> None:
    """A folder whose config asks for its own Python code (auto_map) is refused unless the user
    trusts it. transformers would refuse a model type it does not know, but for a known one it
    silently loads its own class instead, which is not the model the folder describes."""
    if trust_remote_code:
        return
    for name in ("config.json", "tokenizer_config.json"):
        file = Path(path) / name
        if file.is_file() and "auto_map" in read_json_object(file, key):
            raise ConfigError(f"{key}: {file} asks for custom code from the folder (auto_map); ember runs none "
                              "unless you set trust_remote_code: true for a folder you trust")


def require_local_folder(path: str, key: str) -> None:
    if not Path(path).is_dir():
        raise ConfigError(f"{key}: no local folder at {path} (ember never downloads models; "
                          "point it at a folder with config.json and weights)")


def load_tokenizer(path: str, key: str, trust_remote_code: bool = False):
    require_local_folder(path, key)
    refuse_custom_code(path, key, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}: cannot load a tokenizer from {path}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, trust_remote_code: bool = False, quantization=None) -> torch.nn.Module:
    """A local HF causal LM in fp32 (the precision policy casts later), or k-bit quantized."""
    require_local_folder(path, "model_name_or_path")
    refuse_custom_code(path, "model_name_or_path", trust_remote_code)
    extra = {"quantization_config": quantization, "device_map": {"": "cpu"}} if quantization else {}
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                                    **extra)
    except pickle.UnpicklingError as err:  # pytorch_model.bin is read with weights_only=True
        raise ConfigError(f"model_name_or_path: refused to load the weights in {path}: {unpickling_refusal(err)}") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"model_name_or_path: cannot load a causal LM from {path}: {str(err).splitlines()[0]}") from None


def new_causal_lm(spec: str, tokenizer) -> torch.nn.Module:
    """Random weights from a config; the vocabulary and special ids follow the tokenizer."""
    data = read_model_config(spec)
    data.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = AutoConfig.for_model(**data)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
