"""The benchmark's own arithmetic and data, checked without timing anything.

The bench must count FLOPs exactly as ember's training-time `mfu` does, feed every contender
the same SFT tokens, and turn step logs into tokens/s as its docs say.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import workloads  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return workloads.load_tokenizer()


def test_bench_flops_match_the_task_hook_behind_the_logged_mfu(tokenizer, make_config, tmp_path):
    from ember.tasks import build_task
    config = workloads.model_config("10m", tokenizer)
    (tmp_path / "config.json").write_text(json.dumps(config))
    task = build_task(make_config(model_config=str(tmp_path / "config.json"),
                                  tokenizer_name_or_path=str(workloads.TOKENIZER)))
    model = task.build_model()
    batch = {"input_ids": torch.zeros(2, 256, dtype=torch.long)}
    assert task.flops(model, batch) == 2 * 256 * harness.flops_per_token(config, 256)


def test_models_have_the_advertised_sizes(tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM
    for name, millions in (("10m", 10.6), ("50m", 49.6)):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**workloads.model_config(name, tokenizer)))
        non_embedding = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
        assert non_embedding / 1e6 == pytest.approx(millions, abs=0.1), name


def test_sft_rows_are_encoded_as_ember_encodes_them(tokenizer, tmp_path):
    """The Trainer and bare-loop contenders tokenise SFT rows themselves; ember's template
    'default' must give the very same ids and labels, or the comparison is not like for like."""
    from ember.data.registry import DatasetSpec
    from ember.data.sft import encode_conversation, to_messages
    from ember.data.templates import ensure_chat_template
    ensure_chat_template(tokenizer, "default")
    rows = json.loads(workloads.write_sft_set(tmp_path, 40).read_text())
    spec = DatasetSpec(name="sft", path=tmp_path / "sft.json",
                       columns={"prompt": "instruction", "query": "input", "response": "output"})
    assert any(row["input"] for row in rows) and not all(row["input"] for row in rows)
    for row in rows:
        ids, labels, _ = encode_conversation(to_messages(row, spec), tokenizer, 512)
        assert (ids, labels) == workloads.encode_sft_row(row, tokenizer, 512)


def test_sft_lengths_are_skewed_like_alpaca(tokenizer, tmp_path):
    rows = json.loads(workloads.write_sft_set(tmp_path, 1000).read_text())
    lengths = sorted(len(workloads.encode_sft_row(r, tokenizer, 10_000)[0]) for r in rows)
    median, p90, longest = lengths[500], lengths[900], lengths[-1]
    assert 80 < median < 160 and p90 > 2 * median and longest > 4 * median


def test_tokens_per_second_from_step_ends():
    raw = {"ends": [10.0, 11.0, 12.0, 14.0, 15.0, 16.0], "cpu_ends": [0, 1, 2, 3, 4, 5],
           "tokens": [100, 100, 100, 100, 100, 100], "launched": 4.0, "peak_rss_mb": 1.0, "wall_s": 20.0}
    fixed = harness.summarise(raw, warmup=1, aggregate=False)  # timed: steps 2..5 → 1, 2, 1, 1 s
    assert fixed["tokens_per_s"] == 100 and fixed["timed_steps"] == 4 and fixed["first_step_s"] == 6.0
    assert harness.summarise(raw, warmup=1, aggregate=True)["tokens_per_s"] == 400 / 5
    assert harness.summarise(raw, warmup=1, aggregate=False, clock="cpu")["tokens_per_s"] == 100


def _row(tokens_per_s: float, rss: float, mfu: float | None = None) -> dict:
    return {"tokens_per_s": tokens_per_s, "peak_rss_mb": rss, **({"mfu": mfu} if mfu is not None else {})}


def test_headline_takes_the_faster_ember_and_the_worst_case_over_workloads():
    """results.json's ratios: per workload ember's faster configuration against Trainer, eager
    ember against the bare loop; the headline is the least favourable workload."""
    import run_all
    pretrain = {"models": {
        "10m": {"contenders": {"trainer": _row(100, 1000), "bare": _row(110, 1000), "ember": _row(105, 900, 0.5),
                               "ember_compile": _row(130, 800, 0.6)}},
        "50m": {"contenders": {"trainer": _row(50, 2000), "bare": _row(50, 2000), "ember": _row(55, 2100, 0.75),
                               "ember_compile": _row(52, 1900, 0.7)}}}}
    sft = {"contenders": {"trainer": _row(10, 3000), "bare": _row(25, 3000), "ember": _row(30, 2500),
                          "ember_compile": _row(31, 2400)}}
    results = run_all.headline(pretrain, sft, None)
    assert results["fixed_vs_trainer"] == pytest.approx(55 / 50)  # 50m, eager was faster there
    assert results["details"]["vs_trainer"]["pretrain_10m"] == pytest.approx(1.3)
    assert results["sft_vs_trainer"] == pytest.approx(3.1)
    assert results["vs_bare_loop"] == pytest.approx(105 / 110)  # eager ember against the loop, 10m
    assert results["rss_vs_trainer"] == pytest.approx(2100 / 2000)  # the configuration whose speed was taken
    assert results["mfu_50m"] == 0.75
    assert results["targets_met"] == {"fixed_vs_trainer": False, "sft_vs_trainer": True, "vs_bare_loop": False,
                                      "rss_vs_trainer": False, "mfu_50m": True}
    assert "fixed_vs_trainer_bf16" not in results


def test_a_failing_contender_is_named_with_the_end_of_its_log(tmp_path):
    (tmp_path / "spec").mkdir()
    with pytest.raises(harness.ContenderFailed, match=r"contender missing failed \(exit 2\)[\s\S]*contender_missing\.py"):
        harness.run_contender("missing", {"threads": 1}, tmp_path / "spec")


def test_results_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    harness.save_json(path, {"fixed_vs_trainer": 1.0})
    monkeypatch.setattr(harness.os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        harness.save_json(path, {"fixed_vs_trainer": 2.0})
    assert json.loads(path.read_text()) == {"fixed_vs_trainer": 1.0}, "an interrupted write replaced the last result"
