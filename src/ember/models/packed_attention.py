"""Attention over packed rows that only computes what the samples can see.

A packed row holds several samples, told apart by position_ids restarting at 0. transformers
isolates them by building a [rows, 1, T, T] block-diagonal mask and running SDPA over the
whole T x T square; on a CPU the masked kernel is also slower than the causal one. Here each
sample is its own causal attention call, so the work is the sum of len² over samples rather
than T² per row: several times less for short SFT samples in long rows, and the result is
the same (each query sees exactly the same keys).

Registered with transformers' AttentionInterface as "ember_packed", a public extension point:
rows without packing, or with a padding mask, go to the stock SDPA path unchanged. The split
needs the sample boundaries on the host, so it is used for CPU tensors only (on a GPU it
would cost a sync per step); elsewhere the mask keeps transformers' block-diagonal packing
mask and the stock SDPA path isolates the samples. `splits_on` decides both, so the mask is
only ever dropped where the attention splits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "ember_packed"


def _segment_lengths(position_ids: torch.Tensor) -> list[int] | None:
    """Lengths of the runs of consecutive positions, rows laid end to end; None if no row is packed."""
    restarts = position_ids[:, 1:] != position_ids[:, :-1] + 1
    if not bool(restarts.any()):
        return None
    cuts = torch.ones_like(position_ids, dtype=torch.bool)  # every row starts a run
    cuts[:, 1:] = restarts
    starts = cuts.flatten().nonzero().flatten().tolist() + [position_ids.numel()]
    return [b - a for a, b in zip(starts[:-1], starts[1:])]


def splits_on(device: torch.device | str) -> bool:
    return torch.device(device).type == "cpu"


_last: tuple = (None, None)  # (position_ids, lengths): every layer of one forward shares them


@torch.compiler.disable  # boundaries differ batch to batch: this part always runs eagerly
def packed_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             is_causal=None, **kwargs):
    """query, key, value [rows, heads, T, head_dim] → [rows, T, heads, head_dim], as SDPA's."""
    global _last
    position_ids = kwargs.get("position_ids")
    lengths = None
    if (attention_mask is None and position_ids is not None and splits_on(query.device)
            and query.shape[2] > 1 and position_ids.shape[-1] == query.shape[2]):
        if _last[0] is not position_ids:
            _last = (position_ids, _segment_lengths(position_ids.expand(query.shape[0], -1)))
        lengths = _last[1]
    if lengths is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    rows, heads, width, head_dim = query.shape
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)

    def end_to_end(x):  # [rows, heads, T, d] → [1, heads, rows·T, d]; a view when x came from [rows, T, heads, d]
        return x.transpose(1, 2).reshape(1, rows * width, heads, head_dim).transpose(1, 2)

    parts = [F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True)
             for q, k, v in zip(*(end_to_end(x).split(lengths, dim=2) for x in (query, key, value)))]
    out = torch.cat(parts, dim=2).transpose(1, 2).reshape(rows, width, heads, head_dim)
    return out, None


def packed_attention_mask(*args, attention_mask=None, device="cpu", **kwargs):
    """No mask at all without padding where the attention above splits packed rows itself
    (packing and causality are handled there); otherwise the usual SDPA mask, which carries the
    padding and transformers' block-diagonal mask of packed samples."""
    if attention_mask is None and splits_on(device):
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, device=device, **kwargs)


AttentionInterface.register(NAME, packed_attention_forward)
AttentionMaskInterface.register(NAME, packed_attention_mask)
