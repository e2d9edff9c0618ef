"""The training loop: a handful of named steps, each owned by one component.

The engine knows nothing of language models, images or videos: a task (engine/task.py) hands it
a model, datasets and a loss per optimizer; the engine owns batching, precision, optimizers,
schedules, accumulation, distribution, evaluation, checkpoints and logs. Each component decides
its own cadence (should_log, should_evaluate, should_save) and, where a checkpoint must hold
it, speaks state_dict / load_state_dict (engine/run_state.py).
"""
from __future__ import annotations

import logging
import time

import torch
from torch.distributed.tensor import DTensor

from ..config.errors import ConfigError
from ..config.run_name import auto_run_name
from ..config.schema import CheckpointGroup, DistributedGroup, OptimGroup, OutputGroup, PrecisionGroup, ScheduleGroup
from ..data.sampling import BatchStream
from ..data.streaming import StreamBatches, StreamedSamples
from .assembly import build_model, build_optimizers, total_steps
from .checkpoint.format import set_rng_state
from .checkpoint.manager import CheckpointManager
from .checkpoint.resume import load_resume_bundle, reconcile_logs, wants_resume
from .checkpoint.state_io import StateIO
from .distributed import World
from .evaluation import EvalCadence, Evaluator
from .external_eval import ExternalEval
from .flops import run_peak_flops
from .host_memory import fix_mmap_threshold, mmap_threshold_kb
from .outputs import clear_previous_run, prepare_output_dir, write_config
from .plots import plot_losses
from .preemption import Preempted, StopSignals
from .run_lock import OutputDirLock
from .run_state import Counters, LogWindow
from .runtime import Precision, pick_device, seed_everything
from .schedules import LRSchedule
from .step import run_optimizer_step
from .tracking import MetricsLog, Progress

log = logging.getLogger("ember")


