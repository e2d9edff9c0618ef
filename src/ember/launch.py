"""`ember train ... --nproc_per_node N` starts torchrun itself, as llamafactory-cli does.

The environment (NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT) fills in what
the config leaves unset (an explicit value, even the default one, wins). Under torchrun each process runs `ember train` with the
same arguments and trains (it sees LOCAL_RANK and does not launch again).
"""
from __future__ import annotations

import os
import subprocess
import sys

from .engine.distributed import under_torchrun

ENV = {"nproc_per_node": "NPROC_PER_NODE", "nnodes": "NNODES", "node_rank": "NODE_RANK",
       "master_addr": "MASTER_ADDR", "master_port": "MASTER_PORT"}


def launch_settings(cfg) -> dict:
    settings = {}
    for key, var in ENV.items():
        value = getattr(cfg, key)
        if key not in cfg.model_fields_set and os.environ.get(var):
            value = type(value)(os.environ[var])
        settings[key] = value
    return settings


def needs_launch(cfg) -> bool:
    settings = launch_settings(cfg)
    return not under_torchrun() and (settings["nproc_per_node"] > 1 or settings["nnodes"] > 1)


def run_torchrun(cfg, train_args: list[str]) -> int:
    s = launch_settings(cfg)
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={s['nproc_per_node']}",
               f"--max_restarts={cfg.max_restarts}"]
    if s["nnodes"] == 1 and not os.environ.get("MASTER_PORT") and "master_port" not in cfg.model_fields_set:
        command.append("--standalone")  # one machine: a free local port, no clash with other runs
    else:
        command += [f"--nnodes={s['nnodes']}", f"--node_rank={s['node_rank']}", f"--master_addr={s['master_addr']}",
                    f"--master_port={s['master_port']}"]
    command += ["-m", "ember", "train", *train_args]
    print("ember: launching " + " ".join(command[2:]), file=sys.stderr, flush=True)
    return subprocess.call(command)
