"""load_from_checkpoint of task video_vae from Open-Sora-Plan's and mindone's files: the VAE comes
whole, a training checkpoint's discriminator and loss logvar go to the run's (a VAE alone leaves
the fresh discriminator), the EMA starts from the loaded weights, and a misfit stops in one line."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ember.config import build_config
from ember.config.errors import ConfigError
from ember.engine.checkpoint.weights import load_weights
from ember.tasks.video_vae.task import VideoVAETask

FIXTURES = Path(__file__).parents[1] / "fixtures" / "causalvae"
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def task_and_model(**keys):
    cfg = build_config({"task": "video_vae", "video_path": "v", "model_config": str(FIXTURES / "tiny_config.json"),
                        "perceptual_weight": 0, "use_discriminator": True, "disc_channels": 8, "use_ema": True,
                        **keys})
    task = VideoVAETask(cfg)
    torch.manual_seed(3)
    return task, task.build_model()


def load(task, model, source) -> None:
    """As the engine does it: the family reads, the engine checks every trainable weight is there."""
    load_weights(model, task.read_weights(str(source)), str(source))


def test_training_checkpoint_brings_vae_discriminator_and_logvar():
    task, model = task_and_model()
    reference = load_file(str(FIXTURES / "tiny_model.safetensors"))
    disc = {k: torch.full_like(v, 0.25) if v.is_floating_point() else v
            for k, v in model.discriminator.state_dict().items()}
    checkpoint = {"state_dict": {"gen_model": reference,
                                 "dics_model": {**{f"discriminator.{k}": v for k, v in disc.items()},
                                                "logvar": torch.tensor(0.75),
                                                "perceptual_loss.net.slice1.0.weight": torch.ones(3)}},
                  "ema_state_dict": {}, "current_step": 9}
    path = Path(task.cfg.output_dir).parent / "osp_train.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    load(task, model, path)
    state = model.state_dict()
    assert all(torch.equal(state[f"vae.{k}"], v) for k, v in reference.items())
    assert all(torch.equal(state[f"discriminator.{k}"], v) for k, v in disc.items())
    assert model.logvar.item() == 0.75
    # the EMA starts from the loaded VAE, not from the random weights the model was built with
    assert torch.equal(state["ema.decoder__conv_out__conv__weight"], reference["decoder.conv_out.conv.weight"])


def test_mindspore_vae_alone_keeps_the_fresh_discriminator(caplog):
    caplog.set_level(logging.INFO, logger="ember")
    task, model = task_and_model()
    fresh = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    load(task, model, FIXTURES / "tiny_model_mindspore.ckpt")
    reference = load_file(str(FIXTURES / "tiny_model.safetensors"))
    assert torch.equal(model.vae.encoder.conv_in.weight, reference["encoder.conv_in.weight"])
    assert all(torch.equal(model.discriminator.state_dict()[k], v) for k, v in fresh.items())
    assert "fresh" in caplog.text


def test_ember_checkpoint_and_export_come_back(tmp_path):
    """Its own checkpoint folder (every tensor, EMA included) and export (the reference's folder)."""
    from ember.tasks.video_vae.model import CausalVAE
    task, model = task_and_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
        model.ema.update(model.vae, 0.0)
    (tmp_path / "checkpoint-2").mkdir()
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "checkpoint-2" / "model.safetensors"))
    task.export(model, str(tmp_path / "export"))
    for source in (tmp_path / "checkpoint-2", tmp_path / "export"):
        task2, model2 = task_and_model()
        load(task2, model2, source)
        assert torch.equal(model2.vae.decoder.conv_out.conv.weight, model.vae.decoder.conv_out.conv.weight)
    assert torch.equal(model2.ema.decoder__conv_out__conv__weight, model.vae.decoder.conv_out.conv.weight)
    exported = CausalVAE.from_pretrained(tmp_path / "export")
    assert torch.equal(exported.encoder.conv_in.weight, model.vae.encoder.conv_in.weight)


def test_weights_of_another_size_name_the_config_to_use(tmp_path):
    shutil.copy(FIXTURES / "tiny_config.json", tmp_path / "config.json")
    shutil.copy(FIXTURES / "tiny_model.safetensors", tmp_path / "diffusion_pytorch_model.safetensors")
    task, model = task_and_model(model_config="causal_vae-tiny")  # one residual block per level, not two
    with pytest.raises(ConfigError, match=r"64 unknown: decoder.up.0.block.2.*set model_config: .*config.json \(the config.json beside") as err:
        load(task, model, tmp_path)
    assert "\n" not in str(err.value)
