"""DDP on two gloo CPU processes: the same run as one process with the same global batch,
rank-0-only outputs, and an elastic restart after a rank is killed.

Runs (each once per module, asserted on by several tests):
  reference        one process, batch 8 (in this process)
  reference_accum  one process, batch 8 × gradient_accumulation_steps 2
  ddp              `ember train ... --nproc_per_node 2` (ember starts torchrun), batch 4 per rank
  ddp_accum        NPROC_PER_NODE=2 `ember train ...`, batch 4 × gradient_accumulation_steps 2
                   per rank (the no_sync path), global batch 16
  elastic          as ddp, with --max_restarts 1; rank 1 SIGKILLs itself after its 6th optimizer
                   step on the first attempt (a sitecustomize module placed on PYTHONPATH for
                   this run only, so no source is touched); torchrun restarts both ranks, which
                   resume from checkpoint-4. The killed rank comes back 2 s after the other:
                   ranks of a real job never restart in lockstep, and the restarted process
                   group must not pick up what the first attempt left in torchrun's store.

Weights are compared after SGD with momentum: with AdamW the first updates are
≈ lr·sign(g), so an element whose gradient is ~1e-9 turns float-summation noise (a different
all-reduce order) into weight differences of 1e-5..1e-4 even when the maths is identical.

The data are chosen at run time from the fixture corpus: an even number of train blocks that
is not a multiple of the global batch 8, so the last batch of every epoch is short, and
short samples, so the ranks' token counts differ; the loss must be normalised by the
global token count. The validation blocks are odd in number and split so that rank 1 has one
evaluation batch fewer than rank 0.
"""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ember.config import build_config
from ember.engine.checkpoint import is_complete
from ember.engine.distributed import World
from ember.engine.checkpoint.resume import wants_resume
from ember.engine.trainer import Trainer
from ember.tasks import build_task

from conftest import read_metrics
from multiprocess_helpers import (CUTOFF, GLOBAL_BATCH, LAUNCH_VARS, STEPS, as_args, assert_ran, assert_same_curve,
                                  assert_same_weights, clean_env, run_logged, uneven_base)

ACCUM_STEPS = 6
KILL_AT = 6
EMBER = str(Path(sys.executable).parent / "ember")

KILL_HOOK = textwrap.dedent('''
    # test-only: rank EMBER_TEST_KILL_RANK SIGKILLs itself after optimizer step EMBER_TEST_KILL_AT,
    # on torchrun's first attempt only
    import os
    if ("LOCAL_RANK" in os.environ and os.environ.get("EMBER_TEST_KILL_AT")
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
            and os.environ.get("RANK") == os.environ.get("EMBER_TEST_KILL_RANK", "1")):
        import signal
        from pathlib import Path
        from torch.optim.optimizer import register_optimizer_step_post_hook
        _steps = [0]

        def _after_step(optimizer, args, kwargs):
            _steps[0] += 1
            if _steps[0] == int(os.environ["EMBER_TEST_KILL_AT"]):
                Path(os.environ["EMBER_TEST_KILL_MARKER"]).write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

        register_optimizer_step_post_hook(_after_step)

    # the killed rank comes back a little later than the others, as a rank on a busy node would
    if (os.environ.get("EMBER_TEST_SLOW_RESTART") and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
            and os.environ.get("RANK") == os.environ.get("EMBER_TEST_KILL_RANK", "1")):
        import time
        time.sleep(float(os.environ["EMBER_TEST_SLOW_RESTART"]))
''')


# ---- helpers ----------------------------------------------------------------------------
def run_ok(command: list[str], log: Path, env: dict) -> str:
    rc, text = run_logged(command, log, env)
    assert_ran(rc, text)
    return text


def train_here(cfg_dict: dict) -> Trainer:
    cfg = build_config(cfg_dict)
    trainer = Trainer(cfg, build_task(cfg))
    trainer.fit()
    return trainer


