"""Task families: the one place that names them.

Each family is a package tasks/<name>/ holding its Task (task.py: the engine's contract,
engine/task.py), its own config keys (keys.py: a config Group, when the family has keys of its
own) and the data and model code only it uses. Pieces several families share (the dataset
registry, chat templates, SFT rows, fine-tuning methods, the LM loss) stay in data/ and models/.

The schema takes the allowed `task` values and the family key groups from FAMILIES, so adding
a family is its folder and one line here (docs/architecture.md walks through it).
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class Family:
    task: str  # "module:Class" of its Task, imported only when a run of this family starts
    keys: str | None = None  # "module:Class" of its config Group, imported with the schema (keep keys.py light)


FAMILIES = {
    "causal_lm": Family("ember.tasks.causal_lm.task:CausalLMTask", keys="ember.tasks.causal_lm.keys:PreferenceGroup"),
    "video_vae": Family("ember.tasks.video_vae.task:VideoVAETask", keys="ember.tasks.video_vae.keys:VideoGroup"),
    "vlm": Family("ember.tasks.vlm.task:VLMTask", keys="ember.tasks.vlm.keys:VLMGroup"),
}


def _load(spec: str):
    module, name = spec.split(":")
    return getattr(import_module(module), name)


def family_key_groups() -> dict[str, type]:
    """Each family's own config Group, by task name (families without keys of their own left out)."""
    return {name: _load(family.keys) for name, family in FAMILIES.items() if family.keys}


def build_task(cfg):
    """The Task for cfg.task (a name the schema has already checked against FAMILIES)."""
    return _load(FAMILIES[cfg.task].task)(cfg)
