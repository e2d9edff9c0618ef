"""The rest of LLaMA-Factory 0.9.5's own keys (its hparams dataclasses) that ember does not implement,
each with the reason, so a LLaMA-Factory YAML never meets a bare 'unknown key'. foreign.py merges these
into its two tables: accepted with a notice (changes nothing here) or refused when set (would change
the result)."""
from __future__ import annotations

_MULTIMODAL = "LLaMA-Factory's multimodal models are not trained by ember; its VLM is nanoVLM's (task: vlm)"
_PPO = "PPO is not available; stages are pt, sft, rm, dpo, orpo, simpo and kto"
_BENCHMARK = ("LLaMA-Factory's benchmark evaluation (llamafactory-cli eval) is not in ember; "
              "eval_command runs an evaluator on each checkpoint")
_NO_HUB = "ember downloads nothing: models and data are local folders"
_KT = "KTransformers is not used"
_GENERATION = "a generation setting: it applies to inference (ember generate / chat), not to training"
_ENGINE = "an inference-engine setting; ember generate uses transformers"
_GPTQ = "GPTQ export is not available; ember export writes the merged model in full precision"

NO_EFFECT_LF = {
    "cache_dir": _NO_HUB, "hf_hub_token": _NO_HUB, "ms_hub_token": _NO_HUB, "om_hub_token": _NO_HUB,
    "model_revision": "a local model folder has no revisions",
    "low_cpu_mem_usage": "weights are loaded the way transformers loads them by default",
    "offload_folder": "no device-map offloading is used",
    "use_fast_tokenizer": "the tokenizer is the folder's own (fast when it ships tokenizer.json)",
    "use_kv_cache": "training never uses the KV cache; ember generate does",
    "use_reentrant_gc": "gradient checkpointing is always the non-reentrant kind",
    "use_unsloth_gc": "unsloth is not used",
    "use_v1_kernels": "LLaMA-Factory's fused kernels are not used; results are the same",
    "infer_dtype": "ember generate runs in the model's own dtype",
    "resize_vocab": "the embeddings are always resized when the tokenizer has more tokens",
    "data_shared_file_system": "every rank tokenises for itself",
    "ignore_pad_token_for_loss": "padding never carries loss",
    "preprocessing_batch_size": "ember groups pretraining text in batches of 1000 documents, LLaMA-Factory's default",
    "asft_alpha": "applies only with use_asft_loss, which is not available",
    "eaft_alpha": "applies only with use_eaft_loss, which is not available",
    "include_effective_tokens_per_second": "tokens_per_sec is always logged",
    "fp8_backend": "applies only with fp8, which is not available",
    "fp8_enable_fsdp_float8_all_gather": "applies only with fp8, which is not available",
    "quantization_device_map": "the quantized base is placed on the run's device",
    "swanlab_project": "applies only with use_swanlab", "swanlab_workspace": "applies only with use_swanlab",
    "swanlab_run_name": "applies only with use_swanlab", "swanlab_mode": "applies only with use_swanlab",
    "swanlab_api_key": "applies only with use_swanlab", "swanlab_logdir": "applies only with use_swanlab",
    "swanlab_lark_webhook_url": "applies only with use_swanlab", "swanlab_lark_secret": "applies only with use_swanlab",
    **{key: "applies only with enable_torch_profiler, which is not available" for key in (
        "profile_modules", "profiler_active_steps", "profiler_output_dir", "profiler_profile_memory",
        "profiler_record_shapes", "profiler_repeat", "profiler_wait_steps", "profiler_warmup_steps",
        "profiler_with_stack")},
    **{key: _GENERATION for key in ("do_sample", "temperature", "top_p", "top_k", "num_beams", "max_length",
                                    "max_new_tokens", "repetition_penalty", "length_penalty", "skip_special_tokens")},
    **{key: _ENGINE for key in ("vllm_maxlen", "vllm_gpu_util", "vllm_enforce_eager", "vllm_max_lora_rank",
                                "vllm_config", "sglang_maxlen", "sglang_mem_fraction", "sglang_tp_size",
                                "sglang_config", "sglang_lora_backend")},
}

