"""Task vlm started from a nanoVLM checkpoint: resume_from_vlm_checkpoint + vlm_checkpoint_path, and
load_from_checkpoint, both give the checkpoint's weights and nanoVLM's tokens."""
from __future__ import annotations

import pytest
import torch
from nanovlm_helpers import CHECKPOINT, stand_in_tokenizer

from ember.config import build_config
from ember.config.errors import ConfigError
from ember.engine.assembly import initial_tensors
from ember.engine.checkpoint.weights import load_weights
from ember.tasks import build_task
from ember.tasks.vlm.model import VisionLanguageModel

BASE = {"task": "vlm", "dataset": "unused", "per_device_train_batch_size": 1, "max_steps": 1, "seq_length": 128,
            "disable_tqdm": True, "seed": 0}


def _start(cfg):
    """The model as the engine starts it (engine/assembly.py's build_model, without placement)."""
    task = build_task(cfg)
    model = task.build_model()
    source = cfg.load_from_checkpoint or task.initial_weights()
    if source:
        load_weights(model, initial_tensors(task, source), source)
    return task, model


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return stand_in_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def reference():
    return VisionLanguageModel.from_pretrained(CHECKPOINT).state_dict()


@pytest.mark.parametrize("how", ["resume_from_vlm_checkpoint", "load_from_checkpoint"])
def test_starts_from_the_checkpoint(how, tokenizer_dir, reference, tmp_path):
    keys = ({"resume_from_vlm_checkpoint": True, "vlm_checkpoint_path": str(CHECKPOINT)} if how != "load_from_checkpoint"
            else {"load_from_checkpoint": str(CHECKPOINT)})
    cfg = build_config(BASE | keys | {"tokenizer_name_or_path": tokenizer_dir, "output_dir": str(tmp_path / "run")})
    task, model = _start(cfg)
    state = model.state_dict()
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)
    assert model.decoder.lm_head.weight is model.decoder.get_input_embeddings().weight
    tok = task.tokenizer
    assert task.image_token_id == 100 and tok.convert_tokens_to_ids("<|global_image|>") == 101
    assert tok.convert_tokens_to_ids("<row_1_col_2>") == 103 and tok.pad_token_id == 2
    assert task.shape.image_token_layout == "nanovlm"


def test_a_nanovlm_checkpoint_needs_a_tokenizer_folder(tmp_path):
    cfg = build_config(BASE | {"resume_from_vlm_checkpoint": True, "vlm_checkpoint_path": str(CHECKPOINT),
                                   "output_dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match="holds no tokenizer"):
        build_task(cfg)


def test_nanovlms_train_keys_are_accepted(tmp_path):
    from ember.config.loader import load_config
    cfg = load_config(["--task", "vlm", "--vision_config", "siglip-tiny", "--model_config", "llama-tiny",
                       "--dataset", "x", "--max_training_steps", "7", "--eval_interval", "3",
                       "--stats_log_interval", "2", "--output_dir", str(tmp_path / "run")])
    assert (cfg.max_steps, cfg.eval_steps, cfg.logging_steps) == (7, 3, 2)
