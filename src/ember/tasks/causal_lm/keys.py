"""Keys of the preference and reward stages (rm, dpo, orpo, simpo, kto), named and meaning what they
mean in LLaMA-Factory. Light: imported with the schema (no torch)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ...config.errors import ConfigError
from ...config.schema_base import Group

# accepted by LLaMA-Factory, but not implemented here: refused when set, so a run never
# silently trains something other than what its YAML says
_NOT_HONOURED = {
    "ref_model_adapters": "adapters on the reference model are not supported; merge them into ref_model "
                          "(ember export)",
    "ref_model_quantization_bit": "a quantized reference model is not supported; use finetuning_type lora "
                                  "(the reference is then the base with adapters off, no second copy)",
}


class PreferenceGroup(Group):
    """Preference and reward training (stages rm, dpo, orpo, simpo, kto)"""
    pref_beta: float = Field(0.1, gt=0, description="dpo/orpo/simpo/kto: beta, the strength of the preference (DPO's inverse temperature; ORPO's weight of the odds-ratio term)")
    pref_loss: Literal["sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo"] = Field("sigmoid", description="stage dpo: sigmoid (DPO), hinge (SLiC), ipo, kto_pair (KTO on pairs), or the reference-free orpo and simpo (also reachable as stage orpo / simpo)")
    pref_ftx: float = Field(0.0, ge=0, description="dpo: weight of an SFT term (the chosen answer's mean token NLL) added to the preference loss")
    pref_bco_weight: float = Field(0.0, ge=0, description="weight of a BCO term (not available: only 0)")
    simpo_gamma: float = Field(0.5, description="simpo: target reward margin gamma")
    dpo_label_smoothing: float = Field(0.0, ge=0, le=0.5, description="dpo sigmoid: the assumed share of flipped preference labels (conservative DPO)")
    kto_chosen_weight: float = Field(1.0, gt=0, description="kto: weight of the loss of desirable answers")
    kto_rejected_weight: float = Field(1.0, gt=0, description="kto: weight of the loss of undesirable answers")
    ref_model: str | None = Field(None, description="dpo: local HF folder of the reference model (default: the starting model; with LoRA, the base with adapters disabled, no second copy)")
    precompute_ref_log_probs: bool = Field(False, description="dpo/kto: compute the reference model's log-probabilities once, in one pass over the training and validation data before training, so training holds one model (no frozen copy, no ref_model kept)")
    ref_model_adapters: str | None = Field(None, description="adapters for ref_model (not available: merge them into ref_model)")
    ref_model_quantization_bit: int | None = Field(None, description="quantize ref_model (not available)")

    @field_validator("ref_model_adapters", "ref_model_quantization_bit", "pref_bco_weight")
    @classmethod
    def _refuse_what_is_not_honoured(cls, value, info):
        if info.field_name in _NOT_HONOURED and value is not None:
            raise ConfigError(f"not supported by ember: {_NOT_HONOURED[info.field_name]}")
        if info.field_name == "pref_bco_weight" and value > 0:
            raise ConfigError("BCO is not available (its baseline is a running mean of the rewards over every "
                              "step and rank, state the task contract does not keep); leave it at 0")
        return value
