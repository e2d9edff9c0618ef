"""What the attack corpus shares: a case registry, running `ember train` (as a real process or
in this one), snapshots of output_dir, pickle payloads, and the assertions every case makes.

A case is a function env → Setup (the arguments, the output_dir, the words its one-line error
must hold). It runs in this process by default (cheap: no imports to pay again) or, with
proc=True, as a real `ember` process, where anything printed on the way out, a traceback
included, is seen exactly as a user would see it. The real processes of a module start together,
a few at a time, the first time one of its cases asks for its result.

The fixtures here are imported by the test modules (a conftest.py in this folder would shadow
tests/conftest.py for the modules that import helpers from it).
"""
from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

EMBER = Path(sys.executable).with_name("ember")
PARALLEL = 3  # real processes at once: each spends most of its start-up importing torch
TIMEOUT = 240  # a case that runs this long has hung


@dataclass
class Env:
    """What a case builds its inputs from: its own folder and the session's tiny fixtures."""
    dir: Path
    tokenizer: Path
    corpus: Path
    model: Path
    previous_run: Path | None = None

    @property
    def sentinel(self) -> Path:
        """The file a payload would create: it must never exist."""
        return self.dir / "PAYLOAD-RAN"

    def tiny(self, **overrides) -> dict:
        """The keys of a tiny pretraining run that would train; a case spoils one of them."""
        keys = dict(model_config="llama-tiny", tokenizer_name_or_path=str(self.tokenizer), dataset="tiny_text",
                    dataset_dir=str(self.corpus), cutoff_len=32, per_device_train_batch_size=2, max_steps=1,
                    logging_steps=1, save_steps=0, disable_tqdm=True, output_dir=str(self.dir / "out"))
        keys.update(overrides)
        return {k: v for k, v in keys.items() if v is not None}


@dataclass
class Setup:
    args: list[str]  # after `ember`
    output_dir: Path  # what must stay as it was: output_dir, or the file a bad output_dir is under
    words: list[str] = field(default_factory=list)  # the error line must hold each
    expect: str = "refused"  # or "trains": a clear success is also a right answer for some inputs


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str


@dataclass
class Case:
    build: Callable[[Env], Setup]
    proc: bool = False
    marks: tuple = ()


def registry() -> tuple[dict[str, Case], Callable]:
    """A module's cases and the decorator that adds to them: @case(proc=True, marks=(...))."""
    cases: dict[str, Case] = {}

    def case(proc: bool = False, marks: tuple = ()):
        def add(build):
            cases[build.__name__.replace("_", "-")] = Case(build, proc, marks)
            return build
        return add
    return cases, case


def params(cases: dict[str, Case]) -> list:
    return [pytest.param(name, id=name, marks=case.marks) for name, case in cases.items()]


def train_args(keys: dict, config_file: Path | None = None) -> list[str]:
    args = ["train"] + ([str(config_file)] if config_file else [])
    return args + [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in keys.items()]


