"""The chunked loss against plain F.cross_entropy: same value, same gradients, never the full logits."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ember.models.lm_loss import linear_cross_entropy
from ember.models import lm_loss


def reference(hidden, weight, labels):
    return F.cross_entropy((hidden @ weight.t()).float(), labels, ignore_index=-100, reduction="sum")


def inputs(rows=300, dim=32, vocab=500, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, dim, generator=gen, requires_grad=True)
    weight = (torch.randn(vocab, dim, generator=gen) * 0.3).requires_grad_()
    labels = torch.randint(0, vocab, (rows,), generator=gen)
    labels[::5] = -100  # prompt tokens, padding, each row's last position
    return hidden, weight, labels


def grads(fn, hidden, weight, labels, scale=0.37):
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, labels)
    (loss * scale).backward()  # the engine divides the summed loss before backward
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("chunk_elements", [500 * 16, 500 * 64, 1 << 21])  # many chunks, a few, one
def test_value_and_gradients_match_cross_entropy(monkeypatch, chunk_elements):
    monkeypatch.setattr(lm_loss, "CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(lm_loss, "MIN_ROWS", 16)
    hidden, weight, labels = inputs()
    ours = grads(linear_cross_entropy, hidden, weight, labels)
    theirs = grads(reference, hidden, weight, labels)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_one_chunk_is_bitwise_cross_entropy():
    """log_softmax then nll_loss, as F.cross_entropy: one chunk gives the very same number."""
    hidden, weight, labels = inputs()
    assert linear_cross_entropy(hidden, weight, labels).item() == reference(hidden, weight, labels).item()


def test_every_label_ignored_gives_zero_loss_and_gradient():
    hidden, weight, labels = inputs()
    loss, g_hidden, g_weight = grads(linear_cross_entropy, hidden, weight, torch.full_like(labels, -100))
    assert loss.item() == 0.0 and not g_hidden.any() and not g_weight.any()


def test_frozen_weight_gets_no_gradient_and_frozen_hidden_none():
    hidden, weight, labels = inputs()
    weight.requires_grad_(False)
    linear_cross_entropy(hidden, weight, labels).backward()
    assert hidden.grad is not None and weight.grad is None


def test_without_grad_only_the_loss_is_computed():
    hidden, weight, labels = inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, labels)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference(hidden, weight, labels).detach())


def test_bf16_autocast_runs_the_matmul_in_bf16_as_a_linear_layer_would(monkeypatch):
    monkeypatch.setattr(lm_loss, "CHUNK_ELEMENTS", 500 * 16)  # several chunks: bf16 parts summed in fp32
    monkeypatch.setattr(lm_loss, "MIN_ROWS", 16)
    hidden, weight, labels = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = grads(linear_cross_entropy, hidden, weight, labels)
        theirs = grads(reference, hidden, weight, labels)
    assert ours[1].dtype == ours[2].dtype == torch.float32  # gradients in the weights' dtype
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-4, atol=0)
    for a, b in zip(ours[1:], theirs[1:]):
        torch.testing.assert_close(a, b, rtol=0.02, atol=0.02)
    fp32 = grads(reference, hidden, weight, labels)[0]
    assert ours[0] != fp32, "bf16 logits differ from fp32 ones"


def test_the_full_logits_are_never_materialised(monkeypatch):
    """No tensor of rows x vocab elements is made: the largest is one chunk of logits."""
    monkeypatch.setattr(lm_loss, "CHUNK_ELEMENTS", 500 * 16)
    monkeypatch.setattr(lm_loss, "MIN_ROWS", 16)
    hidden, weight, labels = inputs(rows=400)
    largest = largest_tensor(lambda: linear_cross_entropy(hidden, weight, labels).backward())
    assert largest <= 500 * 32, largest  # a chunk of logits, or the weight's gradient (500 x 32)


def largest_tensor(fn) -> int:
    largest = 0

    class Sizes(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal largest
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    largest = max(largest, t.numel())
            return out

    with Sizes():
        fn()
    return largest


def test_a_frozen_head_takes_smaller_chunks_with_the_same_loss_and_hidden_gradient(monkeypatch):
    """LoRA's frozen (tied) head sums no weight gradient per chunk, so its chunks stop at
    MIN_ROWS_FROZEN_HEAD rows of logits instead of MIN_ROWS: a quarter of the memory."""
    monkeypatch.setattr(lm_loss, "CHUNK_ELEMENTS", 500 * 16)  # 16 rows: below both floors
    hidden, weight, labels = inputs(rows=2000)
    trainable = largest_tensor(lambda: linear_cross_entropy(hidden, weight, labels).backward())
    assert trainable == lm_loss.MIN_ROWS * 500
    weight.requires_grad_(False)
    hidden.grad = None
    frozen = largest_tensor(lambda: linear_cross_entropy(hidden, weight, labels).backward())
    assert frozen == max(lm_loss.MIN_ROWS_FROZEN_HEAD * 500, hidden.numel())
    ours = grads(linear_cross_entropy, hidden, weight.requires_grad_(), labels)  # weight.grad needed by grads()
    hidden.grad = None
    weight.requires_grad_(False)
    loss = linear_cross_entropy(hidden, weight, labels)
    (loss * 0.37).backward()
    torch.testing.assert_close(loss.detach(), reference(hidden, weight, labels), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(hidden.grad, ours[1], rtol=1e-5, atol=1e-6)
