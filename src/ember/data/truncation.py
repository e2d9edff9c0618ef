"""LLaMA-Factory's split of a length budget between a source (prompt) and a target (answer)."""
from __future__ import annotations


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """(kept source length, kept target length) within cutoff_len; each part keeps its head."""
    if target_len * 2 < cutoff_len:  # a short answer is kept whole; the prompt gives way
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:  # a short prompt is kept whole; the answer gives way
        max_target_len = cutoff_len - source_len
    else:  # both long: shares in proportion to their lengths
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len
