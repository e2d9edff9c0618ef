"""Not a test: run by test_preference_precompute.py, on one process or under torchrun. Builds a
preference task's data and model with precompute_ref_log_probs, as a run's set-up does (the
process group started first), and writes this rank's precomputed columns and how many batches
its reference pass ran to <out>/rank<r>.json. Argument: a JSON object of config keys."""
import json
import sys
from pathlib import Path

import torch

from ember.config import build_config
from ember.engine.distributed import World
from ember.tasks import build_task

cfg = build_config(json.loads(sys.argv[1]))
world = World(cfg)
world.start(torch.device("cpu"))
task = build_task(cfg)
task.build_data()
task.build_model()
train, val = task._pair_sets
columns = {name: values for d, part in ((train, "train"), (val, "val")) if d is not None
           for name, values in ((f"{part}/{k}", v) for k, v in d.rows.items() if k.endswith("ref_logps"))}
Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
Path(cfg.output_dir, f"rank{world.rank}.json").write_text(json.dumps(
    {"batches": task.pairs.precomputed_batches, "columns": columns}))
world.stop()
