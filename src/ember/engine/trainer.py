"""The training loop: a handful of named steps, each owned by one component.

The engine knows nothing of language models, images or videos: a task hands it a model,
datasets and a loss per optimizer; the engine owns batching, precision, optimizers,
schedules, accumulation, distribution, evaluation, checkpoints and logs.
"""
from __future__ import annotations

import logging
import math
import time

import torch

from ..config.errors import ConfigError
from ..config.run_name import auto_run_name
from ..data.sampling import BatchStream
from .checkpoint import set_rng_state
from .checkpoints import CheckpointManager
from .distributed import World
from .evaluation import Evaluator
from .external_eval import ExternalEval
from .flops import run_peak_flops
from .optim import build_optimizer, default_param_groups
from .outputs import prepare_output_dir, write_config
from .plots import plot_losses
from .preemption import Preempted, StopSignals
from .resume import load_resume_bundle, reconcile_logs, wants_resume
from .run_lock import OutputDirLock
from .runtime import Precision, compile_model, pick_device, seed_everything
from .schedules import LRSchedule
from .state_io import StateIO
from .step import run_optimizer_step
from .tracking import MetricsLog, Progress
from .weights import load_weights, read_weights

log = logging.getLogger("ember")


class Trainer:
    def __init__(self, cfg, task):
        self.cfg, self.task = cfg, task
        self.world = World(cfg)
        self.device = pick_device(cfg.device, self.world.local_rank)
        self.precision = Precision(cfg, self.device)
        self.state = {"step": 0, "tokens_seen": 0}
        self.lock = OutputDirLock(cfg.output_dir)
        self.interval = self._new_interval()  # losses summed since the last logged step

    # ---- set-up -------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, world = self.cfg, self.world
        world.start(self.device)
        # taken before anything in output_dir is read or changed; held until fit() returns
        refused = self._try(self.lock.acquire) if world.is_main else None
        refused = world.broadcast(refused)
        if refused:
            raise ConfigError(refused)
        resume = load_resume_bundle(cfg, world)
        self.root = prepare_output_dir(cfg, resuming=resume is not None, is_main=world.is_main,
                                       fresh_start=resume is None and wants_resume(cfg))
        world.barrier()
        if cfg.run_name is None:  # rank 0's name, so every rank (and tracker) agrees
            cfg.run_name = world.broadcast(auto_run_name(cfg, world.size, self.device.type))
        if world.is_main:
            write_config(cfg, self.root)
        seed_everything(cfg.seed)
        train_set, val_set, collate = self.task.build_data()
        seed_everything(cfg.seed)  # weights do not depend on how much randomness data loading used
        self.model = self.build_model()
        groups = self.task.param_groups(self.raw) or default_param_groups(self.raw, cfg)
        if len(groups) > 1 and world.strategy == "fsdp":
            # each optimizer's gradients are kept apart by backward(inputs=its parameters), and
            # FSDP2's sharded parameters are not in the autograd graph (the forward uses gathered
            # copies): they would get no gradient, and the run would train nothing without error
            raise ConfigError(f"distributed_strategy: fsdp cannot train a task with several optimizers "
                              f"({', '.join(groups)}); use ddp")
        self.optimizers = {name: build_optimizer(g, cfg, self.device) for name, g in groups.items()}
        self.params = {name: [p for g in opt.param_groups for p in g["params"]] for name, opt in self.optimizers.items()}
        self.state_io = StateIO(world, self.model, self.raw)
        self.peak_flops = run_peak_flops(cfg, self.task, self.device, self.precision)  # None: no mfu

        pin = self.device.type == "cuda"
        self.stream = BatchStream(train_set, cfg.per_device_train_batch_size, collate, seed=cfg.seed,
                                  num_workers=cfg.dataloader_num_workers, pin_memory=pin,
                                  rank=world.rank, world=world.size)
        self.evaluator = (Evaluator(val_set, cfg.per_device_eval_batch_size, collate, world,
                                    cfg.dataloader_num_workers, pin, cfg.max_eval_batches)
                          if val_set is not None and len(val_set) > 0 else None)
        accum = cfg.gradient_accumulation_steps
        self.micro_per_epoch = self.stream.batches_per_epoch()
        self.total_steps = (cfg.max_steps if cfg.max_steps > 0
                            else max(1, math.ceil(cfg.num_train_epochs * self.micro_per_epoch / accum)))
        self.eval_strategy = cfg.eval_strategy or ("steps" if self.evaluator is not None else "no")
        self.eval_every = cfg.eval_steps or cfg.logging_steps
        self.schedule = LRSchedule(self.optimizers, cfg, self.total_steps)
        self.checkpoints = CheckpointManager(cfg, self.root, world)
        self.external_eval = ExternalEval(cfg.eval_command, self.root) if cfg.eval_command and world.is_main else None
        if self.external_eval is not None:
            self.checkpoints.busy_steps = lambda: self.external_eval.busy_steps
        if resume is not None:
            self._resume(*resume)
        self.metrics = MetricsLog(cfg, enabled=world.is_main)
        self.progress = Progress(self.total_steps, self.state["step"], cfg.disable_tqdm, enabled=world.is_main)
        if world.size > 1:
            log.info("rank %d of %d, %s on %s", world.rank, world.size, world.strategy, self.device)

    def build_model(self) -> torch.nn.Module:
        """The task's model, initialised, placed, cast and wrapped for the strategy."""
        cfg = self.cfg
        model = self.task.build_model()
        if cfg.load_from_checkpoint:
            load_weights(model, read_weights(cfg.load_from_checkpoint), cfg.load_from_checkpoint,
                         cfg.ignore_mismatched_sizes)
            log.info("initialised weights from %s (fresh optimizer and schedule)", cfg.load_from_checkpoint)
        if next(model.parameters()).device != self.device:  # k-bit models are placed when loaded
            model.to(self.device)
        if self.precision.param_dtype is not None:
            model.to(self.precision.param_dtype)
        if cfg.compile:
            compile_model(model)
        self.raw = model
        return self.world.wrap(model, self.device, self.precision, cfg.fsdp_cpu_offload,
                               find_unused=self.task.forward_may_skip_parameters,
                               broadcast_buffers=self.task.ddp_broadcast_buffers)

    def _resume(self, path, bundle: dict) -> None:
        saved = bundle["state"]
        self.state_io.load(bundle, self.optimizers)
        if bundle["optimizers"] is None:
            log.warning("%s was saved with save_only_model: weights are restored but the optimizer starts fresh, "
                        "so this run will not match an uninterrupted one exactly", path.name)
        self.state.update(saved["trainer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.precision.load_state_dict(saved["precision"])
        self.stream.load_state(saved["data"])
        self.checkpoints.load_state_dict(saved["best"])
        window = saved.get("log_window", {"sums": {}, "counts": {}}) if self.world.is_main else {"sums": {}, "counts": {}}
        self.interval["sums"] = {k: torch.tensor(v, device=self.device) for k, v in window["sums"].items()}
        self.interval["counts"] = {k: torch.tensor(v, device=self.device) for k, v in window["counts"].items()}
        if bundle["rng"] is not None:
            set_rng_state(bundle["rng"])
        elif saved.get("world_size", 1) != self.world.size:
            log.warning("resuming on %d processes a run saved on %d: the data order and weights continue "
                        "exactly, dropout randomness does not", self.world.size, saved.get("world_size", 1))
        if self.world.is_main:
            reconcile_logs(self.root, self.state["step"], self.checkpoints.best_step)
        log.info("resumed from %s at step %d", path, self.state["step"])

    @staticmethod
    def _try(action) -> str | None:
        """A ConfigError's message instead of the raise, so rank 0 can tell every rank to stop with it."""
        try:
            action()
        except ConfigError as err:
            return str(err)
        return None

    # ---- the loop -----------------------------------------------------------------------
    def fit(self) -> dict:
        try:
            self.setup()
            with StopSignals() as signals:
                last_eval = self._loop(signals)
            return self.finish(last_eval)
        finally:
            self.world.stop()
            self.lock.release()

    def _loop(self, signals: StopSignals) -> dict:
        cfg, accum = self.cfg, self.cfg.gradient_accumulation_steps
        self.model.train()
        interval = self.interval
        last_eval: dict = {}
        if cfg.eval_on_start and self.state["step"] == 0 and self.evaluator is not None:
            self.metrics.write(self.evaluate())
        interval["t0"] = time.perf_counter()  # after eval_on_start: tokens/s and mfu time training only
        while self.state["step"] < self.total_steps:
            waited = time.perf_counter()
            window = [next(self.stream) for _ in range(accum)]
            interval["wait"] += time.perf_counter() - waited
            if self.peak_flops is not None:
                interval["flops"] += sum(self.task.flops(self.raw, batch) for batch in window)
            lr = self.schedule.current_lr()  # the LR this step uses, logged as such
            sums, counts, grad_norms = run_optimizer_step(self, window)
            self.state["step"] += 1
            self.schedule.step()
            self.progress.advance()
            step = self.state["step"]
            for name in sums:
                interval["sums"][name] = interval["sums"].get(name, 0) + sums[name]
                interval["counts"][name] = interval["counts"].get(name, 0) + counts[name]
            record: dict = {}
            if step % cfg.logging_steps == 0 or step == self.total_steps:
                record = self.train_metrics(interval, grad_norms, lr)
                interval = self.interval = self._new_interval()
                self._log_external(self.external_eval.poll() if self.external_eval else [])
            paused = time.perf_counter()  # evaluations and checkpoints stay out of tokens/s and mfu
            if self._should_evaluate(step):
                last_eval = self.evaluate()
                record.update(last_eval)
            if record:
                self.metrics.write({"step": step, **record})
            saved = bool(cfg.save_steps) and step % cfg.save_steps == 0
            if saved:
                self.save(last_eval if last_eval.get("step") == step else {})
            interval["t0"] += time.perf_counter() - paused
            if self.world.any(signals.received is not None):  # every rank stops at the same step
                self._stop(signals, already_saved=saved)
        return last_eval

    def _stop(self, signals: StopSignals, already_saved: bool) -> None:
        if not already_saved:
            self.save({})
        self.progress.close()
        self.metrics.close()
        raise Preempted(signals.received or 15,
                        f"stopped by {signals.name or 'a signal to another rank'} after step {self.state['step']}; "
                        f"checkpoint {self.root}/checkpoint-{self.state['step']} is complete. Resume with: "
                        f"ember train {self.root}/config.yaml resume_from_checkpoint=true")

    @property
    def main_name(self) -> str:
        return next(iter(self.optimizers))

    def _new_interval(self) -> dict:
        return {"sums": {}, "counts": {}, "t0": time.perf_counter(), "wait": 0.0, "flops": 0}

    def train_metrics(self, interval: dict, grad_norms: dict, lr: float) -> dict:
        elapsed = time.perf_counter() - interval["t0"]
        losses = {}
        for name in interval["sums"]:  # one host sync per logged step, not per micro-step
            total = self.world.sum(interval["counts"][name]).item()
            losses[name] = (self.world.sum(interval["sums"][name]).item() / max(total, 1), total)
        loss, count = losses.pop(self.main_name)
        grad_norm = grad_norms[self.main_name]
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        self.state["tokens_seen"] += int(count)
        record = {"step": self.state["step"], "epoch": round(self.stream.epoch, 4),
                  "loss": loss, "lr": lr, "grad_norm": grad_norm.item(),
                  "tokens_per_sec": count / max(elapsed, 1e-9), "tokens_seen": self.state["tokens_seen"],
                  **{f"loss_{name}": value for name, (value, _) in losses.items()}}
        record["data_wait"] = interval["wait"] / max(elapsed, 1e-9)  # share of the time spent waiting for batches
        if self.peak_flops is not None:
            flops = float(self.world.sum(torch.as_tensor(interval["flops"], dtype=torch.float64, device=self.device)))
            record["mfu"] = flops / max(elapsed, 1e-9) / (self.peak_flops * self.world.size)  # peak: logged at set-up
        if self.precision.scaler is not None:
            record.update(loss_scale=self.precision.scaler.get_scale(), skipped_steps=self.precision.skipped_steps)
        self.progress.show(record)
        return record

    def _should_evaluate(self, step: int) -> bool:
        if self.evaluator is None or self.eval_strategy == "no":
            return False
        if step == self.total_steps:
            return True
        if self.eval_strategy == "steps":
            return step % self.eval_every == 0
        accum = self.cfg.gradient_accumulation_steps  # "epoch": this step crossed an epoch boundary
        return (step * accum) // self.micro_per_epoch > ((step - 1) * accum) // self.micro_per_epoch

    def evaluate(self) -> dict:
        self.model.eval()
        metrics = self.evaluator.run(self.task, self.model, self.device, self.precision)
        self.model.train()
        if "eval_loss" in metrics:
            self.schedule.observe(metrics["eval_loss"])
        self.progress.say("eval | " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return {"step": self.state["step"], **metrics}

    def save(self, eval_record: dict) -> None:
        window = {part: {k: float(self.world.sum(torch.as_tensor(v))) for k, v in self.interval[part].items()}
                  for part in ("sums", "counts")}  # summed over ranks; restored on rank 0 alone
        run_state = {"trainer": self.state, "schedule": self.schedule.state_dict(), "world_size": self.world.size,
                     "precision": self.precision.state_dict(), "data": self.stream.state(),
                     # the open logging window, so a resumed run logs the same numbers
                     "log_window": window}
        path = self.checkpoints.save(self.state["step"], self.state_io, self.optimizers, run_state, eval_record)
        if self.external_eval is not None:
            self.external_eval.submit(path, self.state["step"])

    def _log_external(self, records: list[dict]) -> None:
        for record in records:  # at the evaluated checkpoint's step, not the current one
            self.metrics.write(record)
            self.progress.say(f"external eval of step {record['step']} | " +
                              " | ".join(f"{k[len('external/'):]} {v:.4f}" for k, v in record.items() if k != "step"))

    def finish(self, last_eval: dict) -> dict:
        self.progress.close()
        result = {"step": self.state["step"], **{k: v for k, v in last_eval.items() if k != "step"}}
        if self.cfg.load_best_model_at_end:
            result["best_step"] = self.checkpoints.restore_best(self.state_io)
        full_state = self.state_io.full_state_dict()  # a collective under FSDP
        if self.world.is_main:
            self.task.export(self.raw, str(self.root), state_dict=full_state)
            if self.external_eval is not None:
                self._log_external(self.external_eval.wait())
            if self.cfg.plot_loss:
                plot_losses(str(self.root))
            self.metrics.close()
            log.info("saved the trained model to %s", self.root)
        self.world.barrier()
        return result