# ---- running ember ------------------------------------------------------------------------
def start_processes(setups: dict[str, Setup], cache: Path) -> dict[str, Future]:
    """Each setup as a real `ember` process, PARALLEL at a time; name → Future[Outcome]."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}

    def run(setup: Setup) -> Outcome:
        try:
            done = subprocess.run([str(EMBER), *setup.args], capture_output=True, text=True, env=env,
                                  cwd=setup.output_dir.parent if setup.output_dir.parent.is_dir() else None,
                                  timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as err:
            return Outcome(-1, str(err.stdout or ""), f"HUNG: no exit within {TIMEOUT} s\n{err.stderr or ''}")
        return Outcome(done.returncode, done.stdout, done.stderr)
    pool = ThreadPoolExecutor(PARALLEL)
    futures = {name: pool.submit(run, setup) for name, setup in setups.items()}
    pool.shutdown(wait=False)
    return futures


@pytest.fixture
def run_in_process(monkeypatch, capfd, tmp_path):
    """`ember ...` through ember.cli.main in this process; restores what main() sets globally."""
    import datasets
    import transformers
    from ember.cli import main
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    bars = datasets.is_progress_bar_enabled(), transformers.utils.logging.is_progress_bar_enabled()

    def run(setup: Setup) -> Outcome:
        capfd.readouterr()
        rc = main(list(setup.args))
        out, err = capfd.readouterr()
        return Outcome(rc, out, err)
    yield run
    root.handlers[:], root.level = handlers, level
    if bars[0]:
        datasets.enable_progress_bars()
    if bars[1]:
        transformers.utils.logging.enable_progress_bar()


@pytest.fixture(scope="module")
def previous_run(corpus_dir, tokenizer_dir, tiny_model_dir, tmp_path_factory) -> Path:
    """A finished 2-step run with a checkpoint per step: another run's results."""
    from ember.config import build_config
    from ember.engine.trainer import Trainer
    from ember.tasks import build_task
    env = Env(tmp_path_factory.mktemp("previous"), tokenizer_dir, corpus_dir, tiny_model_dir)
    cfg = build_config(env.tiny(max_steps=2, save_steps=1, output_dir=str(env.dir / "run")))
    Trainer(cfg, build_task(cfg)).fit()
    return env.dir / "run"


@pytest.fixture(scope="module")
def make_env(corpus_dir, tokenizer_dir, tiny_model_dir, previous_run, tmp_path_factory):
    def make(name: str) -> Env:
        return Env(tmp_path_factory.mktemp(name), tokenizer_dir, corpus_dir, tiny_model_dir, previous_run)
    return make


@pytest.fixture(scope="module")
def processes(request, make_env, tmp_path_factory) -> dict:
    """Every proc case of the module (its `cases`), its inputs built and its process started now."""
    prepared = {}
    for name, c in request.module.cases.items():
        if c.proc:
            env = make_env(name)
            setup = c.build(env)
            prepared[name] = (env, setup, snapshot(setup.output_dir))
    futures = start_processes({name: setup for name, (_, setup, _) in prepared.items()},
                              tmp_path_factory.mktemp("hf-cache"))
    return {name: (*prepared[name], futures[name]) for name in prepared}


def run_case(case: Case, name: str, make_env, processes, run_in_process) -> None:
    """Run one case (its process's result, or through main() now) and make every assertion."""
    if case.proc:
        env, setup, before, future = processes[name]
        outcome = future.result()
    else:
        env = make_env(name)
        setup = case.build(env)
        before = snapshot(setup.output_dir)
        outcome = run_in_process(setup)
    check(outcome, setup, before, env)


