"""gradient_checkpointing under DDP and FSDP2 (two gloo CPU processes): the run is the one-process
run without checkpointing. DDP's gradient hooks and FSDP2's gather-for-backward both fire while a
block is being recomputed, so both wrappers are checked, not assumed."""
from __future__ import annotations

import sys

import pytest

from multiprocess_helpers import (GLOBAL_BATCH, as_args, assert_ran, assert_same_curve, base_config, clean_env,
                                  run_logged)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_with_checkpointing_log_the_plain_single_process_losses(
        strategy, corpus_dir, tokenizer_dir, train, tmp_path):
    from ember.config import build_config
    base = {**base_config(corpus_dir, tokenizer_dir), "val_size": 0, "save_steps": 0, "plot_loss": False,
            "max_steps": 4}
    train(build_config({**base, "per_device_train_batch_size": GLOBAL_BATCH, "output_dir": str(tmp_path / "one")}))
    double = {**base, "per_device_train_batch_size": GLOBAL_BATCH // 2, "distributed_strategy": strategy,
              "gradient_checkpointing": True, "output_dir": str(tmp_path / "two")}
    rc, log = run_logged([*TORCHRUN, "-m", "ember", "train", *as_args(double)], tmp_path / "two.log", clean_env())
    assert_ran(rc, log)
    assert_same_curve(tmp_path / "two", tmp_path / "one", want_name="single-process without checkpointing")
