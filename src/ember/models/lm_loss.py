"""Next-token cross-entropy straight from the last hidden states, a chunk of rows at a time.

The usual path materialises logits for every token ([tokens, vocab], in fp32 for the loss),
then log-softmax, then their gradient: several tensors of tokens x vocab floats, each written
and read again, which is a large share of a small model's step and of its peak memory. Here
each chunk's logits live only while that chunk is processed: its loss and the gradients of
the hidden states and the output weight are computed at once (the gradient of a summed
cross-entropy w.r.t. the logits is softmax - one_hot, known in the forward pass), and the
backward pass only scales them by the incoming gradient. Same FLOPs, far less memory traffic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.labels import IGNORE

CHUNK_ELEMENTS = 1 << 21  # logits per chunk (8 MB in fp32) for a small vocabulary: cache-sized buffers
# Each chunk adds its [vocab, d] share of the weight gradient into an fp32 sum, a pass over
# vocab·d values whatever the chunk's size: with a large vocabulary, chunks must hold enough
# rows for that matmul to outweigh its pass over memory. 1024 rows keeps a 128k-vocabulary
# head as fast as full logits, with logits of 1024 rows at a time instead of all of them.
MIN_ROWS = 1024
# Without a weight gradient (a frozen head: LoRA, freeze, evaluation) nothing is summed per chunk,
# so a chunk needs only enough rows for an efficient matmul. At Qwen2's 152k vocabulary, 256 rows
# of fp32 logits are 156 MB instead of 1024 rows' 594 MB (held twice: logits and log-softmax),
# which was the largest single item of a 0.5B LoRA step at 4k tokens (bench/memory_long_context.py).
MIN_ROWS_FROZEN_HEAD = 256


def _rows_per_chunk(vocab: int, weight_grad: bool = True) -> int:
    return max(MIN_ROWS if weight_grad else MIN_ROWS_FROZEN_HEAD, CHUNK_ELEMENTS // vocab)


def _chunk_loss(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss of one chunk and its log-probabilities in fp32 (log_softmax then nll_loss,
    exactly what F.cross_entropy computes)."""
    logp = torch.log_softmax((h @ weight.t()).float(), dim=-1)
    return F.nll_loss(logp, y, ignore_index=IGNORE, reduction="sum"), logp


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, compute_dtype):
        h_all, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        rows = _rows_per_chunk(weight.shape[0], weight_grad=ctx.needs_input_grad[1])
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = None  # fp32, summed over chunks
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            h, y = h_all[start:start + rows], labels[start:start + rows]
            loss, logp = _chunk_loss(h, w, y)
            total += loss
            # d(summed loss)/d(logits) = softmax - one_hot, zero on ignored rows; in logp's buffer
            valid = y != IGNORE
            probs = logp.exp_()
            probs[torch.arange(len(y), device=y.device), torch.where(valid, y, 0)] -= 1.0
            if probs.device.type == "cpu":
                probs[~valid] = 0.0  # touches only the ignored rows (finding them syncs, free on a CPU)
            else:
                probs.mul_(valid[:, None])
            g = probs.to(compute_dtype)
            if grad_hidden is not None:
                torch.mm(g, w, out=grad_hidden[start:start + rows]) if g.dtype == hidden.dtype \
                    else grad_hidden[start:start + rows].copy_(g @ w)
            if ctx.needs_input_grad[1]:
                if grad_weight is None:
                    grad_weight = (g.t() @ h).float()
                elif g.dtype == grad_weight.dtype:
                    grad_weight.addmm_(g.t(), h)  # summed inside the matmul: no [vocab, d] temporary
                else:
                    grad_weight.add_(g.t() @ h)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels shifted left, so position t is scored on token t+1; each row's last position
    predicts nothing. Shifting the labels, not the logits, avoids copying the logits."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE)


def logits_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of [..., vocab] logits against aligned labels, softmax in fp32."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sum over rows of cross_entropy(hidden @ weight.T, labels), rows labelled IGNORE left out.

    hidden [rows, d], weight [vocab, d], labels [rows]. The matmuls run in the autocast dtype
    when autocast is on (as nn.Linear would), the softmax in fp32.
    """
    device_type = hidden.device.type
    compute_dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
                     else hidden.dtype)
    with torch.autocast(device_type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(hidden, weight, labels, compute_dtype)
        h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        rows = _rows_per_chunk(weight.shape[0], weight_grad=False)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            total += _chunk_loss(h[start:start + rows], w, labels[start:start + rows])[0]
        return total
