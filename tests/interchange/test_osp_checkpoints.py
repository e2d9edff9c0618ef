"""Open-Sora-Plan's and mindone's CausalVAE checkpoints in, ember's out (CausalVAE.from_pretrained /
save_pretrained): every form a seed user has gives exactly the fixture's reference weights, an
export is the reference's folder, and what does not fit stops with one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ember.config.errors import ConfigError
from ember.models import CausalVAE

FIXTURES = Path(__file__).parents[1] / "fixtures" / "causalvae"
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "tiny_model.safetensors"))


def osp_folder(root: Path, weights: str = "safetensors") -> Path:
    """What the reference's save_pretrained writes (or the .bin form of older diffusers)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "tiny_config.json", root / "config.json")
    if weights == "safetensors":
        shutil.copy(FIXTURES / "tiny_model.safetensors", root / "diffusion_pytorch_model.safetensors")
    else:
        torch.save(load_file(str(FIXTURES / "tiny_model.safetensors")), root / "diffusion_pytorch_model.bin")
    return root


def assert_reference_weights(vae: CausalVAE, reference: dict, shift: float = 0.0) -> None:
    own = vae.state_dict()
    assert own.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(own[name], value + shift), name


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_reference_folder(tmp_path, reference, weights):
    assert_reference_weights(CausalVAE.from_pretrained(osp_folder(tmp_path / "vae", weights)), reference)


def test_mindspore_checkpoint_without_mindspore(reference):
    vae = CausalVAE.from_pretrained(FIXTURES / "tiny_model_mindspore.ckpt", config=FIXTURES / "tiny_config.json")
    assert_reference_weights(vae, reference)
    names = json.loads((FIXTURES / "mindspore_names.json").read_text())
    # the full-size rule: a norm's .gamma/.beta are .weight/.bias, every other name is kept
    from ember.tasks.video_vae.mindspore_ckpt import torch_name
    assert all(torch_name(ms) == pt for ms, pt in names["ms_to_pt"].items())


def training_checkpoint(reference: dict, ema: bool) -> dict:
    """The layout of the reference's train_causalvae.py save_checkpoint."""
    loss_module = {"discriminator.main.0.weight": torch.ones(8, 3, 3, 3, 3), "logvar": torch.tensor(0.5),
                   "perceptual_loss.net.slice1.0.weight": torch.zeros(2)}
    return {"epoch": 0, "current_step": 7,
            "state_dict": {"gen_model": reference, "dics_model": loss_module},
            "ema_state_dict": {f"module.{k}": v + 1 for k, v in reference.items()} if ema else {},
            "optimizer_state": {"gen_optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0]}]}},
            "scaler_state": {"scale": 512.0, "growth_factor": 2.0}, "sampler_state": {"epoch": 0}}


@pytest.mark.parametrize("ema", [False, True])
def test_reference_training_checkpoint_prefers_its_ema_as_the_reference_does(tmp_path, reference, ema):
    torch.save(training_checkpoint(reference, ema), tmp_path / "checkpoint.ckpt")
    shutil.copy(FIXTURES / "tiny_config.json", tmp_path / "config.json")  # the config beside the file is used
    vae = CausalVAE.from_pretrained(tmp_path / "checkpoint.ckpt")
    assert_reference_weights(vae, reference, shift=1.0 if ema else 0.0)
    # the reference's own from_pretrained form: a folder with config.json and a .ckpt
    assert_reference_weights(CausalVAE.from_pretrained(tmp_path), reference, shift=1.0 if ema else 0.0)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".pth"])
def test_bare_and_lightning_style_state_dicts(tmp_path, reference, suffix):
    flat = {**reference, "loss.discriminator.main.0.weight": torch.ones(2), "loss.logvar": torch.tensor(0.0),
            "loss.perceptual_loss.lin0.model.1.weight": torch.ones(1)}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(flat, str(path))
    elif suffix == ".pth":  # wrapped as Lightning does
        torch.save({"state_dict": flat, "global_step": 3}, path)
    else:
        torch.save(reference, path)
    vae = CausalVAE.from_pretrained(path, config=FIXTURES / "tiny_config.json")
    assert_reference_weights(vae, reference)


def test_export_is_the_reference_folder_and_comes_back(tmp_path, reference):
    vae = CausalVAE.from_pretrained(osp_folder(tmp_path / "in"))
    vae.save_pretrained(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    expected = json.loads((FIXTURES / "tiny_config.json").read_text())
    ignore = {"_diffusers_version"}
    assert {k: v for k, v in written.items() if k not in ignore} == {k: v for k, v in expected.items() if k not in ignore}
    saved = load_file(str(tmp_path / "out" / "diffusion_pytorch_model.safetensors"))
    assert saved.keys() == reference.keys()
    assert_reference_weights(CausalVAE.from_pretrained(tmp_path / "out"), reference)


def test_what_does_not_fit_stops_with_one_line(tmp_path, reference):
    broken = dict(reference)
    broken.pop("decoder.conv_in.conv.bias")
    broken["encoder.conv_in.weight"] = torch.zeros(1)
    broken["encoder.extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ConfigError) as err:
        CausalVAE.from_pretrained(tmp_path / "broken.pt", config=FIXTURES / "tiny_config.json")
    message = str(err.value)
    assert "\n" not in message and "1 missing: decoder.conv_in.conv.bias" in message
    assert "1 unknown: encoder.extra.weight" in message and "encoder.conv_in.weight [1] vs [32, 3, 3, 3]" in message
    # a file alone is read as the seed's 488 model: the tiny weights do not fit it
    (tmp_path / "alone").mkdir()
    torch.save(reference, tmp_path / "alone" / "w.pt")
    with pytest.raises(ConfigError, match="do not fit the model .*of another shape"):
        CausalVAE.from_pretrained(tmp_path / "alone" / "w.pt")


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "garbage.ckpt").write_bytes(b"\x0a\x05abc")
    with pytest.raises(ConfigError, match="garbage.ckpt"):
        CausalVAE.from_pretrained(tmp_path / "garbage.ckpt", config="causal_vae-tiny")
    torch.save({"weights": torch.nn.Identity()}, tmp_path / "pickled.pt")  # an object beyond tensors
    with pytest.raises(ConfigError, match="refused to load .*pickled.pt"):
        CausalVAE.from_pretrained(tmp_path / "pickled.pt", config="causal_vae-tiny")
    with pytest.raises(ConfigError, match="no file or folder"):
        CausalVAE.from_pretrained(tmp_path / "absent", config="causal_vae-tiny")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no CausalVAE weights"):
        CausalVAE.from_pretrained(tmp_path / "empty", config="causal_vae-tiny")
