"""The Configure tab: the schema as a form, checked live by the CLI's own checks, and Launch."""
from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from . import board, form, launcher

PER_ROW = 3


def next_output_dir(root: Path) -> str:
    queued = {Path(j.get("output_dir", "")).resolve() for j in launcher.jobs(root)}
    n = 1
    while (root / f"run-{n}").exists() or (root / f"run-{n}").resolve() in queued:
        n += 1
    return str(root / f"run-{n}")


def launch_problem(root: Path, config: dict) -> str:
    """Why the page will not start this config ('' when it will): the CLI's checks, then the page's own."""
    error = form.validate(config)
    if error:
        return error
    out = Path(str(config.get("output_dir", form.BY_KEY["output_dir"].default)))
    if root.resolve() not in out.resolve().parents:
        return f"output_dir: {out} is outside {root}; this page starts runs inside its --runs folder"
    resuming = str(config.get("resume_from_checkpoint") or "").lower() not in ("", "false", "none")
    if out.is_dir() and any(out.iterdir()) and not (resuming or config.get("overwrite_output_dir")):
        return (f"output_dir: {out} already holds a run; choose another output_dir, or set "
                "resume_from_checkpoint: true or overwrite_output_dir: true")
    if any(Path(j["output_dir"]).resolve() == out.resolve() and j["state"] != "done" for j in launcher.jobs(root)):
        return f"output_dir: {out} already has a queued or running job"
    return ""


def queue_rows(root: Path) -> list[list]:
    rows = []
    for job in launcher.jobs(root):
        if job["state"] != "done":
            rows.append([job["id"], job["state"], board.runs.run_name(Path(job["output_dir"]), root),
                         time.strftime("%H:%M:%S", time.localtime(job["created"]))])
    return rows


def describe(root: Path, values: list) -> tuple[str, str, str, str, str | None]:
    """Status line, YAML, command, error and the group of the key it names, for form values."""
    config = form.to_config(values)
    error = launch_problem(root, config)
    bad = form.error_key(error) if error else None
    text = f"**✖ {error}**" if error else "✔ `ember train` accepts this config"
    return text, form.to_yaml(config), form.to_command(config), error, form.BY_KEY[bad].group if bad else None


def queue_html(root: Path) -> str:
    return board.html_table(["job", "state", "run", "queued at"], queue_rows(root), "empty")


def _component(field: form.Field, root: Path, value):
    info = f"{field.description} (default: {field.shown(field.default) if field.default is not None else 'unset'})"
    common = dict(label=field.key, info=info, elem_id=f"field-{field.key}", value=value)
    if field.key == "dataset":
        names = form.dataset_names(form.BY_KEY["dataset_dir"].default)
        return gr.Dropdown(choices=names, allow_custom_value=True, **common)
    if field.kind == "bool":
        return gr.Checkbox(**common)
    if field.kind == "choice":
        return gr.Dropdown(choices=[field.shown(c) for c in field.choices], **common)
    return gr.Textbox(max_lines=1, **common)


