"""nanoVLM checkpoints in: the fixture's save_pretrained folder (tests/fixtures/nanovlm, see its README)
loads, and ember's logits and loss on nanoVLM's own unpacked batch equal nanoVLM's."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ember.tasks.vlm.model import VisionLanguageModel
from ember.tasks.vlm.nanovlm import is_nanovlm_folder, read_ember_weights

FIXTURE = Path(__file__).parents[1] / "fixtures" / "nanovlm"
CHECKPOINT = FIXTURE / "nanovlm_checkpoint"
TOL = 1e-5


@pytest.fixture(scope="module")
def batch():
    return load_file(str(FIXTURE / "batch.safetensors"))


@pytest.fixture(scope="module")
def model():
    return VisionLanguageModel.from_pretrained(CHECKPOINT).eval()


def loss_of(logits, labels):  # nanoVLM's: labels already shifted, mean over the targets
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def test_config_translated(model):
    assert is_nanovlm_folder(CHECKPOINT)
    cfg = model.config
    assert (cfg.image_size, cfg.tokens_per_image, cfg.image_token_id) == (64, 16, 100)
    assert cfg.image_token_layout == "nanovlm"
    assert sum(p.numel() for p in model.parameters()) == 53_376  # as the fixture README counts
    # the tied head stays tied: one tensor, so fine-tuning moves both
    assert model.decoder.lm_head.weight is model.decoder.get_input_embeddings().weight


def test_weights_mapped_exactly(model):
    nano = load_file(str(CHECKPOINT / "model.safetensors"))
    qkv = nano["vision_encoder.blocks.1.attn.qkv_proj.weight"]
    layer = model.vision_encoder.encoder.layers[1].self_attn
    assert torch.equal(torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight]), qkv)
    positions = nano["vision_encoder.patch_embedding.position_embedding"]
    assert torch.equal(model.vision_encoder.embeddings.position_embedding.weight, positions[0])
    assert torch.equal(model.decoder.get_input_embeddings().weight, nano["decoder.head.weight"])


def test_logits_and_loss_equal_nanovlms(model, batch):
    with torch.no_grad():
        logits = model(batch["input_ids"], pixel_values=batch["images"], attention_mask=batch["attention_mask"])
    real = batch["attention_mask"].bool()  # left padding: positions that are not pads
    diff = (logits - batch["logits"])[real].abs().max().item()
    loss_diff = abs(loss_of(logits, batch["labels"]).item() - batch["loss"].item())
    print(f"nanoVLM unpacked batch: max |logits diff| {diff:.3g}, |loss diff| {loss_diff:.3g}")
    assert diff <= TOL and loss_diff <= TOL


def test_load_from_checkpoint_reads_nanovlm_names(model):
    """The VLM family's weight reader (load_from_checkpoint's, through Task.read_weights) gives
    ember's names for a nanoVLM folder, and declines any other source."""
    tensors = read_ember_weights(CHECKPOINT)
    assert read_ember_weights(CHECKPOINT.parent) is None
    own = model.state_dict()
    assert tensors.keys() == own.keys()
    assert all(torch.equal(tensors[k], own[k]) for k in own)


def _ce_sum(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")


def test_packed_loss_is_each_samples_own_loss(model, batch):
    """ember isolates packed samples (position_ids restart, no attention across samples); nanoVLM lets a
    sample see the earlier ones. So ember's packed loss is that of each sample alone, and only the first
    sample (nothing before it) matches nanoVLM's packed logits."""
    ids, labels = batch["packed_input_ids"], batch["packed_labels"]
    lengths = batch["packed_sample_lengths"].tolist()
    per_sample = batch["packed_images_per_sample"].tolist()  # views per sample (global + tiles)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed = model(ids, pixel_values=batch["packed_images"], position_ids=positions)
        alone_sum, start, first_view = 0.0, 0, 0
        for n, views in zip(lengths, per_sample):
            pixels = batch["packed_images"][first_view:first_view + views]
            alone = model(ids[:, start:start + n], pixel_values=pixels)
            alone_sum += _ce_sum(alone, labels[:, start:start + n])
            start, first_view = start + n, first_view + views
    targets = (labels != -100).sum()
    packed_loss, alone_loss = loss_of(packed, labels).item(), (alone_sum / targets).item()
    # up to its separator (a pad whose key nanoVLM masks even from itself; it carries no label)
    first = (packed[:, :lengths[0] - 1] - batch["packed_logits"][:, :lengths[0] - 1]).abs().max().item()
    print(f"packed: ember {packed_loss:.6f} vs samples alone {alone_loss:.6f} (nanoVLM packed "
          f"{batch['packed_loss'].item():.6f}); first sample's logits vs nanoVLM's max diff {first:.3g}")
    assert abs(packed_loss - alone_loss) <= TOL
    assert first <= TOL


def test_nanovlms_own_packing_is_reproduced_with_its_mask(model, batch):
    """Fed as nanoVLM feeds it (one causal row, positions 0..T-1, separators masked), ember gives
    nanoVLM's packed logits: the difference above is the isolation, not the model."""
    with torch.no_grad():
        logits = model(batch["packed_input_ids"], pixel_values=batch["packed_images"],
                       attention_mask=batch["packed_attention_mask"])
    diff = (logits - batch["packed_logits"]).abs().max().item()
    loss_diff = abs(loss_of(logits, batch["packed_labels"]).item() - batch["packed_loss"].item())
    print(f"nanoVLM packed row, nanoVLM's mask: max |logits diff| {diff:.3g}, |loss diff| {loss_diff:.3g}")
    assert diff <= TOL and loss_diff <= TOL
