"""The one typed schema of every key a run has.

Keys are flat and named as LLaMA-Factory and HF TrainingArguments name them, so a user's
existing YAML works. Each group below is one topic of `ember train --help`; TrainConfig is
all of them at once. Checks that involve several keys live in `checks.py`.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from ..tasks import FAMILIES, family_key_groups
from .errors import ConfigError
from .method_keys import AdapterMethodsGroup, OptimizerMethodsGroup
from .schema_base import Group

SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
    "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau", "warmup_stable_decay", "nanovlm",
)
OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor", "adamw_8bit")


class TaskGroup(Group):
    """Task and model"""
    task: Literal[tuple(FAMILIES)] = Field("causal_lm", description="which model family to train")  # type: ignore[valid-type]
    stage: Literal["pt", "sft", "rm", "dpo", "orpo", "simpo", "kto"] = Field("pt", description="pt = pretraining on raw text; sft = supervised fine-tuning on conversations; rm = reward model, dpo (orpo, simpo) = preference training, both on ranking datasets; kto = on answers tagged desirable or not (kto_tag)")
    finetuning_type: Literal["full", "freeze", "lora", "qlora", "oft"] = Field("full", description="which weights train: all, some layers, LoRA adapters, LoRA on a quantized base (also lora + quantization_bit, as LLaMA-Factory writes it), or orthogonal adapters (OFT)")
    do_train: bool = Field(True, description="accepted for LLaMA-Factory YAMLs; ember train always trains")
    model_name_or_path: str | None = Field(None, description="local HF model folder to start from")
    model_config_: str | None = Field(None, alias="model_config", description="preset name or path to an HF config.json: train from random init")
    tokenizer_name_or_path: str | None = Field(None, description="tokenizer folder (default: model_name_or_path)")
    trust_remote_code: bool = Field(False, description="allow model code shipped inside a local model folder")


class DataGroup(Group):
    """Data"""
    dataset: str | None = Field(None, description="dataset names from dataset_info.json, or file/folder paths; 'a,b' mixes several")
    eval_dataset: str | None = Field(None, description="datasets used only for evaluation (instead of val_size)")
    dataset_dir: str = Field("data", description="folder holding dataset_info.json and the data files")
    cutoff_len: int = Field(1024, gt=1, description="tokens per training sequence (longer text is cut into blocks)")
    max_samples: int | None = Field(None, gt=0, description="use at most this many documents from each dataset")
    val_size: float = Field(0.0, ge=0, description="held-out validation part: a fraction (<1) or a count of documents")
    preprocessing_num_workers: int | None = Field(None, ge=1, description="processes for tokenisation (datasets num_proc)")
    overwrite_cache: bool = Field(False, description="rebuild the tokenisation cache")
    tokenized_path: str | None = Field(None, description="folder for the tokenised training (and validation) set: saved there by the first run, reused by later ones (as in LLaMA-Factory, whose saved folders it reads too; delete it after changing the data or template)")
    streaming: bool = Field(False, description="stages pt and sft: read the training files lazily, a chunk of rows at a time, instead of whole (LLaMA-Factory's streaming, in file order); needs max_steps and takes validation from eval_dataset; resumes at the next sample")
    dataloader_num_workers: int = Field(0, ge=0, description="worker processes feeding batches")
    template: str | None = Field(None, description="LLaMA-Factory chat template name (qwen3, llama3, ...); unset: the tokenizer's own chat_template, else empty")
    tool_format: str | None = Field(None, description="tool-call format instead of the template's: default, qwen, llama3, mistral, glm4")
    default_system: str | None = Field(None, description="system prompt replacing the template's default one")
    enable_thinking: bool | None = Field(True, description="reasoning templates (qwen3): empty thoughts added to answers are trained on; false: part of the prompt")
    preserve_thinking: bool = Field(False, description="reasoning templates with mask_history: keep the thoughts of earlier turns")
    overlong: Literal["truncate", "drop"] = Field("truncate", description="sft: a sample longer than cutoff_len is cut as LLaMA-Factory does (truncate) or left out (drop)")
    packing: bool | None = Field(None, description="sft: pack several samples per sequence, isolated by position_ids; pt: packed unless false (then one truncated document per sample)")
    train_on_prompt: bool = Field(False, description="sft: also compute loss on prompt tokens")
    mask_history: bool = Field(False, description="sft: train only on the last assistant turn of each conversation")


class BatchGroup(Group):
    """Batch and length of training"""
    per_device_train_batch_size: int = Field(8, gt=0, description="sequences per device per micro-step")
    per_device_eval_batch_size: int = Field(8, gt=0, description="sequences per device per evaluation batch")
    gradient_accumulation_steps: int = Field(1, gt=0, description="micro-steps per optimizer step")
    num_train_epochs: float = Field(3.0, ge=0, description="passes over the training data (when max_steps is not set)")
    max_steps: int = Field(-1, description="optimizer steps to run; overrides num_train_epochs when > 0")


class OptimGroup(OptimizerMethodsGroup):  # its use_* keys (GaLore, ..., Muon) are part of choosing the optimizer
    """Optimizer"""
    optim: Literal[OPTIMIZERS] = Field("adamw", description="optimizer; adamw_8bit needs bitsandbytes")  # type: ignore[valid-type]
    learning_rate: float = Field(5e-5, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay (never applied to biases and norm weights)")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="Adam beta1")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2")
    adam_epsilon: float = Field(1e-8, gt=0, description="Adam epsilon")
    momentum: float = Field(0.0, ge=0, description="SGD momentum")
    max_grad_norm: float = Field(1.0, ge=0, description="clip the global gradient norm to this; 0 turns clipping off")


class ScheduleGroup(Group):
    """Learning-rate schedule"""
    lr_scheduler_type: Literal[SCHEDULERS] = Field("linear", description="shape of the learning rate over training; nanovlm = warmup over 3% of steps, cosine to 10% of the peak")  # type: ignore[valid-type]
    warmup_steps: int = Field(0, ge=0, description="steps of linear warmup from 0 (wins over warmup_ratio)")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="warmup as a fraction of all steps")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="floor of decaying schedules, as a fraction of the peak")
    num_cycles: float | None = Field(None, gt=0, description="cosine waves: default 0.5 (one decay) for cosine, 1 for cosine_with_restarts")
    power: float = Field(1.0, gt=0, description="polynomial decay power")
    decay_ratio: float = Field(0.1, ge=0, le=1, description="warmup_stable_decay: fraction of steps spent decaying")
    plateau_patience: int = Field(3, ge=0, description="reduce_lr_on_plateau: evaluations without improvement before cutting")
    plateau_factor: float = Field(0.1, gt=0, lt=1, description="reduce_lr_on_plateau: multiply the LR by this when cutting")


class PrecisionGroup(Group):
    """Precision and device"""
    # amp_level is seed 000's MindSpore-style policy, mapped onto PyTorch's: O0 fp32 everywhere
    # whatever the precision keys say; O1 and O2 autocast in the chosen precision; O3 everything
    # in bf16, weights included (pure_bf16), which needs bf16. In the video VAE O1 also keeps the
    # norms' outputs in fp32 and O2 casts them back to the low precision, so activations travel in
    # it as MindSpore's O2 has them (tasks/video_vae/precision_policy.py).
    fp16: bool = Field(False, description="fp16 autocast with a dynamic loss scale (for GPUs; slow on CPUs)")
    bf16: bool = Field(False, description="bf16 autocast, fp32 weights")
    pure_bf16: bool = Field(False, description="bf16 weights and compute, no autocast")
    init_loss_scale: float = Field(65536.0, gt=0, description="fp16: initial loss scale of the GradScaler")
    device: str = Field("auto", description="auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    seed: int = Field(42, description="seed for weights, data order and dropout; same seed, same run on CPU")
    compile: bool = Field(False, description="torch.compile each transformer block (fuses the work between matmuls; the first steps compile)")
    gradient_checkpointing: bool = Field(False, description="recompute each repeated block's activations in backward instead of keeping them (activation checkpointing): much less memory at long sequences, ~25-35% more compute; LLaMA-Factory's disable_gradient_checkpointing: true turns it off")
    gradient_checkpointing_every: int = Field(1, gt=0, description="gradient_checkpointing: recompute only every k-th block (1 = all); larger k keeps more activations and runs faster")
    malloc_mmap_threshold_kb: int | None = Field(None, ge=0, le=32768, description="host memory: CPU tensors above this many KB go back to the system when freed (glibc's mmap threshold, fixed at start-up), at the price of page faults when they are made again; 0 keeps glibc's sliding threshold, which holds a run's peak to the end; default: 2048 on a CPU run with gradient_checkpointing (a run that chose memory over speed), else 0")
    mfu_peak_flops: float | None = Field(None, gt=0, description="peak FLOP/s per device that the logged mfu divides by (default: measured at start-up with a matmul in the run's dtype)")
    amp_level: Literal["O0", "O1", "O2", "O3"] | None = Field(None, description="mixed-precision policy (seed 000): O0 fp32, O1/O2 autocast, O3 pure bf16")

    @model_validator(mode="after")
    def _apply_amp_level(self):
        """amp_level is read as the precision keys it stands for (part of parsing, like an alias)."""
        if self.amp_level == "O0":
            self.fp16 = self.bf16 = self.pure_bf16 = False
        elif self.amp_level == "O3":
            if self.fp16:
                raise ConfigError("amp_level O3 (pure low precision) needs precision bf16; fp16 weights would "
                                  "underflow — use amp_level O2 with precision fp16")
            if self.bf16:
                self.bf16, self.pure_bf16 = False, True
        return self


class EvalGroup(Group):
    """Evaluation"""
    eval_strategy: Literal["no", "steps", "epoch"] | None = Field(None, description="when to evaluate (default: steps when there is validation data)")
    eval_steps: int | None = Field(None, gt=0, description="evaluate every N steps (default: logging_steps)")
    eval_on_start: bool = Field(False, description="evaluate once before the first step (shows where the loss started)")
    max_eval_batches: int | None = Field(None, gt=0, description="cap on batches per evaluation")
    eval_command: str | None = Field(None, description="command run in the background, without a shell, on every saved checkpoint ({checkpoint}, {step}, {output} are filled in inside their arguments, also in $EMBER_CHECKPOINT/$EMBER_STEP/$EMBER_OUTPUT; for a pipeline: sh -c '... \"$1\" ...' _ {checkpoint}); the JSON it writes to {output} or prints as its last JSON line is logged as external/* at that checkpoint's step")


class OutputGroup(Group):
    """Output, logging and checkpoints"""
    output_dir: str = Field("runs/ember", description="where config, metrics, checkpoints and the final model go")
    overwrite_output_dir: bool = Field(False, description="allow writing into a non-empty output_dir (deletes ember's old outputs there)")
    logging_steps: int = Field(10, gt=0, description="log metrics every N steps")
    save_steps: int = Field(500, ge=0, description="write a checkpoint every N steps; 0 = only the final model")
    plot_loss: bool = Field(False, description="write training_loss.png (and training_eval_loss.png)")
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = Field("none", description="metrics backend besides metrics.jsonl; wandb runs offline (synced later with `wandb sync`) unless WANDB_API_KEY or WANDB_MODE say otherwise; mlflow writes to MLFLOW_TRACKING_URI, by default a file store in output_dir/mlruns")
    run_name: str | None = Field(None, description="name of the run in logs and trackers (default: built from the model, batch, steps, learning rates and date)")
    disable_tqdm: bool = Field(False, description="plain log lines instead of a progress bar")


class CheckpointGroup(Group):
    """Checkpoints, resume and best model"""
    save_total_limit: int | None = Field(None, gt=0, description="keep the N newest checkpoints (the best one is kept besides)")
    save_only_model: bool = Field(False, description="checkpoints hold weights only: smaller, but resume cannot be exact")
    resume_from_checkpoint: str | None = Field(None, description="continue a run: a checkpoint folder, or true/auto for the newest complete one in output_dir")
    load_from_checkpoint: str | None = Field(None, description="start from these weights only (checkpoint or HF folder, .safetensors, .ckpt/.pt/.bin)")
    ignore_mismatched_sizes: bool = Field(False, description="load_from_checkpoint: skip weights whose name or shape does not fit")
    @field_validator("resume_from_checkpoint", mode="before")
    @classmethod
    def _bool_as_text(cls, value):
        return str(value).lower() if isinstance(value, bool) else value

    metric_for_best_model: str = Field("eval_loss", description="evaluation metric that picks the best checkpoint")
    greater_is_better: bool | None = Field(None, description="higher metric is better (default: false for metrics named *loss)")
    load_best_model_at_end: bool = Field(False, description="export the best checkpoint's weights, not the last step's")


class FinetuneGroup(Group):
    """Fine-tuning methods (freeze, LoRA, QLoRA)"""
    freeze_trainable_layers: int = Field(2, description="freeze: train the last N decoder layers (N > 0) or the first -N (N < 0)")
    freeze_trainable_modules: str = Field("all", description="freeze: modules trained inside those layers, e.g. mlp,self_attn (all = every one)")
    freeze_extra_modules: str | None = Field(None, description="freeze: modules outside the layers to train too, e.g. embed_tokens,norm")
    lora_rank: int = Field(8, gt=0, description="LoRA rank r")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA scaling alpha (default: 2 × lora_rank)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA path")
    lora_target: str = Field("all", description="module names that get adapters, comma-separated; all = every linear layer but the output head")
    additional_target: str | None = Field(None, description="modules trained fully and saved with the adapter, e.g. embed_tokens,lm_head")
    use_dora: bool = Field(False, description="weight-decomposed LoRA (DoRA)")
    use_rslora: bool = Field(False, description="rank-stabilised LoRA scaling (alpha / sqrt(r))")
    quantization_bit: Literal[4, 8] | None = Field(None, description="qlora: bits of the frozen base (bitsandbytes)")
    quantization_type: Literal["nf4", "fp4"] = Field("nf4", description="qlora 4-bit data type")
    double_quantization: bool = Field(True, description="qlora: also quantize the quantization constants")
    adapter_name_or_path: str | None = Field(None, description="an existing PEFT adapter to continue training")


class DistributedGroup(Group):
    """Distributed training (torchrun)"""
    distributed_strategy: Literal["ddp", "fsdp"] = Field("ddp", description="ddp: replicate the model; fsdp: shard weights, grads and optimizer state (FSDP2)")
    fsdp_cpu_offload: bool = Field(False, description="fsdp: keep sharded parameters and optimizer state in CPU memory")
    ddp_timeout: int = Field(1800, gt=0, description="seconds a collective may wait before the run fails")
    nproc_per_node: int = Field(1, gt=0, description="processes per machine; > 1 makes `ember train` start torchrun itself")
    nnodes: int = Field(1, gt=0, description="machines in the run (with nproc_per_node)")
    node_rank: int = Field(0, ge=0, description="this machine's index among nnodes")
    master_addr: str = Field("127.0.0.1", description="address of node 0 for the rendezvous")
    master_port: int = Field(29500, gt=0, lt=65536, description="port of node 0 for the rendezvous")
    max_restarts: int = Field(0, ge=0, description="torchrun restarts after a failed process; each restart resumes from the newest checkpoint")


# each family's own keys live beside its task (tasks/<family>/keys.py), named by the registry
FAMILY_GROUPS: dict[str, type[Group]] = family_key_groups()

GROUPS: tuple[type[Group], ...] = (
    TaskGroup, DataGroup, BatchGroup, OptimGroup, ScheduleGroup, PrecisionGroup, EvalGroup, OutputGroup, CheckpointGroup,
    FinetuneGroup, AdapterMethodsGroup, DistributedGroup, *FAMILY_GROUPS.values(),
)


class TrainConfig(*GROUPS):  # type: ignore[misc]
    """Every key of a training run."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True,
                              coerce_numbers_to_str=True)

    def part(self, *groups: type[Group]) -> SimpleNamespace:
        """Only the keys of these groups: what one component is built from. Reading any other key
        from it fails, so a component's dependence on the config is what its constructor says."""
        return SimpleNamespace(**{name: getattr(self, name) for group in groups for name in group.model_fields})

    def to_dict(self) -> dict:
        """The resolved config as plain YAML-able values, under the keys users write."""
        return self.model_dump(mode="json", by_alias=True)


def field_names() -> list[str]:
    """Every key a user may write (aliases excluded)."""
    return [f.alias or name for name, f in TrainConfig.model_fields.items()]
