"""Keys of task vlm (seed 001, nanoVLM's train.py): the three components, their learning rates,
image handling, knapsack packing and the dataset quality filters."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ...config.schema_base import Group, short_name


class VLMGroup(Group):
    """Vision-language model (task vlm)"""
    vision_model_name_or_path: str | None = Field(None, description="local SiglipVisionModel folder (pretrained vision encoder)")
    vision_config: str | None = Field(None, description="vision encoder from random init: a preset (siglip-tiny) or a SiglipVisionConfig config.json")
    mp_pixel_shuffle_factor: int = Field(4, gt=0, description="modality projector: pixel-shuffle factor; image tokens per view = (image_size / patch_size / factor)²")
    max_img_size: int | None = Field(None, gt=0, description="images larger than the encoder's input are split into tiles of that size (up to max_img_size per side) plus one global view; unset = one resized view per image")
    lr_mp: float = Field(0.00512, ge=0, description="peak learning rate of the modality projector; 0 freezes it")
    lr_vision_backbone: float = Field(5e-5, ge=0, description="peak learning rate of the vision encoder; 0 freezes it")
    lr_language_backbone: float = Field(5e-5, ge=0, description="peak learning rate of the language decoder (or its LoRA adapters); 0 freezes it")
    seq_length: int | None = Field(None, gt=1, description="tokens per packed training sequence (default: cutoff_len)")
    max_sample_length: int | None = Field(None, gt=1, description="samples longer than this many tokens (images included) are dropped and counted (default: seq_length)")
    max_images_per_example: int = Field(4, gt=0, description="samples with more images are dropped and counted")
    max_images_per_knapsack: int = Field(18, gt=0, description="at most this many images in one packed sequence")
    relevance_min_rating: int = Field(1, ge=0, description="drop samples whose relevance rating (if the data has one) is lower")
    image_correspondence_min_rating: int = Field(1, ge=0, description="drop samples whose image_correspondence rating is lower")
    visual_dependency_min_rating: int = Field(1, ge=0, description="drop samples whose visual_dependency rating is lower")
    formatting_min_rating: int = Field(1, ge=0, description="drop samples whose formatting rating is lower")
    bad_images: Literal["error", "skip"] = Field("error", description="a missing or undecodable image: stop naming the file (error) or drop its sample and count it (skip)")
    image_token_layout: Literal["plain", "nanovlm"] | None = Field(None, description="how an image is written into the tokens: plain (a run of image tokens per view, pixels in [-1, 1]) or nanovlm (nanoVLM's global-image and row/column tokens, its tiling, pixels in [0, 1]); default: nanovlm for a model from a nanoVLM checkpoint, else plain")
    resize_to_max_side_len: bool | None = Field(None, description="image_token_layout nanovlm: resize every image so its long side is max_img_size (default: the nanoVLM checkpoint's setting)")
    export_format: Literal["ember", "nanovlm"] = Field("ember", description="nanovlm: the run's final model is also written as nanoVLM's save_pretrained folder, in <output_dir>/nanovlm (for a model from a nanoVLM checkpoint)")
    resume_from_vlm_checkpoint: bool = Field(False, description="start from the VLM saved at vlm_checkpoint_path (weights only, fresh optimizer, as nanoVLM)")
    vlm_checkpoint_path: str | None = Field(None, description="with resume_from_vlm_checkpoint: the VLM folder to start from; otherwise the root under which output_dir defaults to <vlm_checkpoint_path>/<run_name>")

    @classmethod
    def run_name_parts(cls, cfg) -> tuple[str, str]:
        """As nanoVLM names its runs: encoder, image size, pixel shuffle, decoder; three learning rates."""
        size = f"_{cfg.max_img_size}" if cfg.max_img_size else ""
        model = (f"{short_name(cfg.vision_model_name_or_path or cfg.vision_config)}{size}_mp{cfg.mp_pixel_shuffle_factor}_"
                 f"{short_name(cfg.model_name_or_path or cfg.model_config_)}")
        return model, f"lr_vision_{cfg.lr_vision_backbone:g}-language_{cfg.lr_language_backbone:g}-mp_{cfg.lr_mp:g}"

    @classmethod
    def brings_its_own_model(cls, cfg) -> bool:
        from .nanovlm import is_nanovlm_folder
        # the saved VLM is the model; so is a nanoVLM checkpoint given to load_from_checkpoint
        return bool(cfg.resume_from_vlm_checkpoint) or is_nanovlm_folder(getattr(cfg, "load_from_checkpoint", None))

    @model_validator(mode="after")
    def _output_under_checkpoint_root(self):
        """nanoVLM saves under <vlm_checkpoint_path>/<run_name>; so does ember when output_dir is not given
        (the automatic name without its date, so re-running the command finds the same folder)."""
        if (getattr(self, "task", None) == "vlm" and self.vlm_checkpoint_path and not self.resume_from_vlm_checkpoint
                and "output_dir" not in self.model_fields_set):
            from ...config.run_name import auto_run_name
            # the processes the config asks for (not the environment: parsing reads only the config)
            name = self.run_name or auto_run_name(self, self.nproc_per_node * self.nnodes, None, dated=False)
            self.output_dir = str(Path(self.vlm_checkpoint_path) / name)
        return self