class Trainer:
    def __init__(self, cfg, task):
        self.cfg, self.task = cfg, task
        # each component is built from its own keys (cfg.part), the loop's own settings read from cfg
        self.world = World(cfg.part(DistributedGroup))
        self.device = pick_device(cfg.device, self.world.local_rank)
        fix_mmap_threshold(mmap_threshold_kb(cfg, self.device.type))  # before the model and data take memory
        self.precision = Precision(cfg.part(PrecisionGroup), self.device)
        self.state = Counters()
        self.lock = OutputDirLock(cfg.output_dir)
        self.window = LogWindow(self.world, self.device)  # losses summed since the last logged step

    # ---- set-up -------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, world = self.cfg, self.world
        world.start(self.device)
        # taken before anything in output_dir is read or changed; held until fit() returns
        refused = world.broadcast(_message_of(self.lock.acquire) if world.is_main else None)
        if refused:
            raise ConfigError(refused)
        resume = load_resume_bundle(cfg, world)
        self.root, replacing = prepare_output_dir(cfg, resuming=resume is not None, is_main=world.is_main,
                                                  fresh_start=resume is None and wants_resume(cfg))
        world.barrier()
        # rank 0's name, so every rank (and tracker) agrees; the config itself is never changed
        self.run_name = cfg.run_name or world.broadcast(auto_run_name(cfg, world.size, self.device.type))
        resolved = cfg.model_copy(update={"run_name": self.run_name})
        if world.is_main and not replacing:
            write_config(resolved, self.root)  # before the data is read: a run stopped there says what it was
        seed_everything(cfg.seed)
        train_set, val_set, collate = self.task.build_data()
        seed_everything(cfg.seed)  # weights do not depend on how much randomness data loading used
        self.model, self.raw = build_model(self.task, cfg, self.device, self.precision, world)
        self.optimizers = build_optimizers(self.task, self.raw, cfg.part(OptimGroup), self.device, world)
        if world.is_main and replacing:  # only now that set-up has succeeded is the previous run written over
            clear_previous_run(self.root)
            write_config(resolved, self.root)
        self.params = {name: [p for g in opt.param_groups for p in g["params"]] for name, opt in self.optimizers.items()}
        self.state_io = StateIO(world, self.model, self.raw)
        self.peak_flops = run_peak_flops(cfg, self.task, self.device, self.precision)  # None: no mfu

        pin = self.device.type == "cuda"
        self.stream = (StreamBatches(train_set, cfg.per_device_train_batch_size, collate, world.rank, world.size)
                       if isinstance(train_set, StreamedSamples) else  # streaming: true
                       BatchStream(train_set, cfg.per_device_train_batch_size, collate, seed=cfg.seed,
                                   num_workers=cfg.dataloader_num_workers, pin_memory=pin,
                                   rank=world.rank, world=world.size))
        self.total_steps = total_steps(cfg, self.stream.batches_per_epoch())
        has_val = val_set is not None and len(val_set) > 0
        cadence = EvalCadence(cfg.eval_strategy or ("steps" if has_val else "no"), cfg.eval_steps or cfg.logging_steps,
                              self.total_steps, self.stream.batches_per_epoch(), cfg.gradient_accumulation_steps)
        self.evaluator = (Evaluator(val_set, cfg.per_device_eval_batch_size, collate, world, cfg.dataloader_num_workers,
                                    pin, cfg.max_eval_batches, cadence) if has_val else None)
        self.schedule = LRSchedule(self.optimizers, cfg.part(ScheduleGroup, OptimGroup), self.total_steps)
        self.checkpoints = CheckpointManager(cfg.part(CheckpointGroup, OutputGroup), self.root, world)
        self.external_eval = ExternalEval(cfg.eval_command, self.root) if cfg.eval_command and world.is_main else None
        if self.external_eval is not None:
            self.checkpoints.busy_steps = lambda: self.external_eval.busy_steps
        if resume is not None:
            self.resume(*resume)
        self.metrics = MetricsLog(cfg, self.run_name, self.total_steps, enabled=world.is_main)
        self.progress = Progress(self.total_steps, self.state["step"], cfg.disable_tqdm, enabled=world.is_main)
        if world.size > 1:
            log.info("rank %d of %d, %s on %s", world.rank, world.size, world.strategy, self.device)

    @property
    def stateful(self) -> dict:
        """Every part a checkpoint restores besides weights and optimizers, under its trainer_state.json key."""
        return {"trainer": self.state, "schedule": self.schedule, "precision": self.precision, "data": self.stream,
                "best": self.checkpoints, "log_window": self.window}

    def resume(self, path, bundle: dict) -> None:
        saved = bundle["state"]
        self.state_io.load(bundle, self.optimizers)
        if bundle["optimizers"] is None:
            log.warning("%s was saved with save_only_model: weights are restored but the optimizer starts fresh, "
                        "so this run will not match an uninterrupted one exactly", path.name)
        for name, part in self.stateful.items():
            if name in saved:  # checkpoints of earlier versions may lack a part (the logging window)
                part.load_state_dict(saved[name])
        if bundle["rng"] is not None:
            set_rng_state(bundle["rng"])
        elif saved.get("world_size", 1) != self.world.size:
            log.warning("resuming on %d processes a run saved on %d: the data order and weights continue "
                        "exactly, dropout randomness does not", self.world.size, saved.get("world_size", 1))
        if self.world.is_main:
            reconcile_logs(self.root, self.state["step"], self.checkpoints.best_step)
        log.info("resumed from %s at step %d", path, self.state["step"])

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
        accum, window = self.cfg.gradient_accumulation_steps, self.window
        self.model.train()
        last_eval: dict = {}
        if self.cfg.eval_on_start and self.state["step"] == 0 and self.evaluator is not None:
            self.metrics.write(self.evaluate())
        window.t0 = time.perf_counter()  # after eval_on_start: tokens/s and mfu time training only
        while self.state["step"] < self.total_steps:
            waited = time.perf_counter()
            batches = [next(self.stream) for _ in range(accum)]
            window.wait += time.perf_counter() - waited
            if self.peak_flops is not None:
                window.flops += sum(self.task.flops(self.raw, batch) for batch in batches)
            lr = self.schedule.current_lr()  # the LR this step uses, logged as such
            sums, counts, grad_norms = run_optimizer_step(self, batches)
            self.state["step"] += 1
            self.schedule.step()
            self.progress.advance()
            step = self.state["step"]
            window.add(sums, counts)
            record = self.train_metrics(grad_norms, lr) if self.metrics.should_log(step) else {}
            paused = time.perf_counter()  # evaluations and checkpoints stay out of tokens/s and mfu
            if self.evaluator is not None and self.evaluator.should_evaluate(step):
                last_eval = self.evaluate()
                record.update(last_eval)
            if record:
                self.metrics.write({"step": step, **record})
            saved = self.checkpoints.should_save(step)
            if saved:
                self.save(last_eval if last_eval.get("step") == step else {})
            window.exclude(since=paused)
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

    def train_metrics(self, grad_norms: dict, lr: float) -> dict:
        """The logging window as one record (one host sync per logged step, not per micro-step); resets it."""
        window, world = self.window, self.world
        elapsed = max(time.perf_counter() - window.t0, 1e-9)
        losses = {}
        for name in window.sums:
            total = world.sum(window.counts[name]).item()
            losses[name] = (world.sum(window.sums[name]).item() / max(total, 1), total)
        main = next(iter(self.optimizers))  # the first optimizer's loss is `loss`, the others `loss_<name>`
        # a window of a GAN's discriminator-only steps (video_vae alternates) has no first-optimizer
        # loss: its record then leaves loss and grad_norm out rather than inventing them
        loss, count = losses.pop(main, (None, 0))
        grad_norm = grad_norms.get(main)
        grad_norm = grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm
        self.state["tokens_seen"] += int(count)
        record = {"step": self.state["step"], "epoch": round(self.stream.epoch, 4),
                  "loss": loss, "lr": lr, "grad_norm": None if grad_norm is None else grad_norm.item(),
                  "tokens_per_sec": count / elapsed, "tokens_seen": self.state["tokens_seen"],
                  # other optimizers' losses as loss_<name>; a task's extra metrics under their own names
                  **{f"loss_{name}" if name in self.optimizers else name: value for name, (value, _) in losses.items()},
                  "data_wait": window.wait / elapsed}  # share of the time spent waiting for batches
        record = {k: v for k, v in record.items() if v is not None}
        if self.peak_flops is not None:
            flops = float(world.sum(torch.as_tensor(window.flops, dtype=torch.float64, device=self.device)))
            record["mfu"] = flops / elapsed / (self.peak_flops * world.size)  # peak: logged at set-up
        if self.precision.scaler is not None:
            record.update(loss_scale=self.precision.scaler.get_scale(), skipped_steps=self.precision.skipped_steps)
        self.progress.show(record)
        window.reset()
        self._log_external(self.external_eval.poll() if self.external_eval else [])
        return record

    def evaluate(self) -> dict:
        self.model.eval()
        metrics = self.evaluator.run(self.task, self.model, self.device, self.precision)
        self.model.train()
        if "eval_loss" in metrics:
            self.schedule.observe(metrics["eval_loss"])
        self.progress.say("eval | " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return {"step": self.state["step"], **metrics}

    def save(self, eval_record: dict) -> None:
        path = self.checkpoints.save(self.state["step"], self.state_io, self.optimizers, self.stateful, eval_record)
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


def _message_of(action) -> str | None:
    """A ConfigError's message instead of the raise, so rank 0 can tell every rank to stop with it."""
    try:
        action()
    except ConfigError as err:
        return str(err)
    return None
