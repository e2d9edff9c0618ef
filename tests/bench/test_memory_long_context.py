"""The long-context memory comparison reuses LLaMA-Factory's recorded row only for the same run shape."""
from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import memory_long_context as mlc  # noqa: E402


def test_llamafactorys_row_is_reused_only_for_the_same_length_steps_and_model(tmp_path, monkeypatch):
    model = {**mlc.QWEN2_05B, "vocab_size": mlc.QWEN2_05B_VOCAB}
    lf = {"peak_rss_mb": 7163.2, "tokens": [2048, 2048]}
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"memory_long_context": {"model": model, "cutoffs": {
        "2048": {"lf": lf, "ember": {}, "steps": 2}}}}))
    monkeypatch.setattr(mlc, "RESULTS", results)
    assert mlc.recorded_lf(2048, 2) == {**lf, "reused": True}
    assert mlc.recorded_lf(2048, 1) is None   # another step count
    assert mlc.recorded_lf(4096, 2) is None   # another length
    results.write_text(json.dumps({"memory_long_context": {"model": {**model, "num_hidden_layers": 2}, "cutoffs": {
        "2048": {"lf": lf, "ember": {}, "steps": 2}}}}))
    assert mlc.recorded_lf(2048, 2) is None   # another model
