"""Reading run folders: what the Watch view shows. Pure functions of the files on disk.

A run is any folder under the runs root holding ember's `config.yaml` and `metrics.jsonl`, however
it was started (this page, the CLI, torchrun), plus folders the page's queue is about to fill.
Its status comes from what the run leaves behind:

  running   the output_dir lock (an flock on `.ember.lock`) is held
  queued    a page job for it waits in the queue
  finished  the final model is exported (top-level *.safetensors / *.bin)
  stopped   a stop signal ended it (its log says so, or its exit code is 128 + SIGTERM/SIGINT),
            or it has checkpoints and no error
  failed    anything else; the one-line error from its log when there is one
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ember.engine.run_lock import LOCK_NAME

try:
    import fcntl
except ImportError:  # no flock: status falls back to the files alone
    fcntl = None

QUEUE_DIR = ".queue"
SKIP_KEYS = {"step", "epoch", "tokens_seen"}  # counters, not curves
STOP_CODES = {130, 143}  # 128 + SIGINT, 128 + SIGTERM: ember checkpoints and exits with these


def find_runs(root: Path) -> list[Path]:
    """Every run folder under root (not descending into checkpoints or hidden folders), sorted by name."""
    root = Path(root)
    found = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "checkpoint-", "tensorboard", "wandb")))
        if "config.yaml" in filenames and ("metrics.jsonl" in filenames or "checkpoints.jsonl" in filenames):
            found.append(Path(dirpath))
            dirnames[:] = []  # a run's own subfolders are its outputs
    return found


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file that a live run may be appending to (a torn last line is skipped)."""
    records = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return records
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_metrics(run: Path) -> list[dict]:
    return read_jsonl(Path(run) / "metrics.jsonl")


def read_checkpoints(run: Path) -> list[dict]:
    """checkpoints.jsonl, minus checkpoints retention has deleted since (their folders are gone)."""
    rows = read_jsonl(Path(run) / "checkpoints.jsonl")
    return [r for r in rows if (Path(run) / f"checkpoint-{r.get('step')}").is_dir()]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_keys(records: list[dict]) -> list[str]:
    """Numeric keys worth a curve, in first-seen order (loss first, eval metrics next)."""
    keys: list[str] = []
    for record in records:
        for key, value in record.items():
            if key not in SKIP_KEYS and key not in keys and _number(value):
                keys.append(key)
    order = {"loss": 0}
    return sorted(keys, key=lambda k: (order.get(k, 2 if not k.startswith("eval") else 1), keys.index(k)))


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for record in records:
        if _number(record.get(key)) and _number(record.get("step")):
            steps.append(record["step"])
            values.append(float(record[key]))
    return steps, values


def lock_held(run: Path) -> bool:
    """Whether a live ember process holds the run's output_dir lock.

    /proc/locks is read first: it tells without touching the lock, so a run starting at this
    instant never finds it taken by the page. Elsewhere a non-blocking shared flock tests it."""
    path = Path(run) / LOCK_NAME
    try:
        info = os.stat(path)
    except OSError:
        return False
    file_id = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == file_id:
                    return True
        return False
    except OSError:
        pass
    if fcntl is None:
        return False
    try:
        with open(path) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def lock_pid(run: Path) -> int | None:
    """The pid the lock file names (the run's main process)."""
    try:
        return int((Path(run) / LOCK_NAME).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def exported(run: Path) -> bool:
    return any(p.suffix in (".safetensors", ".bin") for p in Path(run).glob("*") if p.is_file())


def error_line(log_text: str) -> str:
    """The one line that says why a run failed: ember's own error, else a traceback's last line."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("ember: error:"):
            return line[len("ember: "):]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Traceback"):
            tail = [line for line in lines[i + 1:] if not line.startswith(("File ", "^", "~"))]
            return tail[-1] if tail else lines[-1]
    return ""


def stopped_in_log(log_text: str) -> bool:
    """Whether the last thing the run printed about its end was a stop by signal."""
    for line in reversed(log_text.splitlines()):
        if line.startswith("done:"):
            return False
        if "stopped by SIG" in line or line.startswith("ember: interrupted"):
            return True
    return False


def status(run: Path, log_text: str = "", exit_code: int | None = None, queued: bool = False) -> tuple[str, str]:
    """(status, one-line reason) of a run; see the module docstring."""
    run = Path(run)
    if lock_held(run):
        return "running", ""
    if queued:
        return "queued", ""
    if exit_code in STOP_CODES or (exit_code is None and stopped_in_log(log_text)):
        return "stopped", ""
    if exit_code not in (None, 0):
        return "failed", error_line(log_text) or f"exited with code {exit_code}"
    if exported(run) and not stopped_in_log(log_text):
        return "finished", ""
    error = error_line(log_text)
    if error:
        return "failed", error
    if read_checkpoints(run):
        return "stopped", ""
    return "failed", "ended before its first checkpoint" if run.joinpath("metrics.jsonl").exists() else ""


def best_checkpoint(checkpoints: list[dict]) -> dict | None:
    best = [c for c in checkpoints if c.get("is_best")]
    return best[-1] if best else None


def summary(run: Path, root: Path, log_text: str = "", exit_code: int | None = None, queued: bool = False) -> dict:
    """One row of the runs table."""
    records = read_metrics(run)
    state, reason = status(run, log_text, exit_code, queued)
    last = {}
    for record in records:
        last.update({k: v for k, v in record.items() if _number(v)})
    best = best_checkpoint(read_checkpoints(run))
    best_text = ""
    if best:
        metric = next(iter(best.get("metrics") or {}), None)
        best_text = f"step {best['step']}" + (f" ({metric} {best['metrics'][metric]:.4g})" if metric else "")
    return {"run": run_name(run, root), "status": state, "step": int(last["step"]) if "step" in last else 0,
            "loss": _fmt(last.get("loss")), "eval_loss": _fmt(last.get("eval_loss")), "best": best_text,
            "error": reason}


def run_name(run: Path, root: Path) -> str:
    try:
        return Path(run).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(run)


def _fmt(value) -> str:
    return f"{value:.4g}" if _number(value) else ""


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def checkpoint_rows(run: Path) -> list[list]:
    """checkpoints.jsonl as table rows, the best marked with a star."""
    rows = []
    for c in read_checkpoints(run):
        metrics = ", ".join(f"{k} {v:.4g}" if _number(v) else f"{k} {v}" for k, v in (c.get("metrics") or {}).items())
        size = f"{c['bytes'] / 1e6:.1f} MB" if _number(c.get("bytes")) else ""
        rows.append(["★ best" if c.get("is_best") else "", c.get("step"), metrics, size, c.get("time", "")])
    best = best_checkpoint(read_checkpoints(run))
    for row in rows:  # only the current best keeps the star (earlier ones were best when written)
        row[0] = "★ best" if best and row[1] == best.get("step") else ""
    return rows
