"""Task causal_lm: pretraining (stage pt) and supervised fine-tuning (stage sft) of causal LMs,
with full, freeze, LoRA and QLoRA training. Its keys are the shared ones (config/schema.py);
its data and model pieces are shared with the vlm family (data/, models/)."""
