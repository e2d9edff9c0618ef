"""The Watch tab: every run's status, live curves of the chosen runs, one run's log, checkpoints and controls."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from . import board, launcher, runs

REFRESH_SECONDS = 2.0
CKPT_COLUMNS = ["step", "best", "metrics", "size", "time"]


def _names(rows: list[dict]) -> list[str]:
    return [r["run"] for r in rows]


def runs_html(rows: list[dict]) -> str:
    return board.html_table(board.COLUMNS, [[r[c] for c in board.COLUMNS] for r in rows],
                            "no runs yet: launch one from Configure & Launch, or point --runs at a folder of runs")


def ckpt_html(rows: list[list]) -> str:
    return board.html_table(CKPT_COLUMNS, [[r[1], *r[:1], *r[2:]] for r in rows], "no checkpoint yet")


def build(root: Path) -> dict:
    """Builds the tab's components inside the current Blocks; returns those other tabs need."""
    rows = board.overview(root)
    names = _names(rows)
    with gr.Row():
        gr.Markdown(f"Runs under `{root}` (any folder with an ember `config.yaml` and `metrics.jsonl`); "
                    f"refreshed every {REFRESH_SECONDS:g} s. Pick a run below for its log, checkpoints and controls.")
    table = gr.HTML(runs_html(rows), elem_id="runs-table", label="Runs")
    with gr.Row():
        picked = gr.Dropdown(choices=names, value=names[-1:], multiselect=True, label="Runs on the curves",
                             elem_id="curve-runs", scale=2)
        metrics = gr.Dropdown(choices=board.available_metrics(root, names[-1:]), value=[], multiselect=True,
                              label="Curves (empty = every numeric key)", elem_id="curve-keys", scale=2)
    plot = gr.Plot(label="Curves", elem_id="curves")
    with gr.Row():
        with gr.Column(scale=3):
            focus = gr.Dropdown(choices=names, value=names[-1] if names else None, label="Run",
                                elem_id="focus-run", allow_custom_value=True)
            log = gr.Textbox(label="Log (tail)", lines=14, max_lines=14, interactive=False, elem_id="log-tail",
                             autoscroll=True)
        with gr.Column(scale=2):
            gr.Markdown("**Checkpoints** (from checkpoints.jsonl)")
            ckpts = gr.HTML(board.html_table(CKPT_COLUMNS, [], "no checkpoint yet"), elem_id="ckpt-table")
            with gr.Row():
                stop_btn = gr.Button("Stop", elem_id="stop-btn", variant="stop")
                resume_btn = gr.Button("Resume", elem_id="resume-btn")
                delete_btn = gr.Button("Delete…", elem_id="delete-btn")
            confirm_btn = gr.Button("Really delete this run and its checkpoints", visible=False,
                                    elem_id="confirm-delete-btn", variant="stop")
            message = gr.Markdown(elem_id="control-message")
            clip = gr.Video(label="Reconstruction (original | reconstruction)", visible=False, elem_id="recon-clip")
    drawn = gr.State(None)

    def refresh(chosen, keys, current, last_signature):
        rows = board.overview(root)
        names = _names(rows)
        kept = [n for n in (chosen or []) if n in names]
        picked_update = gr.update(choices=names) if kept == list(chosen or []) else gr.update(choices=names, value=kept)
        chosen = kept
        sig = board.signature(root, chosen, keys)
        figure = gr.skip() if sig == last_signature else board.curves_figure(root, chosen, keys)
        return (runs_html(rows), picked_update,
                gr.update(choices=board.available_metrics(root, chosen)), figure, sig,
                gr.update(choices=names), *run_detail(current))

    def run_detail(name):
        if not name:
            return "", ckpt_html([]), gr.update(visible=False)
        try:
            run = board.resolve(root, name)
        except ValueError:
            return "", ckpt_html([]), gr.update(visible=False)
        clips = board.reconstructions(run) if run.is_dir() else []
        video = gr.update(value=str(clips[0]), visible=True) if clips else gr.update(visible=False)
        text = board.log_text(root, run) or "(no log here: this run was not started from this page)"
        return runs.tail(text, 40), ckpt_html(runs.checkpoint_rows(run) if run.is_dir() else []), video

    outputs = [table, picked, metrics, plot, drawn, focus, log, ckpts, clip]
    timer = gr.Timer(REFRESH_SECONDS)
    timer.tick(refresh, [picked, metrics, focus, drawn], outputs, show_progress="hidden")
    picked.change(refresh, [picked, metrics, focus, drawn], outputs, show_progress="hidden")
    metrics.change(refresh, [picked, metrics, focus, drawn], outputs, show_progress="hidden")
    focus.change(run_detail, focus, [log, ckpts, clip], show_progress="hidden")

    def control(action, name):
        if not name:
            return "choose a run first", gr.update(visible=False)
        try:
            run = board.resolve(root, name)
            if action == "stop":
                text = launcher.stop(root, run)
            elif action == "resume":
                state = board.run_row(root, run)["status"]
                if state in ("running", "queued"):
                    return f"{name} is {state}", gr.update(visible=False)
                if not runs.read_checkpoints(run):
                    return f"{name} has no checkpoint to resume from", gr.update(visible=False)
                launcher.resume(root, run)
                text = f"queued: resume {name} from its newest complete checkpoint"
            elif action == "ask":
                state = board.run_row(root, run)["status"]
                if state in ("running", "queued"):
                    return f"{name} is {state}: stop it before deleting", gr.update(visible=False)
                return f"Delete `{name}` ({state}) with all its checkpoints? This cannot be undone.", \
                    gr.update(visible=True)
            else:
                launcher.delete(root, run)
                text = f"deleted {name}"
        except (ValueError, OSError) as err:
            text = f"error: {err}"
        return text, gr.update(visible=False)

    stop_btn.click(lambda n: control("stop", n), focus, [message, confirm_btn])
    resume_btn.click(lambda n: control("resume", n), focus, [message, confirm_btn])
    delete_btn.click(lambda n: control("ask", n), focus, [message, confirm_btn])
    confirm_btn.click(lambda n: control("delete", n), focus, [message, confirm_btn])
    focus.change(lambda: ("", gr.update(visible=False)), None, [message, confirm_btn])
    return {"focus": focus, "picked": picked, "load": (refresh, [picked, metrics, focus, drawn], outputs)}
