"""nanoVLM checkpoints out: exporting the fixture's model writes nanoVLM's own folder back, tensor for
tensor, and that folder loads into ember bit-exact."""
from __future__ import annotations

import json

import pytest
import torch
from nanovlm_helpers import CHECKPOINT
from safetensors import safe_open
from safetensors.torch import load_file

from ember.config.errors import ConfigError
from ember.tasks.vlm.model import VisionLanguageModel
from ember.tasks.vlm.nanovlm_export import save_nanovlm


@pytest.fixture(scope="module")
def model():
    return VisionLanguageModel.from_pretrained(CHECKPOINT)


def _metadata(path):
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return f.metadata()


def test_export_writes_nanovlms_folder(model, tmp_path):
    out = save_nanovlm(model, tmp_path / "nano")
    # what nanoVLM's save_pretrained wrote: same config, same tensors (names, shapes, values), same tie
    assert json.loads((out / "config.json").read_text()) == json.loads((CHECKPOINT / "config.json").read_text())
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(CHECKPOINT / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert _metadata(out) == _metadata(CHECKPOINT)


def test_round_trip_is_bit_exact(tmp_path):
    model = VisionLanguageModel.from_pretrained(CHECKPOINT)
    with torch.no_grad():  # a trained model, not the fixture's exact weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    again = VisionLanguageModel.from_pretrained(save_nanovlm(model, tmp_path / "nano"))
    after = again.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert again.decoder.lm_head.weight is again.decoder.get_input_embeddings().weight


def test_an_ember_built_model_is_refused(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
    from test_vlm import tiny_vlm
    with pytest.raises(ConfigError, match="came from a nanoVLM checkpoint"):
        save_nanovlm(tiny_vlm(), tmp_path / "nano")


def test_vision_language_model_is_importable_from_ember_models():
    import subprocess
    import sys
    # a fresh interpreter: the package alone, then the name, with no import cycle either way
    code = ("import ember.models; from ember.models import VisionLanguageModel; "
            f"m = VisionLanguageModel.from_pretrained({str(CHECKPOINT)!r}); print(type(m).__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ember.tasks.vlm.model"