# ---- the runs ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_dir, tokenizer_dir):
    tmp = tmp_path_factory.mktemp("ddp")
    base, data = uneven_base(corpus_dir, tokenizer_dir, tmp / "probe")
    eval_batch = data["val_blocks"] // 2  # rank 0 holds one block more: 2 evaluation batches, rank 1 one
    single = {**base, "per_device_eval_batch_size": 2 * eval_batch}
    double = {**base, "per_device_train_batch_size": GLOBAL_BATCH // 2, "per_device_eval_batch_size": eval_batch}
    out = {"data": data, "tmp": tmp}

    train_here({**single, "per_device_train_batch_size": GLOBAL_BATCH, "output_dir": str(tmp / "reference")})
    # accumulation windows run on across epoch ends, so the one-process run with the same windows
    # is 8 × 2 (16 × 1 differs whenever an epoch is not a whole number of windows)
    train_here({**single, "per_device_train_batch_size": GLOBAL_BATCH, "gradient_accumulation_steps": 2,
                "max_steps": ACCUM_STEPS, "output_dir": str(tmp / "reference_accum")})

    out["ddp_log"] = run_ok([EMBER, "train", *as_args({**double, "output_dir": str(tmp / "ddp")}),
                             "--nproc_per_node", "2"], tmp / "ddp.log", clean_env())
    accum = {**double, "gradient_accumulation_steps": 2, "max_steps": ACCUM_STEPS, "output_dir": str(tmp / "ddp_accum")}
    out["ddp_accum_log"] = run_ok([EMBER, "train", *as_args(accum)], tmp / "ddp_accum.log",
                                  clean_env(NPROC_PER_NODE="2"))
    out["double"] = double
    return out


@pytest.mark.slow
def test_the_data_make_the_last_batch_uneven(runs):
    data = runs["data"]
    assert data["blocks"] % 2 == 0 and data["blocks"] % GLOBAL_BATCH, data
    assert data["shortest"] < CUTOFF and data["val_blocks"] % 2 == 1, data
    for name in ("reference", "reference_accum"):
        losses = [r["loss"] for r in read_metrics(runs["tmp"] / name) if "loss" in r]
        assert losses[-1] < losses[0] - 0.3, f"{name} should learn, or equality proves little"


# ---- equivalence with one process -------------------------------------------------------
@pytest.mark.slow
def test_ddp_two_processes_log_the_single_process_losses(runs):
    """loss, grad_norm, lr, epoch, tokens_seen and eval_loss of every step, within 1e-5; the
    epochs' short last batches (and the short samples) included."""
    assert_same_curve(runs["tmp"] / "ddp", runs["tmp"] / "reference")
    assert [r["step"] for r in read_metrics(runs["tmp"] / "ddp") if "eval_loss" in r] == [4, 8]


@pytest.mark.slow
def test_ddp_two_processes_end_at_the_single_process_weights(runs):
    assert_same_weights(runs["tmp"] / "ddp", runs["tmp"] / "reference")


@pytest.mark.slow
def test_ddp_with_accumulation_matches_one_process_with_the_whole_batch(runs):
    """2 ranks × 4 × accumulation 2 (gradients not synced on the first micro-step) = 8 × 2 on one."""
    assert_same_curve(runs["tmp"] / "ddp_accum", runs["tmp"] / "reference_accum")
    assert_same_weights(runs["tmp"] / "ddp_accum", runs["tmp"] / "reference_accum")


# ---- what each rank writes --------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("run", ["ddp", "ddp_accum"])
def test_only_rank_zero_writes_metrics_checkpoint_log_plots_and_export(runs, run):
    root, log = runs["tmp"] / run, runs[f"{run}_log"]
    steps = STEPS if run == "ddp" else ACCUM_STEPS
    logged = [r["step"] for r in read_metrics(root)]
    assert logged == list(range(1, steps + 1)), f"metrics.jsonl steps {logged} (duplicated lines?)"
    saved = [json.loads(line)["step"] for line in (root / "checkpoints.jsonl").read_text().splitlines()]
    assert saved == list(range(4, steps + 1, 4))
    assert (root / "training_loss.png").is_file() and (root / "model.safetensors").is_file()
    assert log.count("saved the trained model") == 1 and log.count(f"done: step {steps}") == 1
    assert log.count("rank 0 of 2, ddp") == 1 and log.count("rank 1 of 2, ddp") == 1


@pytest.mark.slow
def test_ddp_checkpoint_holds_one_model_copy_and_every_rank_rng_state(runs):
    ckpt = runs["tmp"] / "ddp" / "checkpoint-4"
    assert is_complete(ckpt)
    names = sorted(p.name for p in ckpt.iterdir())
    assert {"model.safetensors", "optimizer.pt", "rng_state_0.pt", "rng_state_1.pt", "trainer_state.json"} <= set(names)
    assert not (ckpt / "dcp").exists(), "replicated models are saved as safetensors, not DCP"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    # the data position counts the samples of all ranks, so another process count can resume it
    assert state["data"] == {"epoch": 0, "samples": 4 * GLOBAL_BATCH}
    assert not list((runs["tmp"] / "ddp").glob(".tmp-*"))


# ---- elastic restart --------------------------------------------------------------------
@pytest.fixture(scope="module")
def elastic(runs):
    """`ember train ... --nproc_per_node 2 --max_restarts 1`; rank 1 kills itself after step 6 and
    comes back 2 s after rank 0. ddp_timeout bounds a hang in the restarted rendezvous."""
    tmp = runs["tmp"]
    hook = tmp / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    marker = tmp / "killed"
    rc, log = run_logged(
        [EMBER, "train", *as_args({**runs["double"], "ddp_timeout": 60, "output_dir": str(tmp / "elastic")}),
         "--nproc_per_node", "2", "--max_restarts", "1"], tmp / "elastic.log",
        clean_env(hook=hook, EMBER_TEST_KILL_AT=str(KILL_AT), EMBER_TEST_KILL_RANK="1",
                  EMBER_TEST_KILL_MARKER=str(marker), EMBER_TEST_SLOW_RESTART="2"), timeout=100)
    return {"rc": rc, "log": log, "marker": marker, "root": tmp / "elastic"}


@pytest.mark.slow
def test_a_killed_rank_is_restarted_and_the_run_resumes_from_the_newest_checkpoint(elastic):
    log = elastic["log"]
    assert elastic["marker"].is_file(), "rank 1 was never killed: the test proves nothing"
    assert elastic["rc"] == 0, f"{'hung' if elastic['rc'] is None else 'exit code %s' % elastic['rc']}; " \
                               f"log tail:\n{log[-4000:]}"
    assert log.count("rank 1 of 2, ddp") == 2, "torchrun should have started the workers twice"
    assert log.count("resumed from") == 2 and "checkpoint-4 at step 4" in log, \
        "both restarted ranks resume from checkpoint-4 (TORCHELASTIC_RESTART_COUNT > 0)"
    assert log.count("done: step 8") == 1


@pytest.mark.slow
def test_the_restarted_run_equals_the_uninterrupted_one(runs, elastic):
    assert elastic["rc"] == 0, "the restarted run failed (see the test above)"
    root = elastic["root"]
    assert [r["step"] for r in read_metrics(root)] == list(range(1, STEPS + 1)), \
        "records the killed attempt wrote after checkpoint-4 must be dropped, not duplicated"
    assert_same_curve(root, runs["tmp"] / "ddp")
    assert_same_weights(root, runs["tmp"] / "ddp")
    assert_same_weights(root, runs["tmp"] / "reference")


# ---- World on one process (no torchrun) --------------------------------------------------
@pytest.fixture
def one_process(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)


def test_world_collectives_are_identities_on_one_process(one_process, make_config):
    world = World(make_config())
    world.start(torch.device("cpu"))
    assert (world.rank, world.size, world.local_rank, world.is_main) == (0, 1, 0, True)
    assert not torch.distributed.is_initialized(), "DDP on one process needs no process group"
    t = torch.tensor([1.5, -2.0])
    assert torch.equal(world.sum(t), t)
    assert world.any(True) is True and world.any(False) is False
    obj = {"a": [1, 2]}
    assert world.broadcast(obj) is obj
    assert world.mean_floats({"x": 0.25}) == {"x": 0.25}
    world.barrier()
    model = torch.nn.Linear(2, 2)
    assert world.wrap(model, torch.device("cpu"), None) is model
    assert World.unwrap(model) is model


class FakeDDP(torch.nn.Module):
    """Records whether no_sync was entered."""

    def __init__(self):
        super().__init__()
        self.module = torch.nn.Linear(1, 1)
        self.entered = 0

    def no_sync(self):
        outer = self

        class _Ctx:
            def __enter__(self):
                outer.entered += 1

            def __exit__(self, *exc):
                return False
        return _Ctx()


class FakeFSDP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def set_requires_gradient_sync(self, flag):
        self.calls.append(flag)


def test_no_sync_on_every_micro_step_but_the_last(monkeypatch, make_config):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    world = World(make_config())
    assert world.size == 2
    ddp = FakeDDP()
    with world.no_sync(ddp, sync=False):
        pass
    with world.no_sync(ddp, sync=True):
        pass
    assert ddp.entered == 1, "only the non-final micro-step skips the gradient all-reduce"
    assert World.unwrap(ddp) is ddp.module
    fsdp = FakeFSDP()
    with world.no_sync(fsdp, sync=False):
        assert fsdp.calls == [False]
    assert fsdp.calls == [False, True], "FSDP must sync again after the skipped micro-step"
    with world.no_sync(fsdp, sync=True):
        pass
    assert fsdp.calls == [False, True]


def test_a_torchrun_restart_resumes_automatically(monkeypatch, make_config):
    cfg = make_config()
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert not wants_resume(cfg)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert not wants_resume(cfg)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert wants_resume(cfg)
