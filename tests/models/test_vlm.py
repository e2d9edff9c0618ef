"""The VLM model on a tiny SigLIP (siglip-tiny: 8×8 patches) and a tiny Llama: where image features go,
packed-sample isolation, gradients, save/load, KV-cached generation, and the vision encoder's loading errors."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, SiglipConfig, SiglipModel

from ember.config.errors import ConfigError
from ember.tasks.vlm.model import VisionLanguageModel, build_vlm
from ember.tasks.vlm.vision import load_vision_encoder

IMG = 299  # the image token: the last id of the 300-token vocabulary
TPI = 16   # tokens per image: (32 / 4 / 2)²


def tiny_vlm(tie=False, attn="sdpa", factor=2, seed=0) -> VisionLanguageModel:
    torch.manual_seed(seed)
    decoder = LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=300, max_position_embeddings=256, tie_word_embeddings=tie, attn_implementation=attn))
    return build_vlm(decoder, load_vision_encoder(None, "siglip-tiny"), factor=factor, image_token_id=IMG).eval()


def sample(n_before: int, n_after: int, seed: int) -> torch.Tensor:
    """Token ids: text, one image's placeholders, text (text ids avoid the image token)."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randint(0, IMG, (n_before,), generator=g), torch.full((TPI,), IMG),
                      torch.randint(0, IMG, (n_after,), generator=g)])


@pytest.fixture(scope="module")
def vlm():
    return tiny_vlm()


def test_tiny_preset_shapes(vlm):
    assert (vlm.config.image_size, vlm.config.tokens_per_image) == (32, TPI)
    assert not hasattr(vlm.vision_encoder, "head")  # the pooling head would be parameters without gradients
    assert sum(p.numel() for p in vlm.vision_encoder.parameters()) < 1_000_000
    assert [name for name, _ in vlm.named_children()] == ["vision_encoder", "projector", "decoder"]
    assert vlm.image_features(torch.randn(3, 3, 32, 32)).shape == (3, TPI, 64)


def test_image_features_replace_image_tokens_in_order(vlm):
    # row 0: one image; row 1: two images; features must land view 0, 1, 2 in row-major order
    ids = torch.stack([torch.cat([sample(2, 6, 0), torch.randint(0, IMG, (16,))]),
                       torch.cat([sample(3, 2, 1), sample(0, 3, 2)])])
    assert ids.shape == (2, 40)
    pixels = torch.randn(3, 3, 32, 32)
    seen = {}
    hook = vlm.decoder.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    try:
        vlm(ids, pixels)
    finally:
        hook.remove()
    embeds, feats = seen["inputs_embeds"], vlm.image_features(pixels)
    assert torch.equal(embeds[0, 2:18], feats[0])
    assert torch.equal(embeds[1, 3:19], feats[1])
    assert torch.equal(embeds[1, 21:37], feats[2])
    text = ids != IMG
    assert torch.equal(embeds[text], vlm.decoder.get_input_embeddings()(ids)[text])
    assert int((~text).sum()) == 3 * TPI


def test_image_token_count_mismatch_is_a_clear_error(vlm):
    ids = sample(2, 2, 0)[None]
    with pytest.raises(ValueError, match=r"16 image tokens but 2 views give 32 image features \(16 per view\)"):
        vlm(ids, torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="16 image tokens but no pixel_values"):
        vlm(ids)
    text_only = torch.randint(0, IMG, (1, 7))
    assert vlm(text_only).shape == (1, 7, 300)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_samples_do_not_see_each_other(attn):
    model = tiny_vlm(attn=attn)
    a, b = sample(3, 5, 0), sample(2, 4, 1)
    pixels = torch.randn(2, 3, 32, 32)
    packed = torch.cat([a, b])[None]
    positions = torch.cat([torch.arange(len(a)), torch.arange(len(b))])[None]
    with torch.no_grad():
        alone_a, alone_b = model(a[None], pixels[:1])[0], model(b[None], pixels[1:])[0]
        together = model(packed, pixels, position_ids=positions)[0]
        control = model(packed, pixels)[0]  # no position_ids: b attends to a
    assert torch.allclose(together[:len(a)], alone_a, atol=1e-5)
    assert torch.allclose(together[len(a):], alone_b, atol=1e-5)
    assert torch.allclose(control[:len(a)], alone_a, atol=1e-5)
    assert (control[len(a):] - alone_b).abs().max() > 1e-3


