"""`ember train ... --nproc_per_node N` (or NPROC_PER_NODE=N) starts torchrun itself, as
llamafactory-cli does; the processes torchrun starts train and never launch again.

Two real launches (slow; ~10 s each, run once per module) and the command line ember builds
for torchrun checked without running it (subprocess.call replaced).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ember import launch
from ember.cli import main

from conftest import read_metrics

EMBER = str(Path(sys.executable).parent / "ember")
TIMEOUT = 180
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
               "MASTER_PORT", "NPROC_PER_NODE", "NNODES", "NODE_RANK", "TORCHELASTIC_RESTART_COUNT")


@pytest.fixture
def no_launch_env(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


# ---- real launches ----------------------------------------------------------------------
def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def run(command: list[str], env: dict) -> tuple[int, str]:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"`{' '.join(command[:3])} ...` hung for {TIMEOUT}s:\n{out[-3000:]}")
    return proc.returncode, out


@pytest.fixture(scope="module")
def launched(tmp_path_factory, corpus_dir, tokenizer_dir):
    tmp = tmp_path_factory.mktemp("launch")
    args = ["model_config=llama-tiny", f"tokenizer_name_or_path={tokenizer_dir}", "dataset=tiny_text",
            f"dataset_dir={corpus_dir}", "max_samples=8", "cutoff_len=32", "per_device_train_batch_size=2",
            "max_steps=2", "save_steps=2", "logging_steps=1", "disable_tqdm=true"]
    return {
        "flag": (tmp / "flag", *run([EMBER, "train", *args, f"output_dir={tmp / 'flag'}", "--nproc_per_node", "2"],
                                    clean_env())),
        "env": (tmp / "env", *run([EMBER, "train", *args, f"output_dir={tmp / 'env'}"],
                                  clean_env(NPROC_PER_NODE="2"))),
    }


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flag", "env"])
def test_ember_train_starts_torchrun_with_two_processes(launched, how):
    root, rc, log = launched[how]
    assert rc == 0, log[-4000:]
    launches = [line for line in log.splitlines() if line.startswith("ember: launching")]
    assert len(launches) == 1, f"expected one launch, got {launches}"
    assert "torch.distributed.run" in launches[0] and "--nproc_per_node=2" in launches[0]
    assert "--standalone" in launches[0]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_launched_processes_train_as_two_ranks_without_relaunching(launched, how):
    root, rc, log = launched[how]
    assert rc == 0, log[-4000:]
    # each child sees nproc_per_node 2 (argument or inherited environment) but runs under torchrun
    assert log.count("ember: launching") == 1
    assert log.count("rank 0 of 2") == 1 and log.count("rank 1 of 2") == 1
    assert log.count("done: step 2") == 1, "only rank 0 reports the result"
    ckpt = root / "checkpoint-2"
    assert (ckpt / "rng_state_0.pt").is_file() and (ckpt / "rng_state_1.pt").is_file()
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2
    assert [r["step"] for r in read_metrics(root)] == [1, 2]


# ---- when to launch, and with what --------------------------------------------------------
def test_one_process_by_default(no_launch_env, make_config):
    assert not launch.needs_launch(make_config())


@pytest.mark.parametrize("overrides, env", [({"nproc_per_node": 2}, {}), ({}, {"NPROC_PER_NODE": "2"}),
                                            ({"nnodes": 2}, {}), ({}, {"NNODES": "2"})])
def test_more_than_one_process_launches(no_launch_env, make_config, overrides, env):
    for var, value in env.items():
        no_launch_env.setenv(var, value)
    assert launch.needs_launch(make_config(**overrides))


def test_under_torchrun_nothing_launches_again(no_launch_env, make_config):
    for var, value in {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2", "NPROC_PER_NODE": "2"}.items():
        no_launch_env.setenv(var, value)
    assert not launch.needs_launch(make_config(nproc_per_node=2))
    assert not launch.needs_launch(make_config(nnodes=2))


def test_environment_fills_only_what_the_config_leaves_at_its_default(no_launch_env, make_config):
    for var, value in {"NPROC_PER_NODE": "3", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.7",
                       "MASTER_PORT": "29611"}.items():
        no_launch_env.setenv(var, value)
    assert launch.launch_settings(make_config()) == {"nproc_per_node": 3, "nnodes": 2, "node_rank": 1,
                                                    "master_addr": "10.0.0.7", "master_port": 29611}
    assert launch.launch_settings(make_config(nproc_per_node=4))["nproc_per_node"] == 4


def test_an_explicit_default_value_still_wins_over_the_environment(no_launch_env, make_config):
    """`nproc_per_node: 1` written out means one process, even with NPROC_PER_NODE=2 set."""
    no_launch_env.setenv("NPROC_PER_NODE", "2")
    assert launch.needs_launch(make_config())
    assert not launch.needs_launch(make_config(nproc_per_node=1))


@pytest.fixture
def calls(no_launch_env):
    seen = []

    def fake_call(command, *args, **kwargs):
        seen.append(command)
        return 7
    no_launch_env.setattr(launch.subprocess, "call", fake_call)
    return seen


def test_one_machine_runs_standalone_torchrun_with_the_same_arguments(calls, make_config):
    cfg = make_config(nproc_per_node=2, max_restarts=3)
    assert launch.run_torchrun(cfg, ["run.yaml", "max_steps=5", "--nproc_per_node", "2"]) == 7
    (command,) = calls
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in command and "--max_restarts=3" in command and "--standalone" in command
    assert not any(c.startswith("--nnodes") or c.startswith("--master_addr") for c in command)
    assert command[-7:] == ["-m", "ember", "train", "run.yaml", "max_steps=5", "--nproc_per_node", "2"]


def test_several_machines_meet_at_the_master(calls, make_config):
    cfg = make_config(nproc_per_node=2, nnodes=2, node_rank=1, master_addr="10.0.0.7", master_port=29611)
    launch.run_torchrun(cfg, [])
    (command,) = calls
    assert "--standalone" not in command
    for flag in ("--nproc_per_node=2", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.7",
                 "--master_port=29611"):
        assert flag in command, f"{flag} missing from {command}"


def test_a_master_port_in_the_environment_is_used_not_a_random_one(calls, no_launch_env, make_config):
    no_launch_env.setenv("MASTER_PORT", "29777")
    launch.run_torchrun(make_config(nproc_per_node=2), [])
    (command,) = calls
    assert "--standalone" not in command and "--master_port=29777" in command


def test_cli_launches_and_returns_torchrun_exit_code(calls, capsys, make_config, tokenizer_dir, corpus_dir,
                                                      tmp_path):
    code = main(["train", "model_config=llama-tiny", f"tokenizer_name_or_path={tokenizer_dir}", "dataset=tiny_text",
                 f"dataset_dir={corpus_dir}", f"output_dir={tmp_path / 'out'}", "--nproc_per_node", "2"])
    assert code == 7
    assert "ember: launching" in capsys.readouterr().err
    assert len(calls) == 1 and not (tmp_path / "out" / "metrics.jsonl").exists(), "the launcher itself must not train"
