"""bench/gpu_check.sh without a GPU: its dry mode trains a tiny model with gradient_checkpointing off
and on through the same code a GPU run takes, and checks its own JSON line (see bench/gpu_check.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs the full check (minutes)")
def test_dry_mode_prints_one_checked_json_line(tmp_path):
    env = {**os.environ, "PY": sys.executable, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["dry"] is True and [r["gradient_checkpointing"] for r in result["runs"]] == [False, True]
    assert result["runs"][0]["final_loss"] == result["runs"][1]["final_loss"]
