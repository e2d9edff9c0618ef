"""The output_dir contract: refuse to clobber a previous run by accident, record the config."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from ..config.errors import ConfigError
from .checkpoint.format import MARKER, PREFIX
from .run_lock import LOCK_NAME

# What ember itself writes at the top of output_dir and so may clear on overwrite_output_dir.
OWN_FILES = ("metrics.jsonl", "checkpoints.jsonl", "training_loss.png", "training_eval_loss.png", "config.yaml")
OWN_DIRS = ("tensorboard", "wandb", "eval_results")


def prepare_output_dir(cfg, resuming: bool, is_main: bool = True, fresh_start: bool = False) -> tuple[Path, bool]:
    """(output_dir, whether a previous run there is to be written over). The writing over is
    left to clear_previous_run, once set-up has succeeded: a run refused for bad data or a bad
    combination must not have deleted the run it was to replace.

    fresh_start: a resume was asked for but there is nothing to resume from (a run killed
    before its first checkpoint), so ember's own leftovers are cleared as on overwrite."""
    root = Path(cfg.output_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output_dir {root} exists and is a file, not a folder")
    # a lone config.yaml that ember wrote is what a run stopped during set-up leaves (bad data,
    # a refused combination): the corrected run may write over it without overwrite_output_dir
    busy = root.is_dir() and any(not _own_config(path) and path.name != LOCK_NAME for path in root.iterdir())
    overwrite = cfg.overwrite_output_dir or fresh_start
    if busy and not (resuming or overwrite):
        raise ConfigError(f"output_dir {root} is not empty; set overwrite_output_dir: true to write over it, "
                          "or resume_from_checkpoint: true to continue the run in it")
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
    return root, busy and overwrite and not resuming


def clear_previous_run(root: Path) -> None:
    """Delete what ember wrote in output_dir (never a folder or file it did not write)."""
    for name in OWN_FILES:
        (root / name).unlink(missing_ok=True)
    for name in OWN_DIRS:
        shutil.rmtree(root / name, ignore_errors=True)
    for folder in [*root.glob(f"{PREFIX}*"), *root.glob(f".tmp-{PREFIX}*")]:
        if (folder / MARKER).exists() or folder.name.startswith(".tmp-"):
            shutil.rmtree(folder)


CONFIG_HEADER = "# written by ember: this run's resolved config; `ember train <this file>` repeats the run\n"


def write_config(cfg, root: Path) -> None:
    (root / "config.yaml").write_text(CONFIG_HEADER + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _own_config(path: Path) -> bool:
    """config.yaml as ember writes it (a user's own file of that name is never written over)."""
    if path.name != "config.yaml" or not path.is_file():
        return False
    with path.open(encoding="utf-8", errors="replace") as f:
        return f.readline() == CONFIG_HEADER
