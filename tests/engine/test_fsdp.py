"""FSDP2 on two gloo CPU processes: the same run as one process, half the memory per rank,
DCP checkpoints that resume on another number of processes, and an ordinary HF export.

Runs (each once per module, asserted on by several tests):
  reference   one process, no sharding, batch 8 (in this process)
  fsdp1       one process, distributed_strategy fsdp (a one-process group, no torchrun), batch 8
  fsdp2       torchrun, 2 processes, fsdp, batch 4 per rank (same global batch)
  2→1, 2→2    fsdp2's output cut back to checkpoint-4, as if killed after step 6, resumed on 1 / 2
  1→2         fsdp1's output cut back the same way, resumed on 2 processes

Weights are compared after SGD with momentum: with AdamW the first updates are
≈ lr·sign(g), so an element whose gradient is ~1e-9 turns float-summation noise (a different
reduction order across ranks) into weight differences of 1e-5..1e-4 even when the maths
is identical. SGD shows a wrong gradient undamped and float noise as ~1e-7.

The data are chosen at run time from the fixture corpus: an even number of train blocks
that is not a multiple of the global batch 8 (the last batch of an epoch is short) and
short samples, so the ranks' token counts differ and the loss must be
normalised by the global count; and an odd number of validation blocks split so that one
rank has one evaluation batch fewer than the other (it must still join the FSDP forwards).

Per-rank memory is measured inside the torchrun workers by a sitecustomize module placed on
PYTHONPATH for that run only: after the first optimizer step it sums the bytes of the local
shards (DTensor.to_local()) of every parameter and every optimizer-state tensor.
"""
from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ember.config import ConfigError, build_config
from ember.engine.checkpoint import is_complete
from ember.engine.trainer import Trainer
from ember.tasks import build_task

import multiprocess_helpers as shared
from conftest import read_metrics
from multiprocess_helpers import (CUTOFF, GLOBAL_BATCH, STEPS, WEIGHT_TOL, as_args, assert_ran, clean_env,
                                  run_logged, uneven_base, weights)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

SIZES_HOOK = textwrap.dedent('''
    # test-only: each torchrun worker records its local parameter / optimizer-state bytes
    import os
    if "LOCAL_RANK" in os.environ and os.environ.get("EMBER_TEST_SIZES_DIR"):
        import json
        from pathlib import Path
        from torch.optim.optimizer import register_optimizer_step_post_hook

        def _local(t):
            return t.to_local() if hasattr(t, "to_local") else t

        def _after_step(optimizer, args, kwargs):
            rank = int(os.environ["RANK"])
            out = Path(os.environ["EMBER_TEST_SIZES_DIR"], f"sizes_{rank}.json")
            if out.exists():
                return
            params = [p for g in optimizer.param_groups for p in g["params"]]
            state = [t for s in optimizer.state.values() for t in s.values() if hasattr(t, "numel")]
            out.write_text(json.dumps({
                "rank": rank, "world": int(os.environ["WORLD_SIZE"]),
                "param_bytes": sum(_local(p).numel() * p.element_size() for p in params),
                "state_bytes": sum(_local(t).numel() * t.element_size() for t in state),
                "param_types": sorted({type(p).__name__ for p in params})}))

        register_optimizer_step_post_hook(_after_step)
''')


# ---- helpers ----------------------------------------------------------------------------
def torchrun_train(cfg: dict, log: Path, **env) -> tuple[int | None, str]:
    return run_logged([*TORCHRUN, "-m", "ember", "train", *as_args(cfg)], log, clean_env(**env))


class StepLog:
    """Wraps a task: records the step of every training micro-batch (evaluation passes -1)."""

    def __init__(self, task):
        self.task, self.steps = task, set()

    def __getattr__(self, name):
        return getattr(self.task, name)

    def training_step(self, model, batch, step):
        if step >= 0:
            self.steps.add(step)
        return self.task.training_step(model, batch, step)


