"""`ember web`: the page (Gradio Blocks) and serving it safely.

Launching a run executes commands (an `eval_command` is one), so the page binds to loopback by
default and refuses any other address unless a token guards it.
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from ember.config.errors import ConfigError

CSS = """
.field-error p { color: #c0392b; margin: 0; }
#form-status p { font-size: 1.05em; }
.ember-table { width: 100%; border-collapse: collapse; font-size: 0.92em; }
.ember-table th, .ember-table td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e5e5e5; }
.ember-table th { font-weight: 600; background: #fafafa; }
"""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_app(root: Path):
    import gradio as gr

    from . import configure_tab, launcher, try_tab, watch_tab

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if any(j["state"] == "queued" for j in launcher.jobs(root)) and not launcher.runner_active(root):
        launcher.start_runner(root)  # jobs queued before a restart or reboot go on
    with gr.Blocks(title="ember", analytics_enabled=False) as app:
        gr.Markdown("## ember — train, watch and try runs")
        with gr.Tabs(selected="watch", elem_id="tabs") as tabs:
            with gr.Tab("Watch", id="watch", elem_id="tab-watch"):
                watch = watch_tab.build(root)
            with gr.Tab("Configure & Launch", id="configure", elem_id="tab-configure"):
                configure_tab.build(root, tabs, watch)
            with gr.Tab("Try", id="try", elem_id="tab-try") as try_page:
                try_lists, try_outputs = try_tab.build(root)
        # runs that finished after the page was built appear as soon as the tab is opened
        try_page.select(try_lists, None, try_outputs, show_progress="hidden")
        refresh, inputs, outputs = watch["load"]
        app.load(refresh, inputs, outputs, show_progress="hidden")
    return app


def serve(runs: str, host: str, port: int, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise ConfigError(f"--host {host} makes the page reachable from other machines, and launching a run executes "
                          "commands; add --token T (then log in with any user name and T), or keep --host 127.0.0.1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_app(Path(runs))
    if token:
        print(f"ember web: this page starts commands on this machine; it asks for the token (any user name, "
              f"password = the token) before anything, on http://{host}:{port}", flush=True)
    else:
        print(f"ember web: serving runs under {runs} on http://{host}:{port} (loopback only)", flush=True)
    app.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=port, share=False, inbrowser=False, show_error=True, quiet=True,
        auth=(lambda _user, password: password == token) if token else None, css=CSS,
        allowed_paths=[str(Path(runs).resolve())], footer_links=[])
