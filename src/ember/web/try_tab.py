"""The Try tab: sample from an LM run, ask a VLM run about an image, merge a LoRA run.

Each one runs the matching `ember` command in a child process (as a user would in a shell), so the
page never holds a model in its own memory and a crash there cannot take the page down.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gradio as gr
import yaml

from . import board, runs

TIMEOUT = 300


def run_config(run: Path) -> dict:
    try:
        return yaml.safe_load((Path(run) / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def ember(args: list[str]) -> str:
    """Output of `ember ARGS` (its error line when it fails)."""
    try:
        done = subprocess.run([sys.executable, "-m", "ember", *args], capture_output=True, text=True,
                              timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"error: no answer within {TIMEOUT} s"
    if done.returncode != 0:
        return "error: " + (runs.error_line(done.stderr) or done.stderr.strip().splitlines()[-1:] or ["failed"])[0]
    return done.stdout.strip()


def generate(root: Path, name: str, prompt: str, max_new_tokens, temperature) -> str:
    if not name:
        return "choose a finished language-model run"
    run = board.resolve(root, name)
    return ember(["generate", str(run), "--prompt", prompt or "", "--max_new_tokens", str(int(max_new_tokens)),
                  "--temperature", str(float(temperature))])


def ask(root: Path, name: str, image: str | None, question: str) -> str:
    if not name or not image:
        return "choose a finished VLM run and an image"
    return ember(["chat", str(board.resolve(root, name)), "--image", image, "--question", question or ""])


def export(root: Path, name: str, export_dir: str) -> str:
    if not name or not export_dir:
        return "choose a finished LoRA run and an export folder"
    run = board.resolve(root, name)
    base = run_config(run).get("model_name_or_path")
    if not base:
        return f"{name} has no model_name_or_path to merge into"
    out = ember(["export", "--model_name_or_path", str(base), "--adapter_name_or_path", str(run),
                 "--export_dir", export_dir])
    return out


def finished(root: Path, task: str, lora: bool = False) -> list[str]:
    names = []
    for row in board.overview(root):
        cfg = run_config(board.resolve(root, row["run"]))
        if row["status"] == "finished" and cfg.get("task", "causal_lm") == task and \
                (not lora or cfg.get("finetuning_type") in ("lora", "qlora")):
            names.append(row["run"])
    return names


def build(root: Path) -> tuple:
    """Builds the tab inside the current Blocks; returns (refresh, outputs) that fill its run lists, for
    the page to call whenever the tab is opened (runs finish after the page was built)."""
    gr.Markdown("Finished runs only. Each answer comes from the matching `ember` command run in its own process.")
    with gr.Tab("Generate (language model)"):
        lm = gr.Dropdown(choices=finished(root, "causal_lm"), label="Run", elem_id="try-lm-run")
        prompt = gr.Textbox(label="Prompt", elem_id="try-prompt")
        with gr.Row():
            max_new = gr.Slider(1, 512, value=64, step=1, label="max_new_tokens")
            temp = gr.Slider(0, 2, value=0.8, step=0.05, label="temperature (0 = greedy)")
        gen_btn = gr.Button("Generate", elem_id="try-generate")
        text = gr.Textbox(label="Output", lines=6, elem_id="try-output")
        gen_btn.click(lambda *a: generate(root, *a), [lm, prompt, max_new, temp], text)
    with gr.Tab("Ask (vision-language model)"):
        vlm = gr.Dropdown(choices=finished(root, "vlm"), label="Run")
        image = gr.Image(type="filepath", label="Image")
        question = gr.Textbox(label="Question")
        ask_btn = gr.Button("Ask")
        answer = gr.Textbox(label="Answer")
        ask_btn.click(lambda *a: ask(root, *a), [vlm, image, question], answer)
    with gr.Tab("Export (merge LoRA)"):
        lora = gr.Dropdown(choices=finished(root, "causal_lm", lora=True), label="LoRA run")
        export_dir = gr.Textbox(label="export_dir", value=str(root / "merged"))
        export_btn = gr.Button("Merge and export")
        export_msg = gr.Textbox(label="Result")
        export_btn.click(lambda *a: export(root, *a), [lora, export_dir], export_msg)
    refresh = gr.Button("Refresh run lists", size="sm")

    def lists():
        return (gr.update(choices=finished(root, "causal_lm")), gr.update(choices=finished(root, "vlm")),
                gr.update(choices=finished(root, "causal_lm", lora=True)))

    refresh.click(lists, None, [lm, vlm, lora])
    return lists, [lm, vlm, lora]
