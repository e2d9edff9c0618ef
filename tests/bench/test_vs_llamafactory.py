"""The LLaMA-Factory comparison's plumbing, without LLaMA-Factory: no venv is made, nothing trains.

The process-tree peak must add up memory held by a process and its descendants at the same time
(where LLaMA-Factory's and ember's worker processes would hold it), which the kernel's ru_maxrss
(the largest single process) misses; the shared YAML
must pass ember's config check with LLaMA-Factory's CPU flag; the torchaudio stand-in must import
and refuse audio in one clear sentence.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import llamafactory_venv  # noqa: E402
import process_tree  # noqa: E402
import vs_llamafactory  # noqa: E402


def test_tree_peak_sums_processes_that_hold_memory_at_the_same_time(tmp_path):
    hold = "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096])"  # 200 MB, every page touched
    grandchild = hold + "; import time; time.sleep(1.0)"
    child = f"import subprocess, sys; {hold}; subprocess.run([sys.executable, '-c', {grandchild!r}], check=True)"
    measured = process_tree.run_measured([sys.executable, "-c", child], tmp_path / "log.txt", interval=0.02)
    assert measured["returncode"] == 0
    # both 200 MB at once, each counted once (the kernel's ru_maxrss only sees the largest process)
    assert 400 <= measured["tree_peak_rss_mb"] < 600


def test_shared_yaml_is_accepted_by_ember_with_llamafactorys_cpu_flag(tmp_path):
    checked = vs_llamafactory.dry_run(tmp_path)
    text = Path(checked["yaml"]).read_text()
    assert "use_cpu: true" in text and "finetuning_type: lora" in text
    assert checked["device"] == "cpu"  # use_cpu read as ember's device: cpu
    assert (checked["stage"], checked["finetuning_type"]) == ("sft", "lora")
    assert checked["cutoff_len"] == vs_llamafactory.QUICK[1]
    # the model folder both read: an HF config, safetensors weights and the tokenizer
    names = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names


def test_torchaudio_standin_imports_and_refuses_audio_clearly():
    module: dict = {}
    exec(compile(llamafactory_venv.TORCHAUDIO_STANDIN, "torchaudio/__init__.py", "exec"), module)
    for call in (module["load"], module["functional"].resample):
        with pytest.raises(RuntimeError, match="audio datasets cannot be read"):
            call("clip.wav")
