"""Keys of the training methods LLaMA-Factory's users pick beyond plain LoRA: LoRA+, PiSSA, OFT,
NEFTune, and the memory-saving optimizers (GaLore, APOLLO, BAdam, Adam-mini, Muon). Named, typed
and defaulted as in LLaMA-Factory 0.9.5 (hparams/finetuning_args.py), so its YAMLs mean the same
here. Light: imported with the schema (no torch)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .schema_base import Group


class AdapterMethodsGroup(Group):
    """LoRA+, PiSSA, OFT and NEFTune"""
    loraplus_lr_ratio: float | None = Field(None, gt=0, description="LoRA+: the B matrices learn at learning_rate × this ratio (lr_B / lr_A; 16 in the paper)")
    loraplus_lr_embedding: float = Field(1e-6, gt=0, description="LoRA+: learning rate of LoRA adapters on embedding layers")
    pissa_init: bool = Field(False, description="LoRA: initialise the adapters from the principal singular vectors of each weight (PiSSA); the base keeps the residual")
    pissa_iter: int = Field(16, ge=-1, description="PiSSA: iterations of the fast randomised SVD; -1 = exact SVD")
    pissa_convert: bool = Field(False, description="PiSSA: save the final adapter as a plain LoRA adapter for the original (unchanged) base")
    oft_rank: int = Field(0, ge=0, description="OFT: number of orthogonal blocks per layer (0 = derived from oft_block_size)")
    oft_block_size: int = Field(32, ge=0, description="OFT: size of each orthogonal block (0 = derived from oft_rank)")
    oft_target: str = Field("all", description="OFT: module names that get an orthogonal adapter, comma-separated; all = every linear layer but the output head")
    module_dropout: float = Field(0.0, ge=0, lt=1, description="OFT: probability of dropping a whole orthogonal block in training")
    neftune_noise_alpha: float | None = Field(None, gt=0, description="NEFTune: uniform noise of scale alpha/sqrt(L·d) added to the input embeddings in training (not in evaluation)")


class OptimizerMethodsGroup(Group):
    """Memory-saving optimizers (GaLore, APOLLO, BAdam, Adam-mini, Muon)"""
    use_galore: bool = Field(False, description="GaLore: Adam on low-rank projections of the gradients of the target matrices (package galore-torch)")
    galore_target: str = Field("all", description="GaLore: module names whose weights are projected; all = every linear layer but the output head")
    galore_rank: int = Field(16, gt=0, description="GaLore: rank of the projected gradients")
    galore_update_interval: int = Field(200, gt=0, description="GaLore: steps between recomputing the projection")
    galore_scale: float = Field(2.0, gt=0, description="GaLore: scale of the projected-back update")
    galore_proj_type: Literal["std", "reverse_std", "right", "left", "full"] = Field("std", description="GaLore: which side is projected")
    galore_layerwise: bool = Field(False, description="GaLore: LLaMA-Factory steps one optimizer per layer during backward; ember runs the same update after backward (more gradient memory) and says so")
    use_apollo: bool = Field(False, description="APOLLO: AdamW with channel-wise scaling from low-rank auxiliary states (package apollo-torch)")
    apollo_target: str = Field("all", description="APOLLO: module names whose weights use it; all = every linear layer but the output head")
    apollo_rank: int = Field(16, gt=0, description="APOLLO: rank of the auxiliary space")
    apollo_update_interval: int = Field(200, gt=0, description="APOLLO: steps between new projections")
    apollo_scale: float = Field(32.0, gt=0, description="APOLLO: scale of the update")
    apollo_proj: Literal["svd", "random"] = Field("random", description="APOLLO: projection from an SVD or random")
    apollo_proj_type: Literal["std", "right", "left"] = Field("std", description="APOLLO: which side is projected")
    apollo_scale_type: Literal["channel", "tensor"] = Field("channel", description="APOLLO: scaling per channel or per tensor")
    apollo_layerwise: bool = Field(False, description="APOLLO: LLaMA-Factory steps one optimizer per layer during backward; ember runs the same update after backward (more gradient memory) and says so")
    apollo_scale_front: bool = Field(False, description="APOLLO: apply the norm-growth limiter before scaling")
    use_badam: bool = Field(False, description="BAdam: Adam on one block of decoder layers at a time, switching blocks (package badam)")
    badam_mode: Literal["layer", "ratio"] = Field("layer", description="BAdam: switch whole layers (layer); ratio mode is not available")
    badam_start_block: int | None = Field(None, ge=0, description="BAdam: first block to train")
    badam_switch_mode: Literal["ascending", "descending", "random", "fixed"] | None = Field("ascending", description="BAdam: order of the blocks")
    badam_switch_interval: int | None = Field(50, description="BAdam: optimizer steps before switching block (-1 = never)")
    badam_update_ratio: float = Field(0.05, ge=0, le=1, description="BAdam ratio mode (not available)")
    badam_mask_mode: Literal["adjacent", "scatter"] = Field("adjacent", description="BAdam ratio mode (not available)")
    badam_verbose: int = Field(0, ge=0, description="BAdam: 1 prints the active block, 2 also the trainable parameters")
    use_adam_mini: bool = Field(False, description="Adam-mini: one second-moment value per parameter block instead of per weight (package adam-mini)")
    use_muon: bool = Field(False, description="Muon (torch.optim.Muon) on the hidden 2-D weights, AdamW on the rest (embeddings, head, norms, biases)")
