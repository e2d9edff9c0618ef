"""Run a command and measure the peak memory of its whole process tree.

LLaMA-Factory and ember may start helper processes (dataset preprocessing workers, data loader
workers, a launcher that re-executes itself), so the main process's own peak (`wait4`'s
ru_maxrss) can miss memory the run really needed. While the command runs, its tree (the process
and every descendant, found through /proc) is sampled every `interval` seconds and the highest
total is kept: the main process's resident set plus each descendant's private memory (USS:
Private_Clean + Private_Dirty of /proc/PID/smaps_rollup). A plain sum of resident sets would
count the pages a forked child shares with its parent twice: a library that forks to run
`ldconfig` (ctypes.util.find_library does) briefly shows a second copy of the whole parent.
Beside it, the kernel's ru_maxrss from wait4: the peak of the largest single process of the
tree (the main process's, or a waited-for descendant's), which is what bench/harness.py reports
for the other contenders. It starts from the launching process's RSS at fork time (Linux keeps
that high-water mark across exec), so it reads high when the launcher is bigger than the command.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            kids += [int(k) for k in text.split()]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return kids


def _field_kb(path: str, names: tuple[str, ...]) -> int:
    total = 0
    try:
        for line in Path(path).read_text().splitlines():
            if line.split(":")[0] in names:
                total += int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass  # a process that just ended
    return total


def tree_rss_kb(root: int) -> int:
    """The root's RSS plus every descendant's private memory, in kB."""
    total = _field_kb(f"/proc/{root}/status", ("VmRSS",))
    stack, seen = _children(root), {root}
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _field_kb(f"/proc/{pid}/smaps_rollup", ("Private_Clean", "Private_Dirty"))
        stack += _children(pid)
    return total


def run_measured(argv: list[str], log: Path, env: dict | None = None, cwd: str | None = None,
                 interval: float = 0.05) -> dict:
    """Run argv to completion (stdout and stderr to `log`); exit code, wall time, peak RSS in MB."""
    peak = [0]
    with open(log, "w") as out:
        launched, started = time.time(), time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        done = threading.Event()

        def poll():
            while not done.is_set():
                # VmHWM: the main process's own exact high-water mark (a new one from its exec),
                # which a spike between two samples cannot escape
                own = _field_kb(f"/proc/{proc.pid}/status", ("VmHWM",))
                peak[0] = max(peak[0], tree_rss_kb(proc.pid), own)
                done.wait(interval)

        sampler = threading.Thread(target=poll, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)  # the largest single process's peak, from the kernel
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "launched": launched, "wall_s": time.perf_counter() - started,
            "tree_peak_rss_mb": peak[0] / 1024,
            "largest_process_peak_rss_mb": usage.ru_maxrss / 1024}
