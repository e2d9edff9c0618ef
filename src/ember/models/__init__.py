"""Model pieces shared by the task families. `from ember.models import VisionLanguageModel` works too:
resolved on first use, because the VLM family itself imports from this package (an eager import here
would be a cycle)."""
from __future__ import annotations

__all__ = ["VisionLanguageModel"]


def __getattr__(name: str):
    if name == "VisionLanguageModel":
        from ..tasks.vlm.model import VisionLanguageModel
        return VisionLanguageModel
    raise AttributeError(f"module 'ember.models' has no attribute {name!r}")
