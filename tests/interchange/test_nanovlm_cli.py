"""Through the CLI: a short fine-tune from the nanoVLM fixture checkpoint (nanoVLM's inputs by default)
that also writes a nanoVLM folder at the end, and `ember export --export_format nanovlm`."""
from __future__ import annotations

import json

import numpy as np
import torch
from nanovlm_helpers import CHECKPOINT, stand_in_tokenizer
from PIL import Image
from safetensors.torch import load_file

from ember.cli import main
from ember.tasks.vlm.model import VisionLanguageModel


def _dataset(root):
    rng = np.random.default_rng(0)
    rows = []
    for k, (width, height) in enumerate([(64, 64), (128, 64), (60, 100), (64, 64)]):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / f"{k}.png")
        rows.append({"images": [f"{k}.png"], "texts": [{"user": f"w{20 + k} w30 w31", "assistant": f"w{40 + k} w50"}]})
    (root / "rows.json").write_text(json.dumps(rows))
    return root / "rows.json"


def test_fine_tune_from_nanovlm_and_export_both_ways(tmp_path):
    data, run = _dataset(tmp_path), tmp_path / "run"
    code = main(["train", "--task", "vlm", "--resume_from_vlm_checkpoint", "true", "--vlm_checkpoint_path",
                 str(CHECKPOINT), "--tokenizer_name_or_path", stand_in_tokenizer(tmp_path / "tok"),
                 "--dataset", str(data), "--dataset_dir", str(tmp_path), "--seq_length", "128",
                 "--per_device_train_batch_size", "2", "--max_steps", "2", "--logging_steps", "1", "--save_steps", "0",
                 "--lr_mp", "1e-2", "--lr_vision_backbone", "1e-3", "--lr_language_backbone", "1e-3",
                 "--export_format", "nanovlm", "--output_dir", str(run), "--disable_tqdm", "true"])
    assert code == 0
    start = load_file(str(CHECKPOINT / "model.safetensors"))
    tuned = load_file(str(run / "nanovlm" / "model.safetensors"))
    assert tuned.keys() == start.keys()
    assert not torch.equal(tuned["MP.proj.weight"], start["MP.proj.weight"])  # it trained
    ember_folder = VisionLanguageModel.from_pretrained(run)  # the ember folder, from the same weights
    nano_folder = VisionLanguageModel.from_pretrained(run / "nanovlm")
    assert ember_folder.config.image_token_layout == "nanovlm"
    a, b = ember_folder.state_dict(), nano_folder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ember export: the ember folder rewritten as nanoVLM's, identical to the one the run wrote
    assert main(["export", "--model_name_or_path", str(run), "--export_dir", str(tmp_path / "out"),
                 "--export_format", "nanovlm"]) == 0
    again = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert again.keys() == tuned.keys() and all(torch.equal(again[k], tuned[k]) for k in tuned)
