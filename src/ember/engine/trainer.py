"""The training loop: a handful of named steps, each owned by one component.

The engine knows nothing of language models, images or videos: a task hands it a model,
datasets and a loss per optimizer; the engine owns batching, precision, optimizers,
schedules, accumulation, evaluation, checkpoints and logs.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data.sampling import BatchStream
from .checkpoint import Checkpointer
from .distributed import World
from .optim import build_optimizer, default_param_groups
from .outputs import prepare_output_dir, write_config
from .plots import plot_losses
from .resume import find_resume_checkpoint, truncate_metrics
from .runtime import Precision, pick_device, seed_everything
from .schedules import LRSchedule
from .task import loss_metrics
from .tracking import MetricsLog, Progress

log = logging.getLogger("ember")


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class Trainer:
    def __init__(self, cfg, task):
        self.cfg, self.task = cfg, task
        self.world = World()
        self.device = pick_device(cfg.device)
        self.precision = Precision(cfg, self.device)
        self.state = {"step": 0, "tokens_seen": 0, "best_metric": None, "best_step": None}

    # ---- set-up -------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        resume_from = find_resume_checkpoint(cfg)
        self.root = prepare_output_dir(cfg, resuming=resume_from is not None)
        if self.world.is_main:
            write_config(cfg, self.root)
        seed_everything(cfg.seed)
        train_set, val_set, collate = self.task.build_data()
        self.model = self.task.build_model().to(self.device)
        if self.precision.param_dtype is not None:
            self.model.to(self.precision.param_dtype)
        groups = (self.task.param_groups(self.model) if hasattr(self.task, "param_groups")
                  else default_param_groups(self.model, cfg))
        self.optimizers = {name: build_optimizer(g, cfg, self.device) for name, g in groups.items()}
        self.params = {name: [p for g in opt.param_groups for p in g["params"]] for name, opt in self.optimizers.items()}

        pin = self.device.type == "cuda"
        self.stream = BatchStream(train_set, cfg.per_device_train_batch_size, collate, seed=cfg.seed,
                                  num_workers=cfg.dataloader_num_workers, pin_memory=pin,
                                  rank=self.world.rank, world=self.world.size)
        self.val_loader = (DataLoader(val_set, batch_size=cfg.per_device_eval_batch_size, collate_fn=collate,
                                      num_workers=cfg.dataloader_num_workers, pin_memory=pin)
                           if val_set is not None and len(val_set) > 0 else None)
        accum = cfg.gradient_accumulation_steps
        self.micro_per_epoch = self.stream.batches_per_epoch()
        self.total_steps = (cfg.max_steps if cfg.max_steps > 0
                            else max(1, math.ceil(cfg.num_train_epochs * self.micro_per_epoch / accum)))
        self.eval_strategy = cfg.eval_strategy or ("steps" if self.val_loader is not None else "no")
        self.eval_every = cfg.eval_steps or cfg.logging_steps
        self.schedule = LRSchedule(self.optimizers, cfg, self.total_steps)
        self.checkpointer = Checkpointer(cfg.output_dir, cfg.save_total_limit)
        if resume_from is not None:
            self._resume(resume_from)
        self.metrics = MetricsLog(cfg.output_dir, cfg.report_to, enabled=self.world.is_main)
        self.progress = Progress(self.total_steps, self.state["step"], cfg.disable_tqdm, enabled=self.world.is_main)

    def _resume(self, path: Path) -> None:
        saved = self.checkpointer.load(path, self.model, self.optimizers)
        self.state.update(saved["trainer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.precision.load_state_dict(saved["precision"])
        self.stream.load_state(saved["data"])
        truncate_metrics(self.root / "metrics.jsonl", self.state["step"])
        log.info("resumed from %s at step %d", path, self.state["step"])

    # ---- the loop -----------------------------------------------------------------------
    def fit(self) -> dict:
        self.setup()
        cfg, accum = self.cfg, self.cfg.gradient_accumulation_steps
        self.model.train()
        interval = self._new_interval()
        last_eval: dict = {}
        if cfg.eval_on_start and self.state["step"] == 0 and self.val_loader is not None:
            self.evaluate()
        while self.state["step"] < self.total_steps:
            window = [next(self.stream) for _ in range(accum)]
            sums, counts, grad_norms = self.train_step(window)
            self.state["step"] += 1
            self.schedule.step()
            self.progress.advance()
            step = self.state["step"]
            interval["sum"] += sums[self.main_name]
            interval["count"] += counts[self.main_name]
            if step % cfg.logging_steps == 0 or step == self.total_steps:
                self.log_train(interval, grad_norms)
                interval = self._new_interval()
            if self._should_evaluate(step):
                last_eval = self.evaluate()
            if cfg.save_steps and step % cfg.save_steps == 0:
                self.save(last_eval if last_eval.get("step") == step else {})
        return self.finish(last_eval)

    @property
    def main_name(self) -> str:
        return next(iter(self.optimizers))

    def _new_interval(self) -> dict:
        return {"sum": torch.zeros((), device=self.device), "count": torch.zeros((), device=self.device),
                "t0": time.perf_counter(), "steps": 0}

    def train_step(self, window: list) -> tuple[dict, dict, dict]:
        """One optimizer step over a window of micro-batches, normalised by their total item count.

        Each micro-batch's summed loss is divided by a provisional reference (the first
        micro-batch's count × window length) so gradients keep a sane magnitude; once every
        count is known, gradients are rescaled by reference / total, which makes the step
        exactly that of one batch holding every item of the window (over all ranks).
        """
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        several = len(self.optimizers) > 1
        sums, counts, refs = {}, {}, {}
        for batch in window:
            batch = to_device(batch, self.device)
            with self.precision.autocast():
                losses = self.task.training_step(self.model, batch, self.state["step"])
            for i, (name, loss) in enumerate(losses.items()):
                count = torch.as_tensor(loss.count, device=loss.total.device, dtype=torch.float32)
                if name not in refs:
                    refs[name] = count.clamp(min=1) * len(window)
                self.precision.backward(loss.total.float() / refs[name],
                                        inputs=self.params[name] if several else None,
                                        retain_graph=several and i < len(losses) - 1)
                sums[name] = sums.get(name, 0) + loss.total.detach().float()
                counts[name] = counts.get(name, 0) + count
        grad_norms = {}
        for name, opt in self.optimizers.items():
            self.precision.unscale(opt)
            factor = refs[name] * self.world.size / self.world.sum(counts[name]).clamp(min=1)
            grads = [p.grad for p in self.params[name] if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, factor.to(grads[0].dtype))
            max_norm = self.cfg.max_grad_norm or math.inf
            grad_norms[name] = torch.nn.utils.clip_grad_norm_(self.params[name], max_norm, foreach=True)
            self.precision.step(opt)
        self.precision.update()
        return sums, counts, grad_norms

    def log_train(self, interval: dict, grad_norms: dict) -> None:
        elapsed = time.perf_counter() - interval["t0"]
        count = interval["count"].item()
        self.state["tokens_seen"] += int(count)
        record = {"step": self.state["step"], "epoch": round(self.stream.epoch, 4),
                  "loss": interval["sum"].item() / max(count, 1), "lr": self.schedule.current_lr(),
                  "grad_norm": grad_norms[self.main_name].item(), "tokens_per_sec": count / max(elapsed, 1e-9),
                  "tokens_seen": self.state["tokens_seen"]}
        if self.precision.scaler is not None:
            record.update(loss_scale=self.precision.scaler.get_scale(), skipped_steps=self.precision.skipped_steps)
        self.metrics.write(record)
        self.progress.show(record)

    def _should_evaluate(self, step: int) -> bool:
        if self.val_loader is None or self.eval_strategy == "no":
            return False
        if self.eval_strategy == "steps":
            return step % self.eval_every == 0 or step == self.total_steps
        accum = self.cfg.gradient_accumulation_steps  # "epoch": when this step crossed an epoch boundary
        return (step * accum) // self.micro_per_epoch > ((step - 1) * accum) // self.micro_per_epoch \
            or step == self.total_steps

    def evaluate(self) -> dict:
        self.model.eval()
        limit = self.cfg.max_eval_batches

        def batches():
            for i, batch in enumerate(self.val_loader):
                if limit is not None and i >= limit:
                    return
                yield to_device(batch, self.device)

        with torch.no_grad(), self.precision.autocast():
            evaluate = getattr(self.task, "evaluate", None)
            metrics = evaluate(self.model, batches()) if evaluate else loss_metrics(self.task, self.model, batches())
        self.model.train()
        record = {"step": self.state["step"], **metrics}
        if "eval_loss" in metrics:
            self.schedule.observe(metrics["eval_loss"])
        self.metrics.write(record)
        self.progress.say("eval | " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return record

    def save(self, eval_record: dict) -> None:
        metric = eval_record.get("eval_loss")
        best = self.state["best_metric"]
        is_best = metric is not None and (best is None or metric < best)
        if is_best:
            self.state.update(best_metric=metric, best_step=self.state["step"])
        if not self.world.is_main:
            return
        saved = {"trainer": self.state, "schedule": self.schedule.state_dict(),
                 "precision": self.precision.state_dict(), "data": self.stream.state()}
        self.checkpointer.save(self.state["step"], self.model, self.optimizers, saved,
                               {**eval_record, "_is_best": is_best}, self.state["best_metric"])
        self.checkpointer.prune(self.state["best_step"])

    def finish(self, last_eval: dict) -> dict:
        self.progress.close()
        if self.world.is_main:
            self.task.export(self.model, str(self.root))
            if self.cfg.plot_loss:
                plot_losses(str(self.root))
            self.metrics.close()
            log.info("saved the trained model to %s", self.root)
        return {"step": self.state["step"], **{k: v for k, v in last_eval.items() if k != "step"}}
