"""Task causal_lm, stage pt: what a run leaves behind and where it starts from.

One short run (shared by the tests that only read its outputs) plus a few purpose-built ones;
the tiny Llama and cutoff_len 32 keep each to a few seconds on two CPU cores.
"""
from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import read_metrics
from ember.config import ConfigError, build_config
from ember.engine.trainer import Trainer
from ember.tasks import build_task

PNG = b"\x89PNG\r\n\x1a\n"


def run(cfg) -> Trainer:
    trainer = Trainer(cfg, build_task(cfg))
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def main_run(corpus_dir, tokenizer_dir, tmp_path_factory):
    """6 steps from random init with a fractional val_size, evaluation, checkpoints and plots."""
    out = tmp_path_factory.mktemp("causal_lm") / "run"
    cfg = build_config(dict(
        model_config="llama-tiny", tokenizer_name_or_path=str(tokenizer_dir), dataset="tiny_text",
        dataset_dir=str(corpus_dir), cutoff_len=32, per_device_train_batch_size=4, per_device_eval_batch_size=16,
        learning_rate=1e-3, max_steps=6, logging_steps=1, val_size=0.1, eval_steps=3, max_eval_batches=2,
        save_steps=3, plot_loss=True, output_dir=str(out), disable_tqdm=True))
    return run(cfg), out


# ---- the saved model ---------------------------------------------------------------------

def test_saved_model_reloads_in_transformers_with_identical_logits(main_run):
    trainer, out = main_run
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    model = trainer.model.eval()
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine, theirs = model(input_ids=ids).logits, reloaded(input_ids=ids).logits
    assert torch.equal(mine, theirs)
    assert torch.isfinite(mine).all() and mine.std() > 0


def test_saved_model_is_safetensors_with_config(main_run):
    _, out = main_run
    assert (out / "config.json").is_file()
    assert list(out.glob("*.safetensors")), "the final model should be written as safetensors"
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))


def test_tokenizer_is_saved_with_the_model(main_run, tokenizer_dir):
    _, out = main_run
    saved, original = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tokenizer_dir)
    text = "The assert statement is a convenient way to insert debugging assertions."
    assert saved(text)["input_ids"] == original(text)["input_ids"]
    assert len(saved) == len(original)
    for attr in ("eos_token_id", "pad_token_id", "bos_token_id"):
        assert getattr(saved, attr) == getattr(original, attr) is not None


# ---- metrics, plots, checkpoints ---------------------------------------------------------

def test_metrics_records_have_step_loss_lr_grad_norm_tokens_per_sec(main_run):
    _, out = main_run
    train_records = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5, 6]
    for record in train_records:
        for key in ("step", "loss", "lr", "grad_norm", "tokens_per_sec"):
            assert key in record, (key, record)
            assert isinstance(record[key], (int, float)) and math.isfinite(record[key]), (key, record)
        assert record["loss"] > 0 and record["grad_norm"] > 0 and record["tokens_per_sec"] > 0
        assert record["lr"] > 0 or record["step"] == 6


def test_fractional_val_size_produces_eval_loss(main_run):
    _, out = main_run
    evals = [r for r in read_metrics(out) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(math.isfinite(r["eval_loss"]) and r["eval_loss"] > 0 for r in evals)


def test_plot_loss_writes_both_pngs(main_run):
    _, out = main_run
    for name in ("training_loss.png", "training_eval_loss.png"):
        path = out / name
        assert path.is_file(), name
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 1000, name


def test_save_steps_writes_checkpoint_folders(main_run):
    _, out = main_run
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.startswith("checkpoint-"))
    assert folders == ["checkpoint-3", "checkpoint-6"]
    for name in folders:
        assert list((out / name).glob("*.safetensors")), f"{name} holds no weights"


# ---- evaluation data from the other sources ----------------------------------------------

@pytest.mark.parametrize("overrides", [dict(val_size=20), dict(eval_dataset="tiny_json")], ids=["val_size_count", "eval_dataset"])
def test_other_validation_sources_produce_eval_loss(make_config, overrides):
    cfg = make_config(cutoff_len=32, max_steps=2, eval_steps=2, max_eval_batches=2, **overrides)
    run(cfg)
    evals = [r for r in read_metrics(cfg.output_dir) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2]
    assert math.isfinite(evals[0]["eval_loss"]) and evals[0]["eval_loss"] > 0
    assert not (Path(cfg.output_dir) / "training_loss.png").exists()  # plot_loss is off


