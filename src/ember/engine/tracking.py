"""Where metrics go: metrics.jsonl always, tensorboard on request, and the console."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("ember")


class MetricsLog:
    def __init__(self, output_dir: str, report_to: str, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.tb = None
        if enabled and report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """A tqdm bar on a terminal; plain log lines at each logging step otherwise."""

    def __init__(self, total: int, start: int, disable_bar: bool, enabled: bool = True):
        self.total, self.enabled = total, enabled
        self.t0, self.s0 = time.perf_counter(), start
        self.bar = None
        if enabled and not disable_bar and sys.stdout.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, dynamic_ncols=True, desc="train")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, record: dict) -> None:
        if not self.enabled:
            return
        step = record["step"]
        rate = (step - self.s0) / max(1e-9, time.perf_counter() - self.t0)
        parts = [f"loss {record['loss']:.4f}", f"lr {record['lr']:.2e}"]
        if "tokens_per_sec" in record:
            parts.append(f"{record['tokens_per_sec']:,.0f} tok/s")
        if self.bar is not None:
            self.bar.set_postfix_str(" | ".join(parts), refresh=False)
            return
        eta = _fmt_eta((self.total - step) / rate) if rate > 0 else "?"
        print(f"step {step}/{self.total} | " + " | ".join(parts) + f" | eta {eta}", flush=True)

    def say(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
