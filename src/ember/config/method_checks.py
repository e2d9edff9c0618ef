"""Rules between the method keys (LoRA+, PiSSA, OFT, NEFTune, the memory-saving optimizers) and the
rest of a run: the combinations LLaMA-Factory refuses, and those ember cannot run, each named in one line."""
from __future__ import annotations

from .errors import ConfigError

OPTIMIZER_SWITCHES = ("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon")
# optimizers that replace the whole-weight update, so they cannot train adapters (as in LLaMA-Factory)
FULL_WEIGHT_ONLY = ("use_galore", "use_apollo", "use_badam")
LM_ONLY = ("loraplus_lr_ratio", "pissa_init", "neftune_noise_alpha", *OPTIMIZER_SWITCHES)


def check_methods(cfg) -> None:
    if cfg.task != "causal_lm":
        for key in LM_ONLY:
            if getattr(cfg, key) not in (None, False):
                raise ConfigError(f"{key} is implemented for task causal_lm only, not task {cfg.task}")
        if cfg.finetuning_type == "oft":
            raise ConfigError(f"finetuning_type oft is implemented for task causal_lm only, not task {cfg.task}")
    _check_adapter_methods(cfg)
    _check_optimizers(cfg)
    if cfg.streaming:
        _check_streaming(cfg)


def _check_adapter_methods(cfg) -> None:
    if cfg.loraplus_lr_ratio is not None and cfg.finetuning_type not in ("lora", "qlora"):
        raise ConfigError("loraplus_lr_ratio sets the learning rate of LoRA's B matrices; it needs finetuning_type lora")
    if cfg.pissa_convert and not cfg.pissa_init:
        raise ConfigError("pissa_convert converts a PiSSA adapter; set pissa_init: true as well")
    if not cfg.pissa_init:
        return
    if cfg.finetuning_type == "qlora":
        raise ConfigError("pissa_init needs the full-precision weights for its SVD; it cannot start from a quantized "
                          "base (drop quantization_bit)")
    if cfg.finetuning_type != "lora":
        raise ConfigError("pissa_init initialises LoRA adapters; it needs finetuning_type lora")
    if cfg.adapter_name_or_path:
        raise ConfigError("pissa_init makes new adapters from the base weights; it cannot continue adapter_name_or_path")
    with_reference = cfg.stage == "kto" or (cfg.stage == "dpo" and cfg.pref_loss not in ("orpo", "simpo"))
    if with_reference and not cfg.ref_model:
        raise ConfigError(f"pissa_init changes the base weights, so the base with adapters off is no longer stage "
                          f"{cfg.stage}'s reference model; set ref_model or drop pissa_init")


def _check_optimizers(cfg) -> None:
    chosen = [key for key in OPTIMIZER_SWITCHES if getattr(cfg, key)]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} are all set; choose one optimizer")
    if not chosen:
        return
    key = chosen[0]
    if key in FULL_WEIGHT_ONLY and cfg.finetuning_type in ("lora", "qlora", "oft"):
        raise ConfigError(f"{key} updates whole weights and cannot train adapters; use finetuning_type full "
                          f"(or freeze) instead of {cfg.finetuning_type}")
    if key == "use_badam" and cfg.finetuning_type != "full":
        raise ConfigError("use_badam chooses the trainable layers itself; it needs finetuning_type full")
    if cfg.optim != "adamw":
        raise ConfigError(f"{key} brings its own optimizer (an AdamW variant) in place of optim; "
                          f"leave optim at adamw, not {cfg.optim}")
    if cfg.distributed_strategy == "fsdp":
        raise ConfigError(f"{key} works on whole weights, not FSDP shards; use distributed_strategy ddp")
    if cfg.use_badam and cfg.resume_from_checkpoint not in (None, "false"):
        raise ConfigError("use_badam cannot resume: BAdam's active block and its step count are not part of its "
                          "saved state (load_from_checkpoint starts a new run from the weights)")
    if cfg.use_badam and cfg.nproc_per_node * cfg.nnodes > 1:
        raise ConfigError("use_badam changes which weights train during the run, which DDP fixes at the start; "
                          "run it in one process")
    if cfg.use_badam and cfg.badam_mode == "ratio":
        raise ConfigError("badam_mode ratio (a sparse mask inside each weight) is not available; use badam_mode layer")


def _check_streaming(cfg) -> None:
    if cfg.task != "causal_lm" or cfg.stage not in ("pt", "sft"):
        raise ConfigError(f"streaming reads stages pt and sft of task causal_lm, not {cfg.task} stage {cfg.stage}")
    if cfg.max_steps <= 0:
        raise ConfigError("streaming needs max_steps: the length of a stream is not known before it is read")
    if cfg.val_size > 0:
        raise ConfigError("streaming cannot hold out val_size from a stream; give validation data as eval_dataset")
    if cfg.tokenized_path:
        raise ConfigError("streaming tokenises as it reads and saves nothing; drop tokenized_path or streaming")
    if cfg.eval_strategy == "epoch":
        raise ConfigError("streaming has no known epoch length; use eval_strategy steps")
