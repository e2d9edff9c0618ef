"""Task vlm end to end: generated shapes data, per-component learning rates, frozen parts, the
seed's flags, resuming from a saved VLM, LoRA on the decoder, and `ember chat` on the result."""
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_metrics

from ember.cli import main
from ember.config import build_config
from ember.config.loader import load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from make_shapes_vqa import generate  # noqa: E402

TOKENIZER = str(Path(__file__).resolve().parents[2] / "examples" / "data" / "tokenizer")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    generate(out, n_train=48, n_val=8, size=32, seed=0)
    return out


@pytest.fixture
def vlm_config(shapes, tmp_path):
    def make(**overrides):
        base = dict(task="vlm", vision_config="siglip-tiny", mp_pixel_shuffle_factor=4, model_config="llama-tiny",
                    tokenizer_name_or_path=TOKENIZER, template="default", dataset="shapes_train",
                    eval_dataset="shapes_val", dataset_dir=str(shapes), seq_length=128, per_device_train_batch_size=2,
                    max_steps=4, logging_steps=1, eval_steps=2, save_steps=0, output_dir=str(tmp_path / "run"),
                    lr_mp=1e-2, lr_vision_backbone=2e-3, lr_language_backbone=1e-3, disable_tqdm=True, seed=0)
        base.update(overrides)
        return build_config(base)
    return make


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_trains_exports_and_answers(vlm_config, train, shapes):
    cfg = vlm_config(lr_scheduler_type="nanovlm")
    trainer = train(cfg)
    evals = [r for r in read_metrics(cfg.output_dir) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(0 <= r["answer_accuracy"] <= 1 for r in evals)
    # one optimizer, three components, each at its own peak times the same schedule factor
    groups = trainer.optimizers["model"].param_groups
    peaks = sorted({g["peak_lr"] for g in groups})
    assert peaks == [1e-3, 2e-3, 1e-2]
    factors = {round(g["lr"] / g["peak_lr"], 12) for g in groups}
    assert len(factors) == 1
    out = Path(cfg.output_dir)
    assert (out / "vlm_config.json").is_file() and (out / "model.safetensors").is_file()
    image = sorted((shapes / "images").glob("val_*.jpg"))[0]
    from ember.chat import VLMChat
    chat = VLMChat(str(out))
    assert isinstance(chat.answer(str(image), "How many shapes are there?", max_new_tokens=3), str)
    ids = chat.prompt_ids("How many shapes are there?", views=1)
    assert int((ids == chat.image_token_id).sum()) == chat.model.config.tokens_per_image


@pytest.mark.parametrize("frozen", ["lr_vision_backbone", "lr_language_backbone", "lr_mp"])
def test_a_zero_learning_rate_leaves_that_component_bit_identical(vlm_config, train, frozen, tmp_path):
    from ember.engine.trainer import Trainer
    from ember.tasks import build_task
    cfg = vlm_config(**{frozen: 0.0}, max_steps=3)
    initial = vlm_config(**{frozen: 0.0}, output_dir=str(tmp_path / "initial"))
    trainer = Trainer(initial, build_task(initial))
    trainer.setup()
    name = {"lr_vision_backbone": "vision_encoder", "lr_language_backbone": "decoder", "lr_mp": "projector"}[frozen]
    before = {part: _weights(getattr(trainer.raw, part)) for part in ("vision_encoder", "decoder", "projector")}
    trainer.world.stop()
    trainer = train(cfg)  # the same seed builds the same initial weights
    for part, weights in before.items():
        after = _weights(getattr(trainer.raw, part))
        same = all(torch.equal(weights[k], after[k]) for k in weights)
        assert same == (part == name), part


def test_the_seeds_flags_are_accepted(shapes, tmp_path):
    argv = ["--task", "vlm", "--vision_config", "siglip-tiny", "--model_config", "llama-tiny",
            "--tokenizer_name_or_path", TOKENIZER, "--train_dataset_path", "shapes_train", "--dataset_dir", str(shapes),
            "--lr_mp", "0.01", "--lr_vision_backbone", "1e-4", "--lr_language_backbone", "1e-4",
            "--relevance_min_rating", "3", "--image_correspondence_min_rating", "3",
            "--visual_dependency_min_rating", "2", "--formatting_min_rating", "2", "--no_log_wandb",
            "--vlm_checkpoint_path", str(tmp_path / "checkpoints"), "--max_steps", "10", "--compile", "True"]
    cfg = load_config(argv)
    assert (cfg.lr_mp, cfg.lr_vision_backbone, cfg.lr_language_backbone) == (0.01, 1e-4, 1e-4)
    assert (cfg.relevance_min_rating, cfg.formatting_min_rating, cfg.report_to, cfg.compile) == (3, 2, "none", True)
    # nanoVLM saves under <vlm_checkpoint_path>/<run_name>
    assert Path(cfg.output_dir).parent == tmp_path / "checkpoints" and "siglip-tiny_mp4_llama-tiny" in cfg.output_dir


def test_resume_from_a_saved_vlm_starts_from_its_weights(vlm_config, train, tmp_path):
    first = vlm_config(max_steps=2, output_dir=str(tmp_path / "first"))
    trained = _weights(train(first).raw)
    from ember.engine.trainer import Trainer
    from ember.tasks import build_task
    cfg = vlm_config(resume_from_vlm_checkpoint=True, vlm_checkpoint_path=first.output_dir, model_config=None,
                     tokenizer_name_or_path=None, vision_config=None, output_dir=str(tmp_path / "second"))
    trainer = Trainer(cfg, build_task(cfg))
    trainer.setup()
    start = _weights(trainer.raw)
    trainer.world.stop()
    assert start.keys() == trained.keys() and all(torch.equal(start[k], trained[k]) for k in start)


def test_lora_on_the_decoder_exports_a_plain_vlm(vlm_config, train):
    cfg = vlm_config(finetuning_type="lora", lora_rank=4, max_steps=2)
    trainer = train(cfg)
    trainable = [n for n, p in trainer.raw.decoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    from ember.tasks.vlm.model import VisionLanguageModel
    reloaded = VisionLanguageModel.from_pretrained(cfg.output_dir)
    assert not any("lora_" in k for k in reloaded.state_dict())


def test_a_corrupt_image_is_one_clear_error(shapes, tmp_path, capsys):
    broken = tmp_path / "data"
    broken.mkdir()
    (broken / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    rows = [{"messages": [{"role": "user", "content": "<image>What colour?"}, {"role": "assistant", "content": "red"}],
             "images": ["bad.jpg"]}]
    (broken / "rows.json").write_text(json.dumps(rows))
    code = main(["train", "--task", "vlm", "--vision_config", "siglip-tiny", "--model_config", "llama-tiny",
                 "--tokenizer_name_or_path", TOKENIZER, "--dataset", str(broken / "rows.json"),
                 "--dataset_dir", str(broken), "--output_dir", str(tmp_path / "run"), "--max_steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.jpg" in err and "Traceback" not in err


def test_the_example_recipe_runs_as_written(shapes, tmp_path):
    recipe = Path(__file__).resolve().parents[2] / "examples" / "vlm.yaml"
    out = tmp_path / "example"
    # only where the data lives, where the run goes and how long it lasts differ from the recipe
    code = main(["train", str(recipe), f"dataset_dir={shapes}", f"output_dir={out}", "max_steps=3", "eval_steps=3",
                 "save_steps=3", "logging_steps=1"])
    assert code == 0
    final = [r for r in read_metrics(out) if "answer_accuracy" in r][-1]
    assert final["step"] == 3 and (out / "checkpoint-3").is_dir() and (out / "vlm_config.json").is_file()
