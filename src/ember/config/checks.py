"""Rules that involve more than one key; each failure names the keys involved."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ConfigError
from .eval_command import parse_eval_command
from .method_checks import check_methods
from .schema import FAMILY_GROUPS, TrainConfig
from .schema_base import Group


def check_consistency(cfg: TrainConfig) -> None:
    """Refuse contradictory settings before any work is done."""
    precisions = [k for k in ("fp16", "bf16", "pure_bf16") if getattr(cfg, k)]
    if len(precisions) > 1:
        raise ConfigError(f"{' and '.join(precisions)} are both set; choose one precision")
    if cfg.max_steps <= 0 and cfg.num_train_epochs <= 0:
        raise ConfigError("neither max_steps nor num_train_epochs is positive; set one of them")
    has_validation = cfg.val_size > 0 or bool(cfg.eval_dataset)
    if cfg.eval_strategy in ("steps", "epoch") and not has_validation:
        raise ConfigError(f"eval_strategy is '{cfg.eval_strategy}' but there is nothing to evaluate on; "
                          "set val_size or eval_dataset")
    if cfg.val_size > 0 and cfg.eval_dataset:
        raise ConfigError("val_size and eval_dataset are both set; use one source of validation data")
    if cfg.val_size >= 1 and cfg.val_size != int(cfg.val_size):
        raise ConfigError(f"val_size is a fraction below 1 or a whole count of documents; got {cfg.val_size}")
    own_model = FAMILY_GROUPS.get(cfg.task, Group).brings_its_own_model(cfg)  # e.g. a saved VLM
    if cfg.model_name_or_path is None and cfg.model_config_ is None and not own_model:
        raise ConfigError("no model: set model_name_or_path (a local HF folder) or model_config (a preset or config.json)")
    if cfg.model_name_or_path and cfg.model_config_ is not None:
        raise ConfigError("model_name_or_path and model_config are both set; "
                          "model_config is for training from random weights")
    if cfg.dataset is None:
        raise ConfigError("no training data: set dataset (a name in dataset_info.json or a path)")
    if cfg.lr_scheduler_type == "reduce_lr_on_plateau" and not has_validation:
        raise ConfigError("lr_scheduler_type reduce_lr_on_plateau needs evaluation; set val_size or eval_dataset")
    if cfg.load_best_model_at_end:
        if not has_validation or cfg.eval_strategy == "no":
            raise ConfigError("load_best_model_at_end needs evaluation; set val_size or eval_dataset")
        eval_every = cfg.eval_steps or cfg.logging_steps
        if not cfg.save_steps or cfg.save_steps % eval_every:
            raise ConfigError(f"load_best_model_at_end needs an evaluation at every save: save_steps ({cfg.save_steps}) "
                              f"must be a positive multiple of eval_steps ({eval_every})")
    if cfg.resume_from_checkpoint not in (None, "false", "False") and cfg.load_from_checkpoint:
        raise ConfigError("resume_from_checkpoint and load_from_checkpoint are both set; resume continues a run, "
                          "load_from_checkpoint starts a new one from weights")
    if cfg.finetuning_type == "qlora":
        if cfg.quantization_bit is None:
            raise ConfigError("finetuning_type qlora needs quantization_bit: 4 or 8")
        if not cfg.model_name_or_path:
            raise ConfigError("finetuning_type qlora quantizes pretrained weights; set model_name_or_path")
        if cfg.pure_bf16:
            raise ConfigError("pure_bf16 would cast the quantized base; use bf16 (autocast) with qlora")
    elif cfg.quantization_bit is not None:
        # finetuning_type lora + quantization_bit is read as qlora when the sources are merged (loader)
        raise ConfigError(f"quantization_bit is set but finetuning_type is {cfg.finetuning_type}; a quantized base "
                          "trains only through adapters: use finetuning_type: lora")
    if cfg.task == "causal_lm":
        from ..data.templates import check_template_keys
        check_template_keys(cfg)  # an unknown template or tool format stops here, before any work
    if cfg.packing and cfg.stage != "sft":
        raise ConfigError("packing: true applies to stage sft; stage pt packs cutoff_len blocks unless packing: false "
                          "(then one truncated document per sample)")
    if cfg.adapter_name_or_path and cfg.finetuning_type not in ("lora", "qlora", "oft"):
        raise ConfigError("adapter_name_or_path needs finetuning_type lora, qlora or oft")
    check_methods(cfg)
    if cfg.eval_command:
        parse_eval_command(cfg.eval_command)  # refuses a template a path could turn into code
    if cfg.optim == "adamw_8bit" and cfg.pure_bf16:
        raise ConfigError("optim adamw_8bit keeps its own state precision; drop pure_bf16 or use optim adamw")


def check_output_dir(path: str) -> None:
    """output_dir is (or can be made) a folder ember can write in, found before any work rather
    than as an OS traceback once the data is read. Tried, not inferred from permission bits: root
    passes every permission check, yet cannot make a folder under a file, in /proc or on a
    read-only mount. The probe is an empty folder, removed at once."""
    target = Path(path).absolute()
    existing = target
    while not existing.exists():  # where the missing folders would be made
        existing = existing.parent
    if not existing.is_dir():
        where = "exists and is a file" if existing == target else f"is under {existing}, which is a file"
        raise ConfigError(f"output_dir {path} {where}, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ember-write-test-", dir=existing))
    except OSError as err:
        raise ConfigError(f"output_dir {path} cannot be written: making a folder in {existing} failed "
                          f"({err.strerror})") from None