@pytest.mark.parametrize("frozen", [None, "vision_encoder", "projector", "decoder"])
def test_gradients_reach_every_trainable_component(frozen):
    model = tiny_vlm(tie=True).train()
    if frozen:
        getattr(model, frozen).requires_grad_(False)
    logits = model(sample(2, 3, 0)[None], torch.randn(1, 3, 32, 32))
    logits.float().pow(2).mean().backward()
    for component in ("vision_encoder", "projector", "decoder"):
        for name, p in getattr(model, component).named_parameters():
            if component == frozen:
                assert p.grad is None, name
            else:
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{component}.{name}"


@pytest.mark.parametrize("tie", [False, True])
def test_save_and_load_round_trip(tmp_path, tie):
    model = tiny_vlm(tie=tie)
    model.save_pretrained(tmp_path / "vlm")
    saved = load_file(tmp_path / "vlm" / "model.safetensors")
    assert ("decoder.lm_head.weight" in saved) is not tie  # a tied matrix is stored once
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "vlm").eval()
    assert loaded.config == model.config
    if tie:
        assert loaded.decoder.lm_head.weight is loaded.decoder.get_input_embeddings().weight
    ids, pixels = sample(2, 3, 0)[None], torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(ids, pixels), model(ids, pixels))


def test_save_given_state_dict_with_separate_tied_copies(tmp_path):
    """As an FSDP full-state-dict gather returns it: every key of state_dict(), tied ones as separate tensors."""
    model = tiny_vlm(tie=True)
    gathered = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "vlm", state_dict=gathered)
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "vlm")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_from_pretrained_of_a_non_vlm_folder_names_it(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path} is not a saved VLM folder"):
        VisionLanguageModel.from_pretrained(tmp_path)


def test_generate_with_cache_equals_full_recompute(vlm):
    ids, pixels = sample(2, 3, 5)[None], torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        running = ids
        for _ in range(6):
            next_token = vlm(running, pixels)[:, -1].argmax(-1, keepdim=True)
            running = torch.cat([running, next_token], dim=1)
    expected = running[:, ids.shape[1]:]
    assert torch.equal(vlm.generate(ids, pixels, max_new_tokens=6, eos_token_id=None), expected)
    # stops at eos (included), and leaves the training flag as it found it
    vlm.train()
    stop = int(expected[0, 2])
    first_stop = int((expected[0] == stop).nonzero()[0])
    assert torch.equal(vlm.generate(ids, pixels, 6, eos_token_id=stop), expected[:, :first_stop + 1])
    assert vlm.training
    vlm.eval()


def test_pixel_shuffle_factor_must_divide_the_patch_grid():
    with pytest.raises(ConfigError, match="mp_pixel_shuffle_factor 3 does not divide .* 8×8 patch grid"):
        tiny_vlm(factor=3)


def test_vision_encoder_from_a_siglip_folder_or_a_full_siglip_model(tmp_path):
    torch.manual_seed(0)
    encoder = load_vision_encoder(None, "siglip-tiny")
    encoder.save_pretrained(tmp_path / "vision")
    loaded = load_vision_encoder(str(tmp_path / "vision"), None)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in encoder.state_dict().items())

    vision = dict(encoder.config.to_dict(), vision_use_head=True)
    full = SiglipModel(SiglipConfig(vision_config=vision, text_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=50,
        bos_token_id=0, eos_token_id=1, pad_token_id=1)))
    full.save_pretrained(tmp_path / "siglip")
    tower = load_vision_encoder(str(tmp_path / "siglip"), None)
    assert not hasattr(tower, "head")
    assert all(torch.equal(v, tower.state_dict()[k]) for k, v in full.vision_model.state_dict().items()
               if not k.startswith("head."))


def test_vision_encoder_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of vision_model_name_or_path .* and vision_config"):
        load_vision_encoder(None, None)
    with pytest.raises(ConfigError, match="exactly one of"):
        load_vision_encoder(str(tmp_path), "siglip-tiny")
    with pytest.raises(ConfigError, match=f"vision_model_name_or_path: no local model folder .* at {tmp_path}/nope"):
        load_vision_encoder(str(tmp_path / "nope"), None)
    with pytest.raises(ConfigError, match="vision_config 'siglip-huge' is neither a preset"):
        load_vision_encoder(None, "siglip-huge")
    with pytest.raises(ConfigError, match="vision_config llama-tiny has model_type 'llama'"):
        load_vision_encoder(None, "llama-tiny")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_type": "siglip_vision_model", "hidden_size": "wide"}')
    with pytest.raises(ConfigError, match=f"vision_config {bad}: not a valid SigLIP vision config"):
        load_vision_encoder(None, str(bad))
