"""Checkpoints: one folder per save, written atomically, hash-verified, read without running code.

  format.py     the checkpoint-<step>/ folder: marker, hashes, atomic write, read
  manager.py    when to save, the best one, the log of saves (checkpoints.jsonl)
  retention.py  which folders to keep (save_total_limit, the best)
  resume.py     which checkpoint a run continues from; mending the logs after a kill
  state_io.py   model + optimizer state in and out, per strategy (safetensors or DCP)
  safe_dcp.py   reading DCP shards through a restricted unpickler
  weights.py    weights from any format users bring (load_from_checkpoint)
"""
from .format import (MARKER, PREFIX, CheckpointError, checkpoint_folders, complete_checkpoints, is_complete,
                     manifest, step_of, verify)

__all__ = ["MARKER", "PREFIX", "CheckpointError", "checkpoint_folders", "complete_checkpoints", "is_complete",
           "manifest", "step_of", "verify"]
