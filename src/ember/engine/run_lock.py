"""One run per output_dir: an OS lock on `output_dir/.ember.lock`, held for the run's whole life.

Two runs writing into one folder would interleave metrics.jsonl, log each step twice in
checkpoints.jsonl and leave whichever config and weights came last. The lock is an flock on an
open file, so the OS releases it when the process ends however it ends (a kill -9 leaves no stale
lock). The file holds the holder's pid, for the refusal message, and is removed when the run
ends (a kill -9 leaves it, unlocked, for the next run to take). Under torchrun only rank 0 takes it.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..config.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there go unguarded rather than refused
    fcntl = None

LOCK_NAME = ".ember.lock"


class OutputDirLock:
    def __init__(self, root: Path):
        self.path = Path(root) / LOCK_NAME
        self._file = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise ConfigError(f"output_dir {self.path.parent} exists and is a file, not a folder")
        while self._file is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                handle = open(self.path, "a+")
            except OSError as err:
                raise ConfigError(f"output_dir {self.path.parent} cannot be written: {err.strerror or err}") from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise ConfigError(f"output_dir {self.path.parent} is in use by another ember run (pid {holder}); "
                                  "wait for it to finish or choose another output_dir") from None
            if self._still_at_path(handle):
                self._file = handle
            else:  # the holder we waited on removed the file on release: lock the one now at the path
                handle.close()
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def _still_at_path(self, handle) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Removes the file (so output_dir is left as it was found) while still holding the lock."""
        if self._file is not None:
            self.path.unlink(missing_ok=True)
            self._file.close()  # closing the file drops the flock
            self._file = None
