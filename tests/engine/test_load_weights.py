"""load_from_checkpoint: weights only, from every format users bring, never unpickling code.

Each source holds weights that differ from the fresh initialisation (another seed, or a
trained checkpoint), so "the model equals the source" cannot pass by accident.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ember.config import ConfigError
from ember.engine.trainer import Trainer
from ember.tasks import build_task

from conftest import read_metrics

SMALL = dict(cutoff_len=32, per_device_train_batch_size=4, max_samples=12, logging_steps=1)


def _set_up(cfg) -> Trainer:
    trainer = Trainer(cfg, build_task(cfg))
    trainer.setup()
    return trainer


def _fresh_state(make_config, tmp_path) -> dict[str, torch.Tensor]:
    return _set_up(make_config(output_dir=str(tmp_path / "fresh"), **SMALL)).model.state_dict()


def _other_weights(make_config, tmp_path) -> dict[str, torch.Tensor]:
    """A full state dict (tied names included) from a model initialised with another seed."""
    model = _set_up(make_config(output_dir=str(tmp_path / "other"), seed=7, **SMALL)).model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_loaded(trainer: Trainer, source: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]) -> None:
    own = trainer.model.state_dict()
    for name, tensor in source.items():
        assert torch.equal(own[name], tensor), f"{name} was not loaded from the source"
    assert any(not torch.equal(fresh[n], source[n]) for n in source), "precondition: source equals the fresh init"
    missing = [name for name, _ in trainer.model.named_parameters() if name not in source]  # tied ones count once
    assert not missing, f"precondition: the source holds every weight, lacks {missing}"


def _assert_fresh_optimizer_and_schedule(trainer: Trainer) -> None:
    assert trainer.state["step"] == 0
    assert trainer.schedule.state_dict()["step"] == 0
    for opt in trainer.optimizers.values():
        assert not opt.state, "optimizer state was loaded; load_from_checkpoint must start it fresh"


def test_from_a_checkpoint_folder_loads_weights_only(make_config, train, tmp_path):
    source_run = train(make_config(output_dir=str(tmp_path / "source"), max_steps=8, save_steps=8, **SMALL))
    folder = tmp_path / "source" / "checkpoint-8"
    source = load_file(str(folder / "model.safetensors"))
    fresh = _fresh_state(make_config, tmp_path)
    trainer = _set_up(make_config(load_from_checkpoint=str(folder), **SMALL))
    _assert_loaded(trainer, source, fresh)
    _assert_fresh_optimizer_and_schedule(trainer)
    # and a whole run from it starts at step 1 with the fresh schedule's learning rates
    train(make_config(output_dir=str(tmp_path / "loaded"), load_from_checkpoint=str(folder), max_steps=3, **SMALL))
    train(make_config(output_dir=str(tmp_path / "scratch"), max_steps=3, **SMALL))
    loaded, scratch = read_metrics(tmp_path / "loaded"), read_metrics(tmp_path / "scratch")
    assert [r["step"] for r in loaded] == [1, 2, 3]
    assert [r["lr"] for r in loaded] == [r["lr"] for r in scratch]
    assert loaded[0]["loss"] < scratch[0]["loss"], "the first step did not start from the trained weights"
    assert source_run.state["step"] == 8


def test_from_an_hf_model_folder(make_config, tmp_path, tiny_model_dir):
    source = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    fresh = _fresh_state(make_config, tmp_path)
    trainer = _set_up(make_config(load_from_checkpoint=str(tiny_model_dir), **SMALL))
    _assert_loaded(trainer, source, fresh)
    _assert_fresh_optimizer_and_schedule(trainer)


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "bin", "lightning-ckpt", "ddp-pth"])
def test_from_a_weights_file(make_config, tmp_path, fmt):
    weights = _other_weights(make_config, tmp_path)
    if fmt == "safetensors":
        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    elif fmt in ("pt", "bin"):
        path = tmp_path / f"weights.{fmt}"
        torch.save(weights, path)
    elif fmt == "lightning-ckpt":  # Lightning wraps the weights with counters and hyper-parameters
        path = tmp_path / "last.ckpt"
        torch.save({"state_dict": weights, "epoch": 3, "global_step": 1200}, path)
    else:  # saved from a DDP-wrapped model
        path = tmp_path / "ddp.pth"
        torch.save({f"module.{k}": v for k, v in weights.items()}, path)
    fresh = _fresh_state(make_config, tmp_path)
    trainer = _set_up(make_config(load_from_checkpoint=str(path), **SMALL))
    _assert_loaded(trainer, weights, fresh)
    _assert_fresh_optimizer_and_schedule(trainer)


# ---- mismatches -------------------------------------------------------------------------------

def _mismatched_file(make_config, tmp_path) -> tuple[Path, dict, list[str], list[str], str]:
    """Five names renamed and one shape changed; returns the file, its tensors and the culprits."""
    weights = {k: v.contiguous() for k, v in _other_weights(make_config, tmp_path).items()}
    names = sorted(n for n in weights if n.startswith("model.layers.0.") or n.startswith("model.layers.1."))
    renamed = names[:5]
    for name in renamed:
        weights[name.replace("model.layers", "model.blocks")] = weights.pop(name)
    wrong = "model.norm.weight"
    weights[wrong] = torch.ones(weights[wrong].shape[0] // 2)
    path = tmp_path / "mismatched.safetensors"
    save_file(weights, str(path))
    return path, weights, renamed, [n.replace("model.layers", "model.blocks") for n in renamed], wrong


def test_mismatched_names_and_shapes_give_one_error_listing_the_first(make_config, tmp_path):
    path, _, missing, unexpected, wrong = _mismatched_file(make_config, tmp_path)
    with pytest.raises(ConfigError) as caught:
        _set_up(make_config(load_from_checkpoint=str(path), **SMALL))
    message = str(caught.value)
    assert str(path) in message
    assert any(name in message for name in missing), message
    assert any(name in message for name in unexpected), message
    assert wrong in message
    assert "ignore_mismatched_sizes" in message
    assert len(message) < 1200, "the error should list the first few names, not all of them"


def test_ignore_mismatched_sizes_loads_everything_that_fits(make_config, tmp_path):
    path, weights, missing, unexpected, wrong = _mismatched_file(make_config, tmp_path)
    fresh = _fresh_state(make_config, tmp_path)
    trainer = _set_up(make_config(load_from_checkpoint=str(path), ignore_mismatched_sizes=True, **SMALL))
    own = trainer.model.state_dict()
    fits = {k: v for k, v in weights.items() if k in own and k != wrong}
    assert len(fits) > 10
    _assert_loaded_subset(own, fits)
    for name in [*missing, wrong]:  # what did not fit keeps its fresh initialisation
        assert torch.equal(own[name], fresh[name]), name


def _assert_loaded_subset(own: dict, tensors: dict) -> None:
    for name, tensor in tensors.items():
        assert torch.equal(own[name], tensor), f"{name} was not loaded"


# ---- pickles that would run code --------------------------------------------------------------

class RunsCode:
    """Unpickling this runs a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _write_malicious(path: Path, sentinel: Path, how: str) -> None:
    payload = {"model.norm.weight": torch.ones(4), "extra": RunsCode(f"touch {sentinel}")}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as f:
            pickle.dump(payload, f, protocol=2)


