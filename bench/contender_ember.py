"""Contender: ember, through `ember train CONFIG.yaml` exactly as a user runs it.

The YAML is written next to the run (read it to see what was trained). The only addition is
a thin wrapper around the task that records step ends and real tokens; it changes nothing
the engine does. With `yaml` in the spec, that file is trained instead (with the spec's
`overrides` and an output_dir in the run's folder), as `ember train that.yaml k=v` would.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from steps import StepLog, counting, read_spec
from workloads import HYPER, TOKENIZER


class Recorded:
    """The task, plus a clock at every optimizer step and a token count at every batch."""

    def __init__(self, task, log: StepLog):
        self.task, self.log = task, log

    def __getattr__(self, name):
        return getattr(self.task, name)

    def build_data(self):
        train, val, collate = self.task.build_data()
        return train, val, counting(collate, self.log)

    def after_optimizer_step(self, model, step):
        if hasattr(self.task, "after_optimizer_step"):
            self.task.after_optimizer_step(model, step)
        self.log.step_end()


def config(spec: dict) -> dict:
    run = Path(spec["workdir"])
    cfg = {"model_config": str(run / "model_config.json"), "tokenizer_name_or_path": str(TOKENIZER),
           "dataset_dir": spec["data_dir"], "cutoff_len": spec["seq_len"],
           "per_device_train_batch_size": spec["batch_size"], "max_steps": spec["steps"],
           "lr_scheduler_type": "cosine", **HYPER,
           "bf16": spec["precision"] == "bf16", "compile": spec.get("compile", False),
           "logging_steps": 10, "save_steps": 0, "disable_tqdm": True, "output_dir": str(run / "out"),
           "overwrite_output_dir": True}
    if spec["workload"] == "pretrain":
        cfg.update(stage="pt", dataset="corpus")
    else:
        cfg.update(stage="sft", dataset="sft", template="default", packing=True)
    return cfg


def main() -> None:
    spec = read_spec()
    log = StepLog(spec)
    run = Path(spec["workdir"])
    if "yaml" in spec:  # a user's YAML as it is (the LLaMA-Factory comparison), plus command-line overrides
        overrides = {**spec.get("overrides", {}), "output_dir": run / "out"}
        argv = ["train", spec["yaml"], *(f"{k}={v}" for k, v in overrides.items())]
    else:
        (run / "model_config.json").write_text(json.dumps(spec["model"]))
        config_path = run / "ember.yaml"
        config_path.write_text(yaml.safe_dump(config(spec), sort_keys=False))
        argv = ["train", str(config_path)]

    from ember.engine.host_memory import prefer_huge_pages
    prefer_huge_pages()  # what the `ember` command does before torch's first allocation
    import ember.tasks
    from ember import cli
    build_task = ember.tasks.build_task
    ember.tasks.build_task = lambda cfg: Recorded(build_task(cfg), log)
    try:
        code = cli.main(argv)
    finally:
        metrics = [json.loads(line) for line in (run / "out" / "metrics.jsonl").open()] \
            if (run / "out" / "metrics.jsonl").exists() else []
        log.write(logged=[{k: m[k] for k in ("step", "mfu", "data_wait", "tokens_per_sec") if k in m}
                          for m in metrics])
    raise SystemExit(code)


if __name__ == "__main__":
    main()
