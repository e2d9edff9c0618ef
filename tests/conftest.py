"""Shared fixtures: a small corpus, a tokenizer trained on it and a tiny Llama (~120k params).

Everything is built locally from the project's own demo corpus; nothing is downloaded.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ember.config import build_config

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "examples" / "data" / "pydoc.txt"


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """dataset_dir with 'tiny_text' (300 paragraphs, .txt) and 'tiny_json' (the same as .jsonl)."""
    root = tmp_path_factory.mktemp("data")
    lines = CORPUS.read_text(encoding="utf-8").splitlines()[:300]
    (root / "tiny.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "tiny.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in lines), encoding="utf-8")
    (root / "dataset_info.json").write_text(json.dumps({
        "tiny_text": {"file_name": "tiny.txt"},
        "tiny_json": {"file_name": "tiny.jsonl", "columns": {"prompt": "content"}},
    }))
    return root


@pytest.fixture(scope="session")
def tokenizer_dir(corpus_dir, tmp_path_factory) -> Path:
    from ember.tokenizer import train_tokenizer
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer("tiny_text", str(corpus_dir), 384, str(out))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A local HF model folder (weights + tokenizer), as a user would point model_name_or_path at."""
    import torch
    from ember.models.hf import load_tokenizer, new_causal_lm
    out = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(tokenizer_dir), "tokenizer")
    new_causal_lm("llama-tiny", tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def make_config(corpus_dir, tokenizer_dir, tmp_path):
    """Build a validated config for a tiny pretraining run; keyword overrides win."""
    def make(**overrides):
        base = dict(model_config="llama-tiny", tokenizer_name_or_path=str(tokenizer_dir), dataset="tiny_text",
                    dataset_dir=str(corpus_dir), cutoff_len=64, per_device_train_batch_size=4,
                    learning_rate=1e-3, max_steps=6, logging_steps=1, save_steps=0,
                    output_dir=str(tmp_path / "run"), disable_tqdm=True)
        base.update(overrides)
        return build_config(base)
    return make


@pytest.fixture
def train():
    """Run a config to the end; returns the Trainer so tests can inspect model and state."""
    from ember.engine.trainer import Trainer
    from ember.tasks import build_task

    def run(cfg):
        trainer = Trainer(cfg, build_task(cfg))
        trainer.fit()
        return trainer
    return run


def read_metrics(output_dir) -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


TIMINGS = {"tokens_per_sec", "data_wait", "mfu"}  # wall-clock measures: never equal between runs


def curve(output_dir) -> list[dict]:
    """The logged records without their wall-clock measures: what two equal runs share exactly."""
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_metrics(output_dir)]


@pytest.fixture
def one_thread():
    """One torch thread for the test: small 3D convolutions on a shared 2-core machine run far
    faster single-threaded (video tests use it with pytestmark)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Tests marked cuda are skipped without a GPU (bench/gpu_check.sh runs them on one)."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run bench/gpu_check.sh on one)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _quiet_logs():
    logging.getLogger("ember").setLevel(logging.WARNING)
    yield


class CrashAt:
    """Wraps a task: raises in the training step that would complete step `step` (a crash)."""

    def __init__(self, task, step: int):
        self.task, self.step = task, step

    def __getattr__(self, name):
        return getattr(self.task, name)

    def training_step(self, model, batch, step):
        if step + 1 == self.step:
            raise RuntimeError("simulated crash")
        return self.task.training_step(model, batch, step)


# tests/engine/multiprocess_helpers.py holds assertions shared by test modules; rewrite them as
# pytest rewrites the test modules' own (it must be registered before it is first imported)
pytest.register_assert_rewrite("multiprocess_helpers")
