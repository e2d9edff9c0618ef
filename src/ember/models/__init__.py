"""Model pieces shared by the task families. `from ember.models import VisionLanguageModel` and
`from ember.models import CausalVAE` work too: resolved on first use, because those families
import from this package (an eager import here would be a cycle)."""
from __future__ import annotations

__all__ = ["VisionLanguageModel", "CausalVAE"]


def __getattr__(name: str):
    if name == "VisionLanguageModel":
        from ..tasks.vlm.model import VisionLanguageModel
        return VisionLanguageModel
    if name == "CausalVAE":
        from ..tasks.video_vae.model import CausalVAE
        return CausalVAE
    raise AttributeError(f"module 'ember.models' has no attribute {name!r}")