def build(root: Path, tabs, watch: dict) -> None:
    start = form.defaults()
    start[[f.key for f in form.FIELDS].index("output_dir")] = next_output_dir(root)
    with gr.Row():
        upload = gr.File(label="Load a YAML", file_types=[".yaml", ".yml"], type="filepath", height=90,
                         elem_id="load-yaml")
        with gr.Column():
            from_run = gr.Dropdown(choices=[r["run"] for r in board.overview(root)], label="…or a run's config.yaml",
                                   elem_id="load-run")
            load_btn = gr.Button("Load the run's config", elem_id="load-run-btn")
    with gr.Row():
        with gr.Column(scale=3):
            components, accordions, errors = [], [], []
            task = start[0]
            for g, title in enumerate(form.GROUP_TITLES):
                fields = [(i, f) for i, f in enumerate(form.FIELDS) if f.group == title]
                visible = form.visible_groups(task)[g]
                with gr.Accordion(title, open=g < 3, visible=visible, elem_id=f"group-{g}") as acc:
                    errors.append(gr.Markdown(elem_classes=["field-error"], elem_id=f"group-error-{g}"))
                    for r in range(0, len(fields), PER_ROW):
                        with gr.Row():
                            for i, field in fields[r:r + PER_ROW]:
                                components.append(_component(field, root, start[i]))
                    if title == form.BY_KEY["dataset"].group:
                        preview = gr.Dataframe(label="Dataset preview (first rows)", interactive=False,
                                               elem_id="dataset-preview", max_height=220, wrap=True)
                accordions.append(acc)
        with gr.Column(scale=2):
            first = describe(root, start)
            status = gr.Markdown(first[0], elem_id="form-status")
            launch_btn = gr.Button("Launch (queue)", variant="primary", elem_id="launch-btn")
            launch_msg = gr.Markdown(elem_id="launch-message")
            command = gr.Code(label="Equivalent command", language="shell", interactive=False, elem_id="command",
                              value=first[2])
            yaml_view = gr.Code(label="YAML", language="yaml", interactive=False, elem_id="yaml-view",
                                value=first[1])
            gr.Markdown("**Queue** (runs start one after another)")
            queue = gr.HTML(queue_html(root), elem_id="queue-table")
    keys = [f.key for f in form.FIELDS]

    def check(*values):
        text, yaml_text, command_text, error, bad_group = describe(root, list(values))
        shown = form.visible_groups(str(values[keys.index("task")]))
        group_errors = [f"**✖ {error}**" if t == bad_group else "" for t in form.GROUP_TITLES]
        acc = [gr.update(visible=v, open=True) if t == bad_group else gr.update(visible=v)
               for v, t in zip(shown, form.GROUP_TITLES)]
        return text, yaml_text, command_text, *group_errors, *acc

    check_outputs = [status, yaml_view, command, *errors, *accordions]
    gr.on([c.change for c in components], check, components, check_outputs, show_progress="hidden",
          trigger_mode="always_last")

    dataset_box = components[keys.index("dataset")]
    dataset_dir_box = components[keys.index("dataset_dir")]
    dataset_dir_box.change(lambda d: gr.update(choices=form.dataset_names(d)), dataset_dir_box, dataset_box,
                           show_progress="hidden")
    def show_preview(dataset_dir, name):
        import pandas as pd
        return pd.DataFrame(form.preview(dataset_dir, str(name or "").split(",")[0].strip()))
    dataset_box.change(show_preview,
                       [dataset_dir_box, dataset_box], preview, show_progress="hidden")

    def load_text(text):
        values, error = form.to_values(text)
        return *values, (f"loaded, with a problem: {error}" if error else "loaded")

    upload.upload(lambda p: load_text(Path(p).read_text(encoding="utf-8", errors="replace")), upload,
                  [*components, launch_msg])

    def load_run(name):
        if not name:
            return *[gr.skip()] * len(components), "choose a run first"
        values, error = form.to_values((board.resolve(root, name) / "config.yaml").read_text())
        values[keys.index("output_dir")] = next_output_dir(root)  # a copy goes to a new folder
        values[keys.index("run_name")] = ""
        return *values, f"loaded {name}'s config into a new output_dir" + (f" (problem: {error})" if error else "")
    load_btn.click(load_run, from_run, [*components, launch_msg])

    def launch(*values):
        config = form.to_config(list(values))
        problem = launch_problem(root, config)
        if problem:
            return f"**not launched: {problem}**", *[gr.skip()] * 4, queue_html(root)
        out = str(config.get("output_dir", form.BY_KEY["output_dir"].default))
        launcher.enqueue(root, config, out)
        name = board.runs.run_name(Path(out), root)
        names = [r["run"] for r in board.overview(root)]
        return (f"queued `{name}`: it starts when the runs queued before it end", gr.Tabs(selected="watch"),
                gr.update(choices=names, value=name), gr.update(choices=names, value=[name]),
                next_output_dir(root), queue_html(root))
    launch_btn.click(launch, components, [launch_msg, tabs, watch["focus"], watch["picked"],
                                          components[keys.index("output_dir")], queue])
    gr.Timer(3.0).tick(lambda: (queue_html(root), gr.update(choices=[r["run"] for r in board.overview(root)])),
                       None, [queue, from_run], show_progress="hidden")
