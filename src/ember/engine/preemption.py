"""SIGTERM / SIGINT: finish the optimizer step, checkpoint, exit. A second SIGINT stops at once."""
from __future__ import annotations

import signal
import threading


class Preempted(Exception):
    """Raised after the stop checkpoint is written; carries the exit code (128 + signal)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now; saves are atomic, so nothing half-written remains
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""