# ---- what every case asserts ----------------------------------------------------------------
def snapshot(path: Path) -> dict[str, str] | None:
    """Every file under path (or path itself, if a file) → a digest of its bytes; None if absent."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def assert_untouched(before: dict | None, after: dict | None, allowed_new: set[str]) -> None:
    """Nothing that was in output_dir changed or went; new files only those a stopped run leaves."""
    before, after = before or {}, after or {}
    changed = sorted(name for name in before if after.get(name) != before[name])
    assert not changed, f"files that were in output_dir changed or went: {changed}"
    new = sorted(set(after) - set(before) - allowed_new)
    assert not new, f"a refused run wrote {new}"


def assert_refused(outcome: Outcome, words: list[str]) -> None:
    """Exit 2 and one `ember: error: ...` line naming the problem and where, last; no traceback."""
    err = outcome.stderr
    assert "Traceback" not in err and "HUNG" not in err, err
    assert outcome.rc == 2, f"exit {outcome.rc}, expected 2\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("ember: error: "), f"expected one error line:\n{err}"
    assert lines[-1] == errors[0], f"the error line must be the last thing printed:\n{err}"
    stray = [line for line in lines if not line.startswith("ember: ")]
    assert not stray, f"lines not written by ember (a library's own noise):\n{stray}"
    missing = [word for word in words if word not in errors[0]]
    assert not missing, f"the error line does not name {missing}:\n{errors[0]}"


def assert_trained(outcome: Outcome) -> None:
    assert "Traceback" not in outcome.stderr and "HUNG" not in outcome.stderr, outcome.stderr
    assert outcome.rc == 0, f"exit {outcome.rc}\n{outcome.stderr}"
    assert outcome.stdout.strip().splitlines()[-1].startswith("done: "), outcome.stdout


def check(outcome: Outcome, setup: Setup, before: dict | None, env: Env) -> None:
    if setup.expect == "trains":
        assert_trained(outcome)
    else:
        assert_refused(outcome, setup.words)
        # ember writes the resolved config.yaml before it reads the data; a run stopped there
        # leaves that alone in a folder it made (README: output_dir), and the rerun may reuse it
        assert_untouched(before, snapshot(setup.output_dir), {"config.yaml"} if not before else set())
    assert not env.sentinel.exists(), "a payload ran"


# ---- payloads -----------------------------------------------------------------------------
class ShellPayload:
    """Unpickled, runs `touch <sentinel>` through os.system."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch '{self.sentinel}'",)


class WritePayload:
    """Unpickled, writes the sentinel with open(...).write through exec."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.sentinel)!r}, 'w').write('ran')",)


def torch_payload(path: Path, sentinel: Path, kind: str = "shell", legacy: bool = False) -> Path:
    """A file that looks like a state dict; loading it with weights_only=False runs the payload.
    torch.save's zip format, or (legacy) the bare pickle stream torch wrote before 1.6."""
    import torch
    payload = (ShellPayload if kind == "shell" else WritePayload)(sentinel)
    obj = {"state_dict": {"model.embed_tokens.weight": payload}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def custom_code_folder(source: Path, dest: Path, sentinel: Path, model_type: str) -> Path:
    """A copy of an HF model folder whose config.json asks for a class from evil.py (auto_map);
    importing evil.py writes the sentinel."""
    shutil.copytree(source, dest)
    config = json.loads((dest / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (dest / "config.json").write_text(json.dumps(config))
    (dest / "evil.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('custom code ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        f"class EvilConfig(LlamaConfig):\n    model_type = {model_type!r}\n\n\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    return dest


def reseal(checkpoint: Path, name: str) -> None:
    """Record a replaced file in the checkpoint's COMPLETE marker as if ember had written it, so
    that the payload, not a size or hash mismatch, is what reading the checkpoint meets. Knows
    the marker as {"files": {name: size}} and {"files": {name: {"size", <hash name>: hex}}}; any
    other form is left as it is (the run must then refuse the folder, which is as safe)."""
    marker = checkpoint / "COMPLETE"
    try:
        data = json.loads(marker.read_text())
        entry = data["files"][name]
    except (OSError, ValueError, KeyError, TypeError):
        return
    body = (checkpoint / name).read_bytes()
    if isinstance(entry, int):
        data["files"][name] = len(body)
    elif isinstance(entry, dict):
        for key in entry:
            if key == "size":
                entry[key] = len(body)
            elif digest := _digest(key, body):
                entry[key] = digest
    marker.write_text(json.dumps(data))


def _digest(algorithm: str, body: bytes) -> str | None:
    if algorithm.startswith("xxh"):
        try:
            import xxhash
        except ImportError:
            return None
        make = getattr(xxhash, algorithm, None) or getattr(xxhash, algorithm.replace("_", ""), None)
        return make(body).hexdigest() if make else None
    name = algorithm.replace("_", "").replace("-", "").lower()
    if name in hashlib.algorithms_available:
        return hashlib.new(name, body).hexdigest()
    if name == "blake3":
        try:
            import blake3
        except ImportError:
            return None
        return blake3.blake3(body).hexdigest()
    return None