INSTEAD_LF = {
    "adapter_folder": "use adapter_name_or_path (a PEFT adapter folder)",
    "add_tokens": "adding tokens is not available; add them to the tokenizer folder (embeddings are resized to it)",
    "add_special_tokens": "adding tokens is not available; add them to the tokenizer folder (embeddings are resized to it)",
    "new_special_tokens_config": "adding tokens is not available; add them to the tokenizer folder",
    "init_special_tokens": "adding tokens is not available; add them to the tokenizer folder",
    "split_special_tokens": "special tokens written in the text are always kept whole",
    "upcast_lmhead_output": "not available; ember's loss takes the head's output through its own fused cross-entropy",
    "mixture_of_depths": "mixture-of-depths conversion is not available",
    "moe_aux_loss_coef": "set router_aux_loss_coef in the model's config.json",
    "train_from_scratch": "use model_config (a preset or config.json) to train from random weights",
    "block_diag_attn": "use packing: true, which always isolates the packed samples",
    "compute_dtype": "set by LLaMA-Factory itself; ember's precision keys are fp16, bf16, pure_bf16",
    "device_map": "set by LLaMA-Factory itself; ember's is device (auto, cpu, cuda)",
    "model_max_length": "set by LLaMA-Factory itself from cutoff_len; use cutoff_len",
    "eval_num_beams": "evaluation by generation (predict_with_generate) is not available",
    "eval_on_each_dataset": "evaluation is on the datasets of eval_dataset joined",
    "interleave_probs": "interleaved mixing is not available; datasets are concatenated",
    "media_dir": _MULTIMODAL,
    "audio_sampling_rate": _MULTIMODAL, "crop_to_patches": _MULTIMODAL, "image_do_pan_and_scan": _MULTIMODAL,
    "use_audio_in_video": _MULTIMODAL,
    "lang": _BENCHMARK, "n_shot": _BENCHMARK, "save_dir": _BENCHMARK, "task_dir": _BENCHMARK, "download_mode": _BENCHMARK,
    "export_hub_model_id": "ember uploads nothing; ember export writes a local folder",
    "export_quantization_maxlen": _GPTQ, "export_quantization_nsamples": _GPTQ,
    "use_dft_loss": "the DFT loss is not available; sft trains with token cross-entropy",
    "use_asft_loss": "the ASFT loss is not available; sft trains with token cross-entropy",
    "use_eaft_loss": "the EAFT loss is not available; sft trains with token cross-entropy",
    "compute_accuracy": "token accuracy in evaluation is not available; eval_loss is logged",
    "disable_shuffling": "training order is always a seeded shuffle per epoch",
    "early_stopping_steps": "early stopping is not available; load_best_model_at_end keeps the best checkpoint",
    "use_mca": "Megatron training is not available; use distributed_strategy: fsdp",
    "use_hyper_parallel": "hyper-parallel training is not available; use distributed_strategy: fsdp",
    "hyper_parallel_args": "hyper-parallel training is not available; use distributed_strategy: fsdp",
    "fp8": "FP8 training is not available; use bf16",
    "enable_torch_profiler": "the torch profiler is not built into ember train",
    "use_swanlab": "SwanLab is not available; use report_to: tensorboard, wandb or mlflow",
    "ray_init_kwargs": "Ray is not used; start several processes with nproc_per_node (torchrun)",
    "ld_alpha": "LD-DPO is not available",
    "ppo_buffer_size": _PPO, "ppo_epochs": _PPO, "ppo_score_norm": _PPO, "ppo_target": _PPO,
    "ppo_whiten_rewards": _PPO, "reward_model_adapters": _PPO, "reward_model_quantization_bit": _PPO,
    "reward_model_type": _PPO,
    "use_kt": _KT, "kt_weight_path": _KT, "kt_expert_checkpoint_path": _KT, "kt_use_lora_experts": _KT,
    "kt_lora_expert_num": _KT, "kt_lora_expert_intermediate_size": _KT,
}
