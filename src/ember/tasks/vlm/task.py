"""Vision-language models (seed 001, nanoVLM): SigLIP encoder → pixel-shuffle projector → HF decoder.

Per-component learning rates (lr_mp, lr_vision_backbone, lr_language_backbone; 0 freezes that
component) are param groups of one optimizer, so every schedule, nanovlm's included, scales each
group from its own peak. Loss is on assistant tokens only; packed samples are isolated by
position_ids. Validation also reports answer_accuracy: the share of samples whose every answer
token is the model's top prediction (teacher-forced), i.e. what greedy decoding would answer.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from peft import PeftModel

from ...config.errors import ConfigError
from ...data.labels import IGNORE
from ...data.templates import ensure_chat_template
from ...engine.optim import decay_split
from ...engine.task import Loss, Task
from ...models.finetuning import apply_finetuning
from ...models.hf import load_causal_lm, load_tokenizer, new_causal_lm
from ...models.lm_loss import logits_cross_entropy, next_token_labels
from . import nanovlm
from .data import build_vlm_datasets
from .images import ImageProcessor
from .model import CONFIG_FILE, VisionLanguageModel, VLMConfig, build_vlm
from .nanovlm import is_nanovlm_folder
from .nanovlm_export import save_nanovlm
from .nanovlm_inputs import nanovlm_pipeline
from .vision import load_vision_encoder, read_vision_config

log = logging.getLogger("ember")
IMAGE_TOKEN = "<|image|>"
PROCESSOR_FILE = "image_processor.json"  # how images are cut and scaled, for `ember chat` on the export
COMPONENTS = (("projector", "lr_mp"), ("vision_encoder", "lr_vision_backbone"), ("decoder", "lr_language_backbone"))


def add_image_token(tokenizer) -> int:
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)  # keeps the tokenizer's other special tokens
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


class VLMTask(Task):
    forward_may_skip_parameters = True  # a text-only batch never reaches the encoder and projector

    def __init__(self, cfg):
        self.cfg = cfg
        self.saved_vlm = None  # a whole VLM folder to start from (resume_from_vlm_checkpoint)
        self.checkpoint_weights = None  # or a checkpoint-N folder of an ember run, loaded by the engine
        if cfg.resume_from_vlm_checkpoint:
            if not cfg.vlm_checkpoint_path:
                raise ConfigError("resume_from_vlm_checkpoint needs vlm_checkpoint_path (the VLM folder to start from)")
            if (Path(cfg.vlm_checkpoint_path) / CONFIG_FILE).is_file() or is_nanovlm_folder(cfg.vlm_checkpoint_path):
                self.saved_vlm = cfg.vlm_checkpoint_path
            else:  # the same model built from this config, that checkpoint's weights loaded into it
                self.checkpoint_weights = cfg.vlm_checkpoint_path
        # a nanoVLM folder (to resume from, or load_from_checkpoint's, read by read_weights below):
        # its config is the model's shape
        nano_folder = next((f for f in (self.saved_vlm, cfg.load_from_checkpoint) if is_nanovlm_folder(f)), None)
        self.nanovlm = nanovlm.read_config(nano_folder) if nano_folder else None
        self.tokenizer = self._tokenizer()
        if self.nanovlm:
            nanovlm.prepare_tokenizer(self.tokenizer, self.nanovlm, cfg.template)
        ensure_chat_template(self.tokenizer, cfg.template)
        self.image_token_id = (nanovlm.image_token_id(self.nanovlm) if self.nanovlm
                               else add_image_token(self.tokenizer))
        if self.nanovlm:
            self.shape = nanovlm.vlm_config(self.nanovlm)
        elif self.saved_vlm:
            self.shape = VLMConfig(**json.loads((Path(self.saved_vlm) / CONFIG_FILE).read_text()))
        else:
            vision = read_vision_config(cfg.vision_model_name_or_path, cfg.vision_config)
            self.shape = VLMConfig(vision_config=vision.to_dict(), decoder_config={},
                                   mp_pixel_shuffle_factor=cfg.mp_pixel_shuffle_factor,
                                   image_token_id=self.image_token_id, image_token=IMAGE_TOKEN)
            self.shape.check()
        self.processor = ImageProcessor(self.shape.image_size, cfg.max_img_size)
        self.layout = None  # plain: a run of image tokens per view
        if cfg.export_format == "nanovlm" and self.shape.nanovlm is None:  # refused now, not after training
            raise ConfigError("export_format nanovlm needs a model that came from a nanoVLM checkpoint")
        nano_inputs = nanovlm_pipeline(cfg, self.shape, self.tokenizer)
        if nano_inputs:
            self.processor, self.layout = nano_inputs

    def initial_weights(self) -> str | None:
        return self.checkpoint_weights

    def read_weights(self, source: str) -> dict[str, torch.Tensor] | None:
        return nanovlm.read_ember_weights(source)  # None unless source is a nanoVLM folder

    def _tokenizer(self):
        cfg = self.cfg
        # nanoVLM folders hold no tokenizer: the user gives a local copy of the one it names
        saved = None if self.nanovlm else self.saved_vlm
        source = saved or cfg.tokenizer_name_or_path or cfg.model_name_or_path
        if source is None and self.nanovlm:
            raise ConfigError(f"a nanoVLM checkpoint holds no tokenizer: set tokenizer_name_or_path to a local copy "
                              f"of {self.nanovlm.get('lm_tokenizer')} (ember never downloads)")
        if source is None:
            raise ConfigError("task vlm with model_config needs tokenizer_name_or_path (make one with `ember tokenizer`)")
        key = ("vlm_checkpoint_path" if saved else
               "tokenizer_name_or_path" if cfg.tokenizer_name_or_path else "model_name_or_path")
        return load_tokenizer(source, key, cfg.trust_remote_code)

    # ---- data ---------------------------------------------------------------------------
    def build_data(self):
        log.info("images: %d×%d views, %d tokens each%s", self.shape.image_size, self.shape.image_size,
                 self.shape.tokens_per_image, f", tiles up to {self.cfg.max_img_size}" if self.cfg.max_img_size else "")
        return build_vlm_datasets(self.cfg, self.tokenizer, self.processor, self.shape.image_token,
                                  self.shape.tokens_per_image, self.layout)

    # ---- model --------------------------------------------------------------------------
    def build_model(self) -> VisionLanguageModel:
        cfg = self.cfg
        if self.saved_vlm:
            model = VisionLanguageModel.from_pretrained(self.saved_vlm)
            log.info("started from the VLM at %s (fresh optimizer, as nanoVLM's resume does)", self.saved_vlm)
        elif self.nanovlm:  # load_from_checkpoint names a nanoVLM folder: its shape; the engine loads its weights
            model = VisionLanguageModel(self.shape)
        else:
            if cfg.model_name_or_path:
                decoder = load_causal_lm(cfg.model_name_or_path, cfg.trust_remote_code)
            else:
                decoder = new_causal_lm(cfg.model_config_, self.tokenizer)
            if decoder.get_input_embeddings().num_embeddings < len(self.tokenizer):
                decoder.resize_token_embeddings(len(self.tokenizer))
            encoder = load_vision_encoder(cfg.vision_model_name_or_path, cfg.vision_config)
            model = build_vlm(decoder, encoder, cfg.mp_pixel_shuffle_factor, self.image_token_id, IMAGE_TOKEN)
        if cfg.finetuning_type == "lora" and cfg.distributed_strategy == "fsdp":
            raise ConfigError("task vlm: LoRA with distributed_strategy fsdp is not supported yet; use ddp")
        if cfg.finetuning_type in ("lora", "freeze"):
            model.decoder = apply_finetuning(model.decoder, cfg)
        elif cfg.finetuning_type == "qlora":
            raise ConfigError("task vlm supports finetuning_type full, freeze and lora (qlora: not yet)")
        # frozen components are fixed before the model is wrapped (DDP registers what trains once)
        for name, key in COMPONENTS:
            if getattr(cfg, key) == 0:
                getattr(model, name).requires_grad_(False)
        sizes = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name, _ in COMPONENTS}
        log.info("VLM: %s parameters; learning rates %s", ", ".join(f"{k} {v:,}" for k, v in sizes.items()),
                 ", ".join(f"{name} {getattr(cfg, key):g}" + (" (frozen)" if getattr(cfg, key) == 0 else "")
                           for name, key in COMPONENTS))
        return model

    def param_groups(self, model: VisionLanguageModel) -> dict:
        groups = []
        for name, key in COMPONENTS:
            lr = getattr(self.cfg, key)
            if lr > 0:
                groups += decay_split(getattr(model, name).named_parameters(), self.cfg.weight_decay, lr=lr)
        if not groups:
            raise ConfigError("lr_mp, lr_vision_backbone and lr_language_backbone are all 0: nothing would train")
        return {"model": groups}

    # ---- steps --------------------------------------------------------------------------
    def _logits(self, model, batch) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                     position_ids=batch["position_ids"])

    def training_step(self, model, batch, step: int) -> dict[str, Loss]:
        labels = next_token_labels(batch["labels"])
        total = logits_cross_entropy(self._logits(model, batch), labels)
        return {"model": Loss(total, (labels != IGNORE).sum())}

    def eval_metrics(self, model, batch) -> dict[str, float]:
        logits = self._logits(model, batch)[:, :-1]
        labels, positions = batch["labels"][:, 1:], batch["position_ids"][:, 1:]
        targets = labels != IGNORE
        wrong = targets & (logits.argmax(-1) != labels)
        # a sample is a run of positions counting up from 0: number each row's samples by its restarts
        sample = torch.cumsum(positions == 0, dim=1)
        key = sample + torch.arange(len(sample), device=sample.device)[:, None] * (sample.max() + 1)
        answered = torch.unique(key[targets])
        failed = torch.unique(key[wrong])
        return {"answer_accuracy": 1.0 - len(failed) / max(1, len(answered))}

    # ---- output -------------------------------------------------------------------------
    def export(self, model: VisionLanguageModel, path: str, state_dict: dict | None = None) -> None:
        """One VLM folder (vlm_config.json + model.safetensors + tokenizer + image settings);
        LoRA adapters are merged into the decoder, so the folder loads without peft."""
        if isinstance(model.decoder, PeftModel):  # merged in a copy: the trained model keeps its adapters
            merged = VisionLanguageModel(model.config, model.vision_encoder,
                                         copy.deepcopy(model.decoder).merge_and_unload())
            merged.projector = model.projector
            model, state_dict = merged, None  # (LoRA runs are never sharded: see build_model)
        model.save_pretrained(path, state_dict=state_dict)
        self.tokenizer.save_pretrained(path)
        if self.cfg.export_format == "nanovlm":  # beside ember's files: both name their weights model.safetensors
            save_nanovlm(model, Path(path) / "nanovlm", state_dict)
        settings = {"image_size": self.shape.image_size, "max_img_size": self.cfg.max_img_size}
        (Path(path) / PROCESSOR_FILE).write_text(json.dumps(settings, indent=2) + "\n")
