from pydantic import BaseModel, ConfigDict


def short_name(spec: str | None) -> str:
    """A model path or preset as it appears in a run name: its last path component."""
    from pathlib import Path
    return Path(spec.rstrip("/")).name if spec else "none"


class Group(BaseModel):
    """One topic of keys; its docstring is the topic's title in `ember train --help`.

    A task family's own group (tasks/<family>/keys.py) may also override the classmethods
    below, which the shared config code asks of the family of the run, so no shared module
    names a family."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), coerce_numbers_to_str=True)

    @classmethod
    def run_name_parts(cls, cfg) -> tuple[str, str]:
        """(what trains, at which learning rates) in the automatic run name."""
        return f"{cfg.task}_{short_name(cfg.model_name_or_path or cfg.model_config_)}", f"lr_{cfg.learning_rate:g}"

    @classmethod
    def brings_its_own_model(cls, cfg) -> bool:
        """The family's keys name the whole model (so model_name_or_path / model_config may be unset)."""
        return False
