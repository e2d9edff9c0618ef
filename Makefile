# Every target sets up .venv itself, so a fresh clone needs nothing installed by hand.
# torch is pinned in the same pip command as the project so pip never pulls a CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-memory clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[dev]"
	# LPIPS heads for the video VAE's perceptual loss; --no-deps: lpips asks for torchvision, whose only
	# wheels for torch 2.13 are CUDA builds that do not import beside the CPU torch (ember builds the trunk)
	$(PY) -m pip install --quiet --no-deps "$(TORCH)" "lpips==0.1.4"
	# the browser tests/web drives (Debian's chromium; no browser is downloaded at test time)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || \
		echo "chromium could not be installed: tests/web's browser tests will be skipped"
	touch $(STAMP)

# pretrains the ~4M-parameter demo model into runs/llm_pretrain (the base the sft_* examples start from)
demo: $(STAMP)
	$(VENV)/bin/ember train examples/llm_pretrain.yaml overwrite_output_dir=true
	$(VENV)/bin/ember generate runs/llm_pretrain --prompt "The return statement" --max_new_tokens 60

test: $(STAMP)
	$(PY) -m pytest

# ember against transformers' Trainer, LLaMA-Factory (its own venv in bench/.lf-venv, made on first
# use), a hand-written loop and the machine's matmul peak; writes bench/results.json (under 25 minutes
# on 2 CPU cores; see docs/benchmarks.md). Not part of `make test`.
bench: $(STAMP)
	$(PY) bench/run_all.py

# peak memory of LoRA SFT on a 0.5B model at cutoff_len 2048 and 4096, ember vs LLaMA-Factory (~30-60
# minutes on 2 CPU cores, so apart from `make bench`); adds mem_lora_*_vs_lf to bench/results.json
bench-memory: $(STAMP)
	$(PY) bench/memory_long_context.py

clean:
	rm -rf $(VENV) runs bench/.lf-venv