def test_the_malicious_payload_is_live(tmp_path):
    """Control: unpickling the file without protection does run the command, so the refusal
    tests below would see it if ember unpickled."""
    path, sentinel = tmp_path / "evil.ckpt", tmp_path / "CONTROL"
    _write_malicious(path, sentinel, "torch.save")
    torch.load(path, weights_only=False)
    assert sentinel.exists()


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
@pytest.mark.parametrize("where", ["evil.ckpt", "evil.pt", "hf-folder/pytorch_model.bin"])
def test_a_pickle_that_would_run_code_is_refused(make_config, tmp_path, how, where):
    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_malicious(path, sentinel, how)
    target = path.parent if where.startswith("hf-folder") else path
    with pytest.raises(ConfigError) as caught:
        _set_up(make_config(load_from_checkpoint=str(target), **SMALL))
    assert str(path) in str(caught.value)
    assert not sentinel.exists(), "loading the weights ran the pickle's code"
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_refused_through_the_command_line_too(corpus_dir, tokenizer_dir, tmp_path):
    import subprocess
    import sys
    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / "evil.ckpt"
    _write_malicious(path, sentinel, "torch.save")
    ember = str(Path(sys.executable).parent / "ember")
    proc = subprocess.run([ember, "train", "model_config=llama-tiny", f"tokenizer_name_or_path={tokenizer_dir}",
                           "dataset=tiny_text", f"dataset_dir={corpus_dir}", "cutoff_len=32", "max_steps=2",
                           "max_samples=12", f"output_dir={tmp_path / 'run'}", f"load_from_checkpoint={path}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "ember: error:" in proc.stderr and str(path) in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not sentinel.exists()
