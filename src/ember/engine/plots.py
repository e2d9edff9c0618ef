"""training_loss.png and training_eval_loss.png from metrics.jsonl (matplotlib, no display)."""
from __future__ import annotations

import json
from pathlib import Path


def plot_losses(output_dir: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(output_dir)
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines() if line.strip()]
    written = []
    # the reward accuracy, when a task logs one (preference stages), as LLaMA-Factory plots it
    for key, name in (("loss", "training_loss.png"), ("eval_loss", "training_eval_loss.png"),
                      ("rewards/accuracies", "training_rewards_accuracies.png")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(*zip(*points), marker="." if len(points) < 50 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(f"{key} of {root.name}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(root / name, dpi=100)
        plt.close(fig)
        written.append(root / name)
    return written
