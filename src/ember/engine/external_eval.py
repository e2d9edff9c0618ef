"""Asynchronous external evaluation (nanoVLM's lmms-eval pattern, without a cluster hard-coded).

`eval_command` is a command template run in the background for every saved checkpoint:
{checkpoint} is the checkpoint folder, {step} its step, {output} a JSON file the command may
write its results to. It runs without a shell, its placeholders filled inside the arguments
they were written in (config/eval_command.py says why and what is refused). Training never waits for it. Results are picked up when they appear —
the JSON file at {output}, or else the last line of the command's stdout that is a JSON
object — and logged at the checkpoint's own step under `external/<name>`. A checkpoint under
evaluation is never deleted by save_total_limit until its command has finished.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..config.eval_command import fill, parse_eval_command

log = logging.getLogger("ember")
PREFIX = "external/"


@dataclass
class _Job:
    step: int
    process: subprocess.Popen
    output: Path
    stdout: Path


def _numbers(data: dict, prefix: str = "") -> dict[str, float]:
    """Nested result dicts → flat `a/b` keys; only numbers are metrics."""
    flat: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def _last_json_line(path: Path) -> dict | None:
    for line in reversed(path.read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


class ExternalEval:
    def __init__(self, template: str, root: Path):
        self.argv, self.root = parse_eval_command(template), root
        self.folder = root / "eval_results"
        self.jobs: list[_Job] = []

    def submit(self, checkpoint: Path, step: int) -> None:
        self.folder.mkdir(exist_ok=True)
        output = self.folder / f"step_{step}.json"
        stdout = self.folder / f"step_{step}.log"
        output.unlink(missing_ok=True)  # a result left by an earlier attempt at this step is not this one's
        values = {"checkpoint": str(checkpoint), "step": str(step), "output": str(output)}
        env = {**os.environ, **{f"EMBER_{name.upper()}": value for name, value in values.items()}}
        with stdout.open("w") as sink:
            try:
                # its own session: a Ctrl-C meant for training does not kill the evaluation
                process = subprocess.Popen(fill(self.argv, values), stdout=sink, stderr=subprocess.STDOUT,
                                           start_new_session=True, cwd=Path.cwd(), env=env)
            except OSError as err:  # the program is missing or not executable: training goes on
                log.warning("external evaluation of %s could not start: %s", checkpoint.name, err)
                return
        self.jobs.append(_Job(step, process, output, stdout))
        log.info("external evaluation of %s started in the background (log: %s)", checkpoint.name, stdout)

    @property
    def busy_steps(self) -> set[int]:
        """Checkpoints still being evaluated: retention must keep them."""
        return {job.step for job in self.jobs if job.process.poll() is None}

    def poll(self) -> list[dict]:
        """Records for every evaluation that finished since the last call."""
        records, running = [], []
        for job in self.jobs:
            code = job.process.poll()
            if code is None:
                running.append(job)
                continue
            result = self._result(job, code)
            if result:
                records.append({"step": job.step, **{PREFIX + k: v for k, v in result.items()}})
        self.jobs = running
        return records

    def _result(self, job: _Job, code: int) -> dict[str, float]:
        if code != 0:
            log.warning("external evaluation of step %d exited with code %d; see %s", job.step, code, job.stdout)
            return {}
        data = None
        if job.output.is_file():
            try:
                data = json.loads(job.output.read_text())
            except json.JSONDecodeError as err:
                log.warning("external evaluation of step %d wrote %s, which is not JSON (%s at line %d)",
                            job.step, job.output, err.msg, err.lineno)
                return {}
        else:
            data = _last_json_line(job.stdout)
        if not isinstance(data, dict) or not _numbers(data):
            log.warning("external evaluation of step %d finished without numeric JSON results (at %s or as a "
                        "JSON line on stdout, see %s)", job.step, job.output, job.stdout)
            return {}
        return _numbers(data)

    def wait(self) -> list[dict]:
        """At the end of training: let running evaluations finish, so their results are logged."""
        if self.jobs:
            log.info("waiting for %d external evaluation(s) to finish", len(self.jobs))
        for job in self.jobs:
            job.process.wait()
        return self.poll()
