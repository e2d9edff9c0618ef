"""What the Watch view shows, from run folders and the page's jobs together (no Gradio here)."""
from __future__ import annotations

from pathlib import Path

from . import launcher, runs

COLUMNS = ["run", "status", "step", "loss", "eval_loss", "best", "error"]


def run_folders(root: Path) -> list[Path]:
    """Run folders, plus the output_dirs of jobs that have not made one yet (queued, or failed at set-up)."""
    root = Path(root)
    found = runs.find_runs(root)
    known = {p.resolve() for p in found}
    for job in launcher.jobs(root):
        out = Path(job.get("output_dir", ""))
        if job.get("cancelled") or out.resolve() in known:
            continue
        known.add(out.resolve())
        found.append(out)
    return sorted(found, key=lambda p: runs.run_name(p, root))


def run_row(root: Path, run: Path) -> dict:
    job = launcher.latest_job(root, run)
    if job and job.get("cancelled"):
        job = None
    log = launcher.job_log(job)
    exit_code = job.get("exit_code") if job and job["state"] == "done" else None
    row = runs.summary(run, root, log, exit_code, queued=bool(job and job["state"] == "queued"))
    if job and job["state"] == "running" and row["status"] != "running" and launcher._pid_alive(job.get("pid")):
        row["status"] = "running"  # started, still setting up: the lock is not taken yet
        row["error"] = ""
    return row


def overview(root: Path) -> list[dict]:
    return [run_row(root, run) for run in run_folders(root)]


def resolve(root: Path, name: str) -> Path:
    """A run's folder from its name in the table (a path relative to root), kept inside root."""
    root = Path(root)
    path = (root / name).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise ValueError(f"{name} is not a run under {root}")
    return root / name


def log_text(root: Path, run: Path) -> str:
    job = launcher.latest_job(root, run)
    return launcher.job_log(job)


def reconstructions(run: Path) -> list[Path]:
    """A video VAE run's evaluation clips (original | reconstruction), newest first."""
    clips = [p for p in Path(run).rglob("*-clip*.mp4") if not any(part.startswith("checkpoint-") for part in p.parts)]
    return sorted(clips, key=lambda p: p.stat().st_mtime, reverse=True)


def curves_figure(root: Path, names: list[str], keys: list[str] | None = None):
    """One panel per metric, each selected run a line in it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = {name: runs.read_metrics(resolve(root, name)) for name in names}
    available: list[str] = []
    for recs in records.values():
        available += [k for k in runs.metric_keys(recs) if k not in available]
    chosen = [k for k in (keys or available) if k in available] or ["loss"]
    cols = min(3, len(chosen))
    rows = (len(chosen) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, chosen):
        for name, recs in records.items():
            steps, values = runs.series(recs, key)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 3 else None, markersize=3, label=name)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    if len(names) > 1 or not any(records.values()):
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="upper center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93 if len(names) > 1 else 1))
    plt.close(fig)
    return fig


def available_metrics(root: Path, names: list[str]) -> list[str]:
    keys: list[str] = []
    for name in names:
        keys += [k for k in runs.metric_keys(runs.read_metrics(resolve(root, name))) if k not in keys]
    return keys


def signature(root: Path, names: list[str], keys) -> tuple:
    """Changes when a curve would: the selection and each metrics file's size."""
    sizes = []
    for name in names:
        try:
            sizes.append((resolve(root, name) / "metrics.jsonl").stat().st_size)
        except (OSError, ValueError):
            sizes.append(-1)
    return (tuple(names), tuple(keys or ()), tuple(sizes))


STATUS_COLOURS = {"running": "#1f77b4", "queued": "#7f7f7f", "finished": "#2ca02c", "stopped": "#ff7f0e",
                  "failed": "#d62728"}


def html_table(headers: list[str], rows: list[list], empty: str = "nothing yet") -> str:
    """A plain HTML table (escaped); a status cell gets its colour. Rows carry data-run for tests and scripts."""
    from html import escape
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for h, value in zip(headers, row):
            colour = STATUS_COLOURS.get(str(value)) if h == "status" else None
            style = f' style="color:{colour};font-weight:600"' if colour else ""
            cells.append(f'<td data-col="{escape(h)}"{style}>{escape("" if value is None else str(value))}</td>')
        body.append(f'<tr data-run="{escape(str(row[0]))}">{"".join(cells)}</tr>')
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}"><i>{escape(empty)}</i></td></tr>')
    return f'<table class="ember-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