def train_here(cfg_dict: dict) -> tuple[Trainer, StepLog]:
    cfg = build_config(cfg_dict)
    task = StepLog(build_task(cfg))
    trainer = Trainer(cfg, task)
    trainer.fit()
    return trainer, task


def interrupted_copy(src: Path, dst: Path, checkpoint: int = 4, killed_after: int = 6) -> Path:
    """src's output as a run killed after step `killed_after` would have left it: checkpoints up
    to `checkpoint`, metrics up to `killed_after`, no final export."""
    dst.mkdir(parents=True)
    for ckpt in src.glob("checkpoint-*"):
        if int(ckpt.name.split("-")[1]) <= checkpoint:
            shutil.copytree(ckpt, dst / ckpt.name)
    shutil.copy(src / "config.yaml", dst / "config.yaml")
    lines = [line for line in (src / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= killed_after]
    (dst / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    assert not (dst / "model.safetensors").exists()
    return dst


def assert_same_curve(got_dir, want_dir) -> None:
    """The shared check; failure messages call the wanted run "single-process"."""
    shared.assert_same_curve(got_dir, want_dir, want_name="single-process")


def assert_same_weights(got_dir, want_dir) -> None:
    """Tied weights may be stored in one export only; that is checked on its own."""
    shared.assert_same_weights(got_dir, want_dir, same_names=False)


def optimizer_and_param_bytes(trainer: Trainer) -> int:
    local = (lambda t: t.to_local() if hasattr(t, "to_local") else t)
    total = 0
    for opt in trainer.optimizers.values():
        params = [p for g in opt.param_groups for p in g["params"]]
        total += sum(local(p).numel() * p.element_size() for p in params)
        total += sum(local(t).numel() * t.element_size() for s in opt.state.values() for t in s.values()
                     if isinstance(t, torch.Tensor))
    return total


# ---- the runs ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_dir, tokenizer_dir):
    tmp = tmp_path_factory.mktemp("fsdp")
    base, data = uneven_base(corpus_dir, tokenizer_dir, tmp / "probe")
    eval_batch = data["val_blocks"] // 2  # rank 0 holds one block more: 2 evaluation batches, rank 1 one
    single = {**base, "per_device_train_batch_size": GLOBAL_BATCH, "per_device_eval_batch_size": 2 * eval_batch}
    double = {**base, "per_device_train_batch_size": GLOBAL_BATCH // 2, "per_device_eval_batch_size": eval_batch,
              "distributed_strategy": "fsdp"}
    out = {"data": data, "tmp": tmp}

    out["reference"], _ = train_here({**single, "output_dir": str(tmp / "reference")})
    out["reference_bytes"] = optimizer_and_param_bytes(out["reference"])
    out["fsdp1"], _ = train_here({**single, "distributed_strategy": "fsdp", "output_dir": str(tmp / "fsdp1")})

    hook = tmp / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SIZES_HOOK)
    (tmp / "sizes").mkdir()
    rc, out["fsdp2_log"] = torchrun_train({**double, "output_dir": str(tmp / "fsdp2")}, tmp / "fsdp2.log",
                                          hook=hook, EMBER_TEST_SIZES_DIR=str(tmp / "sizes"))
    assert_ran(rc, out["fsdp2_log"])
    out.update(single=single, double=double)
    return out


@pytest.fixture(scope="module")
def resumed(runs):
    """fsdp2's and fsdp1's outputs cut back to checkpoint-4 and resumed on 1 and 2 processes."""
    tmp, single, double = runs["tmp"], runs["single"], runs["double"]
    out = {}
    # 2 → 1: the sharded checkpoint of two ranks, continued by one process with twice the batch
    interrupted_copy(tmp / "fsdp2", tmp / "resumed_2to1")
    try:
        _, task = train_here({**single, "distributed_strategy": "fsdp", "output_dir": str(tmp / "resumed_2to1"),
                              "resume_from_checkpoint": True})
        out["2to1"] = task.steps
    except Exception as err:  # reported by the test that needs this run, not as an error of every test
        out["2to1"] = err
    interrupted_copy(tmp / "fsdp2", tmp / "resumed_2to2")
    out["2to2"] = torchrun_train({**double, "output_dir": str(tmp / "resumed_2to2"), "resume_from_checkpoint": True},
                                 tmp / "resumed_2to2.log")
    interrupted_copy(tmp / "fsdp1", tmp / "resumed_1to2")
    out["1to2"] = torchrun_train({**double, "output_dir": str(tmp / "resumed_1to2"), "resume_from_checkpoint": True},
                                 tmp / "resumed_1to2.log")
    return out


@pytest.mark.slow
def test_the_data_make_the_last_batch_uneven(runs):
    data = runs["data"]
    assert data["blocks"] % 2 == 0 and data["blocks"] % GLOBAL_BATCH, data
    assert data["shortest"] < CUTOFF and data["val_blocks"] % 2 == 1, data
    losses = [r["loss"] for r in read_metrics(runs["tmp"] / "reference") if "loss" in r]
    assert losses[-1] < losses[0] - 0.3, "the reference run should learn, or equality proves little"


# ---- equivalence ------------------------------------------------------------------------
@pytest.mark.slow
def test_fsdp_two_processes_log_the_single_process_losses(runs):
    """loss, grad_norm, lr, epoch, tokens_seen and eval_loss of every step, within 1e-5."""
    assert_same_curve(runs["tmp"] / "fsdp2", runs["tmp"] / "reference")
    assert [r["step"] for r in read_metrics(runs["tmp"] / "fsdp2") if "eval_loss" in r] == [4, 8]


@pytest.mark.slow
def test_fsdp_two_processes_end_at_the_single_process_weights(runs):
    assert_same_weights(runs["tmp"] / "fsdp2", runs["tmp"] / "reference")


@pytest.mark.slow
def test_fsdp_one_process_without_torchrun_trains_like_the_plain_run(runs):
    assert runs["fsdp1"].world.size == 1
    assert_same_curve(runs["tmp"] / "fsdp1", runs["tmp"] / "reference")
    assert_same_weights(runs["tmp"] / "fsdp1", runs["tmp"] / "reference")


@pytest.mark.slow
def test_fsdp_one_process_writes_a_dcp_checkpoint(runs):
    ckpt = runs["tmp"] / "fsdp1" / "checkpoint-4"
    assert is_complete(ckpt)
    assert (ckpt / "dcp" / ".metadata").is_file() and (ckpt / "dcp" / "__0_0.distcp").is_file()
    assert not (ckpt / "model.safetensors").exists() and not (ckpt / "optimizer.pt").exists()


# ---- memory per rank --------------------------------------------------------------------
@pytest.mark.slow
def test_each_rank_holds_half_the_parameters_and_optimizer_state(runs):
    sizes = [json.loads((runs["tmp"] / "sizes" / f"sizes_{rank}.json").read_text()) for rank in (0, 1)]
    total = runs["reference_bytes"]
    assert total > 2 * 100_000 * 4, "the reference should count weights and momentum of ~117k parameters"
    for s in sizes:
        assert s["world"] == 2 and s["param_types"] == ["DTensor"], s
        share = (s["param_bytes"] + s["state_bytes"]) / total
        assert 0.45 <= share <= 0.55, f"rank {s['rank']} holds {share:.2f} of the single-process bytes: {s}"
        assert s["state_bytes"] > 0, "optimizer state (momentum) should exist after the first step"


@pytest.mark.slow
def test_each_rank_writes_about_half_of_the_one_process_dcp_shard(runs):
    one = (runs["tmp"] / "fsdp1" / "checkpoint-4" / "dcp" / "__0_0.distcp").stat().st_size
    dcp = runs["tmp"] / "fsdp2" / "checkpoint-4" / "dcp"
    for rank in (0, 1):
        share = (dcp / f"__{rank}_0.distcp").stat().st_size / one
        assert 0.4 <= share <= 0.6, f"rank {rank} wrote {share:.2f} of the one-process shard"


# ---- checkpoints and outputs ------------------------------------------------------------
@pytest.mark.slow
def test_fsdp_checkpoint_is_written_by_every_rank_through_dcp(runs):
    root = runs["tmp"] / "fsdp2"
    assert sorted(p.name for p in root.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert not list(root.glob(".tmp-*")), "a temporary checkpoint folder was left behind"
    for step in (4, 8):
        ckpt = root / f"checkpoint-{step}"
        assert is_complete(ckpt)
        listed = json.loads((ckpt / "COMPLETE").read_text())["files"]
        for name in ("dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp", "rng_state_0.pt", "rng_state_1.pt",
                     "trainer_state.json"):
            assert name in listed, f"{name} missing from {ckpt.name}'s manifest {sorted(listed)}"
        assert not (ckpt / "model.safetensors").exists(), "FSDP checkpoints are sharded, not gathered"
        assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_only_rank_zero_writes_metrics_checkpoint_log_plots_and_export(runs):
    root, log = runs["tmp"] / "fsdp2", runs["fsdp2_log"]
    steps = [r["step"] for r in read_metrics(root)]
    assert steps == list(range(1, STEPS + 1)), f"metrics.jsonl steps {steps} (duplicated lines?)"
    assert [json.loads(line)["step"] for line in (root / "checkpoints.jsonl").read_text().splitlines()] == [4, 8]
    assert (root / "training_loss.png").is_file()
    assert log.count("saved the trained model") == 1 and log.count("done: step 8") == 1
    assert log.count("rank 0 of 2") == 1 and log.count("rank 1 of 2") == 1


@pytest.mark.slow
def test_fsdp_export_is_an_ordinary_hf_folder(runs):
    from transformers import AutoModelForCausalLM
    root = runs["tmp"] / "fsdp2"
    model = AutoModelForCausalLM.from_pretrained(str(root))
    want = AutoModelForCausalLM.from_pretrained(str(runs["tmp"] / "reference")).state_dict()
    got = model.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=WEIGHT_TOL, rtol=0, msg=name)
    assert not any(isinstance(t, torch.distributed.tensor.DTensor) for t in got.values())


@pytest.mark.slow
def test_fsdp_export_holds_the_same_tensors_as_a_single_process_export(runs):
    """Tied weights (tie_word_embeddings) are stored once, as the unsharded export does."""
    got, want = weights(runs["tmp"] / "fsdp2"), weights(runs["tmp"] / "reference")
    assert sorted(got) == sorted(want), f"extra tensors {sorted(set(got) - set(want))}, missing " \
                                        f"{sorted(set(want) - set(got))}"


# ---- resume on another number of processes ----------------------------------------------
@pytest.mark.slow
def test_dcp_checkpoint_of_two_processes_resumes_on_one(runs, resumed):
    trained = resumed["2to1"]
    if isinstance(trained, Exception):
        raise trained
    assert trained == set(range(4, STEPS)), f"the resumed run trained steps {sorted(trained)}, not 5..8"
    assert_same_curve(runs["tmp"] / "resumed_2to1", runs["tmp"] / "fsdp2")
    assert_same_weights(runs["tmp"] / "resumed_2to1", runs["tmp"] / "fsdp2")
    assert_same_weights(runs["tmp"] / "resumed_2to1", runs["tmp"] / "reference")


def resumed_steps(log: str) -> list[int]:
    return [int(line.split()[1].split("/")[0]) for line in log.splitlines() if line.startswith("step ")]


@pytest.mark.slow
def test_dcp_checkpoint_of_two_processes_resumes_on_two(runs, resumed):
    rc, log = resumed["2to2"]
    assert_ran(rc, log)
    assert log.count("resumed from") == 2 and "checkpoint-4 at step 4" in log
    assert resumed_steps(log) == [5, 6, 7, 8]
    assert_same_curve(runs["tmp"] / "resumed_2to2", runs["tmp"] / "fsdp2")
    assert_same_weights(runs["tmp"] / "resumed_2to2", runs["tmp"] / "fsdp2")


@pytest.mark.slow
def test_dcp_checkpoint_of_one_process_resumes_on_two(runs, resumed):
    rc, log = resumed["1to2"]
    assert_ran(rc, log)
    assert log.count("resumed from") == 2 and "checkpoint-4 at step 4" in log
    assert resumed_steps(log) == [5, 6, 7, 8]
    assert_same_curve(runs["tmp"] / "resumed_1to2", runs["tmp"] / "reference")
    assert_same_weights(runs["tmp"] / "resumed_1to2", runs["tmp"] / "reference")


# ---- sharding options, in this process --------------------------------------------------
@pytest.mark.parametrize("precision, dtype", [({}, torch.float32), ({"bf16": True}, torch.bfloat16)])
def test_every_block_and_the_root_are_sharded_with_the_precision_policy(make_config, precision, dtype):
    from torch.distributed.fsdp import FSDPModule
    cfg = make_config(distributed_strategy="fsdp", max_steps=1, **precision)
    trainer = Trainer(cfg, build_task(cfg))
    trainer.setup()
    try:
        model = trainer.model
        blocks = list(model.model.layers)
        assert len(blocks) == 2 and all(isinstance(b, FSDPModule) for b in blocks) and isinstance(model, FSDPModule)
        assert all(isinstance(p, torch.distributed.tensor.DTensor) and p.dtype == torch.float32
                   for p in model.parameters()), "sharded parameters keep their storage dtype"
        seen = []
        hook = blocks[0].mlp.down_proj.register_forward_pre_hook(lambda m, args: seen.append(m.weight.dtype))
        with torch.no_grad():
            model(input_ids=torch.randint(0, 300, (1, 8)))
        hook.remove()
        assert seen == [dtype], f"the block computed with {seen} weights"
    finally:
        trainer.world.stop()


def test_fsdp_cpu_offload_trains_on_a_cpu_machine(make_config, train, tmp_path):
    """fsdp_cpu_offload is valid config; on a machine without an accelerator it must still train
    (there is nothing to pin memory for) and match the run without offload."""
    plain = train(make_config(distributed_strategy="fsdp", output_dir=str(tmp_path / "plain")))
    offload = train(make_config(distributed_strategy="fsdp", fsdp_cpu_offload=True,
                                output_dir=str(tmp_path / "offload")))
    assert offload.state["step"] == plain.state["step"] == 6
    assert_same_curve(tmp_path / "offload", tmp_path / "plain")


class TwoOptimizers:
    """The language-model task with its weights split between two optimizers, each stepped by
    the same loss (as a GAN task splits generator and discriminator)."""

    def __init__(self, task):
        self.task, self.initial = task, {}

    def __getattr__(self, name):
        return getattr(self.task, name)

    def build_model(self):
        model = self.task.build_model()
        self.initial = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model

    def param_groups(self, model):
        named = list(model.named_parameters())
        return {"layers": [{"params": [p for n, p in named if ".layers." in n]}],
                "rest": [{"params": [p for n, p in named if ".layers." not in n]}]}

    def training_step(self, model, batch, step):
        loss = self.task.training_step(model, batch, step)["model"]
        return {"layers": loss, "rest": loss}


def test_several_optimizers_under_fsdp_are_refused_not_silently_untrained(make_config):
    """Under FSDP2 backward(inputs=sharded parameters) gives them no gradient: such a run would
    train nothing and say nothing. The engine refuses it; the same task trains both groups
    without FSDP, in the same output_dir (the refused run left only its config.yaml)."""
    cfg = make_config(distributed_strategy="fsdp", max_steps=2)
    with pytest.raises(ConfigError, match="several optimizers .layers, rest.; use ddp"):
        Trainer(cfg, TwoOptimizers(build_task(cfg))).fit()
    cfg = make_config(max_steps=2)
    task = TwoOptimizers(build_task(cfg))
    trainer = Trainer(cfg, task)
    trainer.fit()
    changed = {n for n, p in trainer.raw.named_parameters() if not torch.equal(p.detach(), task.initial[n])}
    assert any(".layers." in n for n in changed) and any(".layers." not in n for n in changed), changed
