"""Where metrics go: metrics.jsonl always, tensorboard on request, and the console."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from ..config.errors import ConfigError

log = logging.getLogger("ember")


class MetricsLog:
    def __init__(self, cfg, run_name: str, total_steps: int, enabled: bool = True):
        self.enabled = enabled
        self.every, self.last = cfg.logging_steps, total_steps
        self.path = Path(cfg.output_dir) / "metrics.jsonl"
        self.tb = self.wandb = self.mlflow = None
        if enabled and cfg.report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(Path(cfg.output_dir) / "tensorboard"))
        if enabled and cfg.report_to == "wandb":
            self.wandb = start_wandb(cfg, run_name)
        if enabled and cfg.report_to == "mlflow":
            from .mlflow_run import MlflowRun
            self.mlflow = MlflowRun(cfg, run_name)

    def should_log(self, step: int) -> bool:
        """Training metrics every logging_steps, and at the last step."""
        return step % self.every == 0 or step == self.last

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self.tb is not None:
            for key, value in numbers.items():
                self.tb.add_scalar(key, value, record["step"])
        if self.wandb is not None:
            external = {k: v for k, v in numbers.items() if k.startswith("external/")}
            if external:  # an earlier checkpoint's results: on their own axis, wandb steps only go forward
                self.wandb.log({**external, "external_step": record["step"]})
            rest = {k: v for k, v in numbers.items() if k not in external}
            if rest:
                self.wandb.log(rest, step=record["step"])
        if self.mlflow is not None:
            self.mlflow.log(numbers, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.mlflow is not None:
            self.mlflow.close()


def start_wandb(cfg, run_name: str):
    """A wandb run under output_dir. Offline unless the user has set WANDB_MODE or an API key:
    no machine here reaches wandb.ai, and a training run must never wait on a login prompt."""
    try:
        import wandb
    except ImportError:
        raise ConfigError("report_to wandb needs the wandb package: pip install wandb") from None
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "ember"), name=run_name, dir=cfg.output_dir,
                     config={**cfg.to_dict(), "run_name": run_name}, mode=mode)
    run.define_metric("external_step")
    run.define_metric("external/*", step_metric="external_step")
    if mode == "offline":
        log.info("wandb is offline; upload later with: wandb sync %s", run.dir.rsplit("/files", 1)[0])
    return run


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
        parts = ([f"loss {record['loss']:.4f}"] if "loss" in record else []) + [f"lr {record['lr']:.2e}"]
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
