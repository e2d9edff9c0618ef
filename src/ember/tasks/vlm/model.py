"""A vision-language model built as nanoVLM builds one: SigLIP encoder → pixel-shuffle projector → any HF causal LM.

Image features replace the decoder's embeddings of the image placeholder token, so the decoder sees one
ordinary sequence of embeddings and everything it does with token ids still works: packed samples
isolated by restarting position_ids, the KV cache in generate().
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, SiglipVisionModel

from ...config.errors import ConfigError
from .projector import ModalityProjector
from .vision import drop_pooling_head, vision_config_from_dict

CONFIG_FILE, WEIGHTS_FILE = "vlm_config.json", "model.safetensors"


def _side(size) -> int:
    """SigLIP sizes may be written [h, w]; the patch grid must be square for pixel shuffle."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ConfigError(f"the vision encoder's image_size/patch_size {list(size)} is not square")
        size = size[0]
    return int(size)


@dataclass
class VLMConfig:
    vision_config: dict
    decoder_config: dict
    mp_pixel_shuffle_factor: int
    image_token_id: int
    image_token: str = "<|image|>"
    image_token_layout: str = "plain"  # how an image is laid out in input_ids: plain or nanovlm (data.py)
    nanovlm: dict | None = None  # the config.json of the nanoVLM checkpoint this model came from (nanovlm.py)

    @property
    def image_size(self) -> int:
        return _side(self.vision_config["image_size"])

    @property
    def grid_side(self) -> int:
        return self.image_size // _side(self.vision_config["patch_size"])

    @property
    def tokens_per_image(self) -> int:
        return (self.grid_side // self.mp_pixel_shuffle_factor) ** 2

    def check(self) -> None:
        if self.grid_side % self.mp_pixel_shuffle_factor:
            raise ConfigError(f"mp_pixel_shuffle_factor {self.mp_pixel_shuffle_factor} does not divide the vision "
                              f"encoder's {self.grid_side}×{self.grid_side} patch grid "
                              f"(image_size {self.image_size} / patch_size {self.vision_config['patch_size']})")


class VisionLanguageModel(nn.Module):
    def __init__(self, config: VLMConfig, vision_encoder: SiglipVisionModel | None = None,
                 decoder: PreTrainedModel | None = None):
        super().__init__()
        config.check()
        self.config = config
        if vision_encoder is None:
            vision_encoder = SiglipVisionModel(vision_config_from_dict(config.vision_config, CONFIG_FILE)).float()
        if decoder is None:
            decoder_config = AutoConfig.for_model(**config.decoder_config)
            decoder = AutoModelForCausalLM.from_config(decoder_config, dtype=torch.float32)
        self.vision_encoder = drop_pooling_head(vision_encoder)
        decoder_hidden = decoder.get_input_embeddings().embedding_dim
        self.projector = ModalityProjector(vision_encoder.config.hidden_size, decoder_hidden,
                                           config.mp_pixel_shuffle_factor)
        self.decoder = decoder
        vocab = decoder.get_input_embeddings().num_embeddings
        if not 0 <= config.image_token_id < vocab:
            raise ConfigError(f"image_token_id {config.image_token_id} is outside the decoder's {vocab}-token "
                              "vocabulary; add the image token to the tokenizer and resize the embeddings first")

    def image_features(self, pixel_values_vchw: torch.Tensor) -> torch.Tensor:
        """(views, 3, H, W) → (views, tokens_per_image, decoder_hidden)."""
        patches_vpd = self.vision_encoder(pixel_values=pixel_values_vchw).last_hidden_state
        return self.projector(patches_vpd)

    def embed(self, input_ids_bs: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder input embeddings with image features written, in order, over the image tokens."""
        embeds_bsd = self.decoder.get_input_embeddings()(input_ids_bs)
        is_image_bs = input_ids_bs == self.config.image_token_id
        slots = int(is_image_bs.sum())
        views = 0 if pixel_values is None else pixel_values.shape[0]
        if views == 0:  # text only (the encoder cannot run on an empty batch)
            if slots:
                raise ValueError(f"input_ids hold {slots} image tokens but no pixel_values were given")
            return embeds_bsd
        feats_nd = self.image_features(pixel_values).flatten(0, 1)
        if feats_nd.shape[0] != slots:
            raise ValueError(f"input_ids hold {slots} image tokens but {views} views give {feats_nd.shape[0]} image "
                             f"features ({self.config.tokens_per_image} per view)")
        # masked_scatter fills the masked positions in row-major order: batch row, then sequence position
        return embeds_bsd.masked_scatter(is_image_bs.unsqueeze(-1), feats_nd.to(embeds_bsd.dtype))

    def forward(self, input_ids, pixel_values=None, attention_mask=None, position_ids=None) -> torch.Tensor:
        """Logits (B, S, V). Packed rows: pass position_ids restarting at 0 per sample and no attention_mask;
        transformers then masks attention across samples (only without a cache, hence use_cache=False)."""
        embeds_bsd = self.embed(input_ids, pixel_values)
        return self.decoder(inputs_embeds=embeds_bsd, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False).logits

    @torch.no_grad()
    def generate(self, input_ids, pixel_values, max_new_tokens: int, eos_token_id: int | None = None) -> torch.Tensor:
        """Greedy decoding with the decoder's KV cache; returns the new tokens only (B, ≤ max_new_tokens).
        Rows are unpadded prompts of one length; a row that has emitted eos keeps emitting eos."""
        was_training = self.training
        self.eval()
        try:
            out = self.decoder(inputs_embeds=self.embed(input_ids, pixel_values), use_cache=True)
            new_tokens, done_b = [], torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for _ in range(max_new_tokens):
                next_b = out.logits[:, -1].argmax(-1)
                if eos_token_id is not None:
                    next_b = next_b.masked_fill(done_b, eos_token_id)
                    done_b |= next_b == eos_token_id
                new_tokens.append(next_b)
                if done_b.all() or len(new_tokens) == max_new_tokens:
                    break
                # the image lives in the cache now: later steps feed plain token ids
                out = self.decoder(input_ids=next_b[:, None], past_key_values=out.past_key_values, use_cache=True)
        finally:
            self.train(was_training)
        if not new_tokens:
            return input_ids.new_empty(input_ids.shape[0], 0)
        return torch.stack(new_tokens, dim=1)

    def save_pretrained(self, path, state_dict: dict | None = None) -> None:
        """One folder: vlm_config.json + model.safetensors. state_dict: the full weights (e.g. gathered under
        FSDP) keyed as self.state_dict(); tied weights are stored once, under their named_parameters() name."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict() if state_dict is None else state_dict
        keep = {n for n, _ in self.named_parameters()} | {n for n, _ in self.named_buffers()}
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if k in keep}
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        # the live configs, in case the decoder was resized or the head dropped since construction
        config = replace(self.config, vision_config=self.vision_encoder.config.to_diff_dict(),
                         decoder_config=self.decoder.config.to_diff_dict())
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, path) -> VisionLanguageModel:
        from .nanovlm import is_nanovlm_folder, load_model
        folder = Path(path)
        if is_nanovlm_folder(folder):  # a nanoVLM save_pretrained folder: config and weights translated
            return load_model(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise ConfigError(f"{path} is not a saved VLM folder (ember's {CONFIG_FILE} + {WEIGHTS_FILE}, "
                              "or nanoVLM's config.json + model.safetensors)")
        try:
            config = VLMConfig(**json.loads((folder / CONFIG_FILE).read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise ConfigError(f"{folder / CONFIG_FILE} is not a VLM config: {err}") from None
        model = cls(config)
        missing, unexpected = model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=False)
        # tied weights (lm_head = embed_tokens) were saved once; their other name is filled by the tie
        aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - dict(model.named_parameters()).keys()
        if unexpected or set(missing) - aliases:
            raise ConfigError(f"{folder / WEIGHTS_FILE} does not match {CONFIG_FILE}: "
                              f"missing {sorted(set(missing) - aliases)[:3]}, unexpected {sorted(unexpected)[:3]}")
        return model


def build_vlm(decoder: PreTrainedModel, vision_encoder: SiglipVisionModel, factor: int, image_token_id: int,
              image_token: str = "<|image|>") -> VisionLanguageModel:
    """Wrap a decoder (embeddings already resized for the image token) and an encoder with a new projector."""
    drop_pooling_head(vision_encoder)
    config = VLMConfig(vision_config=vision_encoder.config.to_diff_dict(), decoder_config=decoder.config.to_diff_dict(),
                       mp_pixel_shuffle_factor=factor, image_token_id=image_token_id, image_token=image_token)
    return VisionLanguageModel(config, vision_encoder=vision_encoder, decoder=decoder)