def test_val_size_count_splits_off_documents_without_losing_tokens(make_config):
    train, val, _ = build_task(make_config(cutoff_len=32, val_size=20)).build_data()
    total, _, _ = build_task(make_config(cutoff_len=32)).build_data()
    def tokens(blocks):
        return sum(len(blocks[i]) for i in range(len(blocks)))
    assert val is not None and tokens(val) > 0
    assert tokens(train) + tokens(val) == tokens(total)


# ---- starting point and learning ---------------------------------------------------------

@pytest.fixture
def distinctive_model_dir(tiny_model_dir, tmp_path) -> Path:
    """tiny_model_dir with its embeddings scaled up, so its loss is far from any random init's."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(40.0)
    out = tmp_path / "distinctive"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_training_from_model_name_or_path_starts_from_its_weights(corpus_dir, distinctive_model_dir, tmp_path):
    """With a batch larger than the data, step 1 sees every block: its loss is order-independent
    and must equal the loaded model's mean next-token loss over the same blocks."""
    model_dir = distinctive_model_dir
    out = tmp_path / "from_pretrained"
    cfg = build_config(dict(
        model_name_or_path=str(model_dir), dataset="tiny_text", dataset_dir=str(corpus_dir),
        max_samples=8, cutoff_len=32, per_device_train_batch_size=64, learning_rate=1e-3, max_steps=1,
        logging_steps=1, save_steps=0, output_dir=str(out), disable_tqdm=True))
    task = build_task(cfg)
    train, _, _ = task.build_data()
    assert len(train) <= 64, "the whole dataset must fit in the first batch"
    run(cfg)
    (first,) = [r for r in read_metrics(out) if r.get("step") == 1 and "loss" in r]

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(train)):
            block = train[i][None]
            if block.shape[1] < 2:
                continue
            loss = model(input_ids=block, labels=block).loss.item()
            total += loss * (block.shape[1] - 1)
            count += block.shape[1] - 1
    assert first["loss"] == pytest.approx(total / count, rel=1e-5)
    assert abs(total / count - math.log(len(task.tokenizer))) > 1.0, "the model should be unlike a random init"


def test_training_loss_goes_down(make_config):
    cfg = make_config(cutoff_len=32, per_device_train_batch_size=4, learning_rate=3e-3, max_steps=30,
                      lr_scheduler_type="constant")
    run(cfg)
    losses = [r["loss"] for r in read_metrics(cfg.output_dir) if "loss" in r]
    assert len(losses) == 30
    start, end = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert end < 0.9 * start, (start, end, losses)


# ---- a model that is not there -----------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise AssertionError(f"network access attempted: {address}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # ember must not rely on it being set
    return attempts


@pytest.mark.parametrize("tokenizer", [False, True], ids=["tokenizer_from_model", "separate_tokenizer"])
@pytest.mark.parametrize("where", ["local", "hub_id"])
def test_missing_model_folder_is_a_config_error_without_download(corpus_dir, tokenizer_dir, tmp_path, monkeypatch,
                                                                  no_network, where, tokenizer):
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "no_such_model") if where == "local" else "someorg/some-model-7b"
    keys = dict(model_name_or_path=missing, dataset="tiny_text", dataset_dir=str(corpus_dir), cutoff_len=32,
                max_steps=1, save_steps=0, output_dir=str(tmp_path / "run"), disable_tqdm=True)
    if tokenizer:
        keys["tokenizer_name_or_path"] = str(tokenizer_dir)
    with pytest.raises(ConfigError) as err:
        run(build_config(keys))
    assert "model_name_or_path" in str(err.value) and missing in str(err.value)
    assert no_network == []


def test_missing_model_folder_on_the_command_line_exits_2_with_one_line(corpus_dir, tmp_path, monkeypatch, capsys, no_network):
    from ember.cli import main
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main() sets it with setdefault; keep the process clean
    missing = str(tmp_path / "absent")
    code = main(["train", "--model_name_or_path", missing, "--dataset", "tiny_text", "--dataset_dir", str(corpus_dir),
                 "--max_steps", "1", "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "model_name_or_path" in err[0] and missing in err[0], err
    assert no_network == []
