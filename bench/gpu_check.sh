#!/usr/bin/env bash
# ember on a GPU, in one go (under 10 minutes on one H100): set up, the CUDA-marked tests, then
# MFU of a ~1B Llama (bf16, compile, seq 2048, gradient_checkpointing off and on) as one JSON
# line, the last line printed. Without a GPU it runs bench/gpu_check.py's dry mode instead.
#
#   bash bench/gpu_check.sh            # PY=/path/to/python to use a given interpreter
set -euo pipefail
cd "$(dirname "$0")/.."

has_cuda() { "$1" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; }

if ! nvidia-smi -L >/dev/null 2>&1; then
    exec "${PY:-.venv/bin/python}" bench/gpu_check.py --dry
fi

# an interpreter whose torch sees the GPU: the one given, the project's, else a fresh venv with
# torch pinned as everywhere (the default Linux wheel on PyPI is the CUDA build)
PY=${PY:-}
for candidate in "$PY" .venv-gpu/bin/python .venv/bin/python python3; do
    if [ -n "$candidate" ] && has_cuda "$candidate"; then PY=$candidate; break; fi
    PY=
done
if [ -z "$PY" ]; then
    python3 -m venv .venv-gpu
    .venv-gpu/bin/python -m pip install --quiet "torch==2.13.0" -e ".[dev]"
    PY=.venv-gpu/bin/python
fi
"$PY" -c "import ember" 2>/dev/null || "$PY" -m pip install --quiet --no-deps -e .

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2
# the GPU-only paths first: a number measured on a broken path would mean nothing
timeout 240 "$PY" -m pytest -m cuda tests -q -p no:cacheprovider >&2
timeout 420 "$PY" bench/gpu_check.py
