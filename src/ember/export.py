"""`ember export`: merge a PEFT adapter into its base and write an HF model folder."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config.errors import ConfigError

log = logging.getLogger("ember")


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model_name_or_path: str = Field(description="the base model folder")
    adapter_name_or_path: str | None = Field(None, description="the PEFT adapter folder (an ember LoRA run's output_dir)")
    export_dir: str = Field(description="where the merged HF model goes")
    export_size: float = Field(5.0, gt=0, description="largest shard in GB")
    quantization_bit: int | None = Field(None, description="must be unset: adapters cannot be merged into a quantized base")
    trust_remote_code: bool = False
    template: str | None = None  # accepted from LLaMA-Factory export YAMLs; the adapter's tokenizer already has it
    export_format: Literal["hf", "nanovlm"] = Field("hf", description="hf: an HF model folder; nanovlm: a VLM "
                                                    "folder (ember's or nanoVLM's) rewritten as nanoVLM's save_pretrained")


def parse_export_config(raw: dict) -> ExportConfig:
    from .config.foreign import take_foreign_keys
    raw = take_foreign_keys(raw)
    try:
        return ExportConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"export: {key}: {first['msg'].lower()}") from None


def export_merged(cfg: ExportConfig) -> Path:
    from .config.files import read_json_object
    from .models.hf import load_causal_lm, load_tokenizer

    if cfg.export_format == "nanovlm":
        return _export_nanovlm(cfg)
    if cfg.quantization_bit is not None:
        raise ConfigError("cannot merge an adapter into a quantized base; export from the full-precision base "
                          "model (drop quantization_bit)")
    base = load_causal_lm(cfg.model_name_or_path, cfg.trust_remote_code)
    if getattr(base.config, "quantization_config", None):
        raise ConfigError(f"{cfg.model_name_or_path} is a quantized model; merge into its full-precision original")
    tokenizer_source = cfg.model_name_or_path
    if cfg.adapter_name_or_path:
        from .models.finetuning import load_adapter
        adapter = Path(cfg.adapter_name_or_path)
        if not (adapter / "adapter_config.json").is_file():
            raise ConfigError(f"adapter_name_or_path: {adapter} has no adapter_config.json")
        adapter_config = read_json_object(adapter / "adapter_config.json", "adapter_name_or_path")
        if str(adapter_config.get("init_lora_weights")).startswith("pissa"):
            # its A·B were split off the base's weights: merged into the original base they double-count
            raise ConfigError(f"adapter_name_or_path: {adapter} is a PiSSA adapter, which goes with the PiSSA residual "
                              "of the base; export its plain-LoRA form <output_dir>/pissa_converted (pissa_convert: true)")
        if adapter_config.get("base_model_name_or_path") is None:
            log.warning("the adapter does not record its base model; assuming %s", cfg.model_name_or_path)
        if (adapter / "tokenizer_config.json").is_file():
            tokenizer_source = str(adapter)  # it carries the chat template used in training
            # a template may have added tokens in training (stop words): the adapter's embeddings have them
            vocab = len(load_tokenizer(tokenizer_source, "adapter_name_or_path"))
            if base.get_input_embeddings().num_embeddings < vocab:
                base.resize_token_embeddings(vocab)
        base = load_adapter(base, str(adapter)).merge_and_unload()
    out = Path(cfg.export_dir)
    out.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(out, max_shard_size=f"{int(cfg.export_size * 1024)}MB")
    load_tokenizer(tokenizer_source, "model_name_or_path").save_pretrained(out)
    return out


def _export_nanovlm(cfg: ExportConfig) -> Path:
    """A VLM folder whose model came from nanoVLM, written back in nanoVLM's form (weights as they are:
    ember's VLM folders hold LoRA runs already merged)."""
    from .tasks.vlm.model import VisionLanguageModel
    from .tasks.vlm.nanovlm_export import save_nanovlm
    if cfg.adapter_name_or_path:
        raise ConfigError("export_format nanovlm takes a VLM folder as model_name_or_path and no adapter "
                          "(a VLM run's output folder has its LoRA merged already)")
    return save_nanovlm(VisionLanguageModel.from_pretrained(cfg.model_name_or_path), cfg.export_dir)
