"""Jobs the page starts: a queue folder, a detached runner that starts them one after another.

`RUNS/.queue/<id>.json` is a job: the `ember train` arguments, its output_dir, its state
(queued → running → done), the trainer's pid and exit code. `<id>.yaml` is the config it was
launched with and `<id>.log` its stdout and stderr. (The log sits beside the run, not inside it:
ember refuses to start a fresh run in a folder holding files it did not write.)

The runner (`python -m ember.web.launcher RUNS`) is its own session, so it and the runs it starts
outlive the page and `ember web` restarts. One runner at a time holds `.queue/.runner.lock`; a
second one started meanwhile exits at once.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .runs import QUEUE_DIR, lock_held, lock_pid

try:
    import fcntl
except ImportError:
    fcntl = None


def queue_dir(root: Path) -> Path:
    return Path(root) / QUEUE_DIR


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)  # a reader never sees half a job


def jobs(root: Path) -> list[dict]:
    """Every job, oldest first."""
    found = []
    for path in sorted(queue_dir(root).glob("*.json")):
        try:
            job = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        job["path"] = str(path)
        found.append(job)
    return sorted(found, key=lambda job: (job.get("created", 0), job["id"]))  # queue order, whatever the names


def update_job(job: dict, **changes) -> dict:
    job.update(changes)
    _write_json(Path(job["path"]), {k: v for k, v in job.items() if k != "path"})
    return job


def latest_job(root: Path, output_dir: Path) -> dict | None:
    """The newest job that wrote into output_dir."""
    target = Path(output_dir).resolve()
    mine = [j for j in jobs(root) if Path(j.get("output_dir", "")).resolve() == target]
    return mine[-1] if mine else None


def job_log(job: dict | None) -> str:
    if not job:
        return ""
    try:
        return Path(job["log"]).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def enqueue(root: Path, config: dict | None, output_dir: str, args: list[str] | None = None) -> dict:
    """Adds a job: either a config (written as <id>.yaml and launched as `ember train <id>.yaml`)
    or ready-made arguments (a resume). Starts the runner when none is at work."""
    folder = queue_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time_ns()  # one instant for both parts, so ids sort in the order jobs were queued
    job_id = time.strftime("%Y%m%d-%H%M%S", time.localtime(now // 10**9)) + f"-{now % 10**9:09d}"
    if config is not None:
        yaml_path = folder / f"{job_id}.yaml"
        yaml_path.write_text(yaml.safe_dump(config, sort_keys=False))
        args = [str(yaml_path)]
    job = {"id": job_id, "args": list(args or []), "output_dir": str(output_dir), "state": "queued",
           "log": str(folder / f"{job_id}.log"), "created": time.time(), "pid": None, "exit_code": None}
    job["path"] = str(folder / f"{job_id}.json")
    update_job(job)
    start_runner(root)
    return job


def command(job: dict) -> list[str]:
    return [sys.executable, "-m", "ember", "train", *job["args"]]


def start_runner(root: Path) -> None:
    """A detached runner; it exits at once if another holds the runner lock."""
    folder = queue_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "runner.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "ember.web.launcher", str(root)], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, start_new_session=True, close_fds=True)


def runner_active(root: Path) -> bool:
    path = queue_dir(root) / ".runner.lock"
    if fcntl is None or not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_one(job: dict) -> None:
    Path(job["output_dir"]).parent.mkdir(parents=True, exist_ok=True)
    with open(job["log"], "ab") as log:
        log.write(f"$ ember train {' '.join(job['args'])}\n".encode())
        log.flush()
        proc = subprocess.Popen(command(job), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        update_job(job, state="running", pid=proc.pid, started=time.time())
        code = proc.wait()
    update_job(job, state="done", exit_code=code, ended=time.time())


def run_queue(root: Path) -> None:
    """Starts queued jobs one after another until none is left; one runner at a time."""
    path = queue_dir(root) / ".runner.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open(path, "a") as handle:
            if fcntl is not None:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return
            for job in jobs(root):  # a runner killed mid-run leaves a 'running' job: settle it
                if job["state"] == "running" and not _pid_alive(job.get("pid")):
                    update_job(job, state="done")
            while True:
                pending = [j for j in jobs(root) if j["state"] == "queued"]
                if not pending:
                    break
                _run_one(pending[0])
        # the lock is released: a job queued just now (whose runner found the lock taken) is seen here
        if not any(j["state"] == "queued" for j in jobs(root)):
            return


def stop(root: Path, run: Path) -> str:
    """SIGTERM to the run's process (it checkpoints and exits); a queued job is taken off the queue."""
    job = latest_job(root, run)
    if job and job["state"] == "queued":
        update_job(job, state="done", exit_code=None, cancelled=True)
        return f"took {run.name} off the queue"
    pid = job.get("pid") if job and job["state"] == "running" else None
    if not lock_held(run) and not _pid_alive(pid):
        return f"{run.name} is not running"
    pid = pid if _pid_alive(pid) else lock_pid(run)
    if not pid:
        return f"{run.name}: no process id to signal"
    os.kill(pid, signal.SIGTERM)
    return f"sent SIGTERM to {run.name} (pid {pid}): it finishes the step, writes a checkpoint and exits"


def resume(root: Path, run: Path) -> dict:
    return enqueue(root, None, str(run), [str(Path(run) / "config.yaml"), "resume_from_checkpoint=true"])


def delete(root: Path, run: Path) -> None:
    """Removes a run folder that is inside root and not running, and its jobs."""
    run, root = Path(run).resolve(), Path(root).resolve()
    if root not in run.parents:
        raise ValueError(f"{run} is not inside {root}")
    if lock_held(run):
        raise ValueError(f"{run.name} is running; stop it first")
    for job in jobs(root):
        if Path(job.get("output_dir", "")).resolve() == run:
            if job["state"] != "done":
                raise ValueError(f"{run.name} has a queued or running job")
            for suffix in (".json", ".yaml", ".log"):
                Path(job["path"]).with_suffix(suffix).unlink(missing_ok=True)
    shutil.rmtree(run)


if __name__ == "__main__":
    run_queue(Path(sys.argv[1]))
