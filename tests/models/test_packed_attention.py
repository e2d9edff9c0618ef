"""Per-sample attention over packed rows computes what transformers' masked SDPA computes."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ember.models.packed_attention import NAME, _segment_lengths


def models(kv_heads: int):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads)
    stock = LlamaForCausalLM(config)
    ours = copy.deepcopy(stock)
    ours.set_attn_implementation(NAME)
    return stock, ours


def packed_rows():
    """Two rows of 24: samples of 10+9 then a padding run of 5; 3+21."""
    positions = torch.tensor([list(range(10)) + list(range(9)) + list(range(5)),
                              list(range(3)) + list(range(21))])
    return torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1)), positions


def test_runs_are_found_across_rows():
    _, positions = packed_rows()
    assert _segment_lengths(positions) == [10, 9, 5, 3, 21]
    assert _segment_lengths(torch.arange(24).repeat(2, 1)) is None  # nothing packed


@pytest.mark.parametrize("kv_heads", [4, 2])  # plain and grouped-query attention
def test_packed_rows_match_the_masked_sdpa_path(kv_heads):
    stock, ours = models(kv_heads)
    ids, positions = packed_rows()
    outputs = []
    for model in (stock, ours):
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        logits.pow(2).mean().backward()
        outputs.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-5, atol=1e-5)
    for name, grad in outputs[0][1].items():
        torch.testing.assert_close(outputs[1][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_where_rows_are_not_split_the_mask_keeps_samples_apart(monkeypatch):
    """On a GPU the attention does not split rows (that would sync): transformers' packing mask
    must then reach SDPA, or every sample would attend to the ones before it in its row."""
    import ember.models.packed_attention as packed
    monkeypatch.setattr(packed, "splits_on", lambda device: False)  # what a CUDA tensor gets
    stock, ours = models(2)
    ids, positions = packed_rows()
    want = stock(input_ids=ids, position_ids=positions, use_cache=False).logits
    got = ours(input_ids=ids, position_ids=positions, use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_padding_masks_and_unpacked_rows_take_the_stock_path():
    stock, ours = models(4)
    ids, _ = packed_rows()
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    for kwargs in ({}, {"attention_mask": mask}):
        a = stock(input_ids=ids, use_cache=False, **kwargs).logits
        b = ours(input_ids=ids, use_cache=False, **kwargs).logits
        assert torch.equal(a, b)


def test_sft_with_packing_uses_it(make_config, tmp_path):
    import json

    from ember.tasks import build_task
    (tmp_path / "pairs.json").write_text(json.dumps([{"instruction": f"say {i}", "output": "word " * (i % 7 + 1)}
                                                     for i in range(12)]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"pairs": {"file_name": "pairs.json"}}))
    sft = dict(stage="sft", dataset="pairs", dataset_dir=str(tmp_path), template="default")
    assert build_task(make_config(packing=True, **sft)).build_model().config._attn_implementation == NAME
    assert build_task(make_config(**sft)).build_model().config._attn_implementation == "sdpa"
