"""Contender: LLaMA-Factory, run by its own `llamafactory-cli train CONFIG.yaml` code path.

Runs with the python of bench/.lf-venv (bench/llamafactory_venv.py), never ember's. What
`llamafactory-cli train x.yaml k=v` does on one device is `run_exp()` reading the YAML and the
overrides from argv; this script calls exactly that, adding one Trainer callback that records
when each optimizer step ends, as the ember contender's task wrapper does. Real tokens come
from Trainer's own count (`include_num_input_tokens_seen: non_padding`, the attention mask's
sum: padding is not counted), given as an override so the YAML stays the user's.
"""
from __future__ import annotations

import sys

from transformers import TrainerCallback

from steps import StepLog, read_spec


class StepClock(TrainerCallback):
    def __init__(self, log: StepLog):
        self.log, self.seen = log, 0

    def on_step_end(self, args, state, control, **kwargs):
        self.log.step_end()
        seen = int(state.num_input_tokens_seen)
        self.log.batch_tokens.append(seen - self.seen)
        self.seen = seen


def main() -> None:
    spec = read_spec()
    log = StepLog(spec)
    overrides = [f"{k}={v}" for k, v in spec.get("overrides", {}).items()]
    sys.argv = ["llamafactory-cli", spec["yaml"], *overrides, "include_num_input_tokens_seen=non_padding"]
    from llamafactory.train.tuner import run_exp
    try:
        run_exp(callbacks=[StepClock(log)])
    finally:
        log.write()


if __name__ == "__main__":
    main()
