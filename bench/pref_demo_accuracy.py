"""The reward accuracy of the shipped preference recipes before and after training: runs
examples/{dpo,kto,rm}_lora.yaml on a base model (the demo's SFT output) with evaluation at step 0,
and prints, per recipe, the first and the last evaluation's pair metrics from metrics.jsonl.

For dpo and rm: eval_rewards/accuracies, the share of held-out pairs whose chosen answer gets the
higher reward (DPO's rewards are beta x log-ratios against the reference, so at step 0 every pair is
a tie: 0). KTO has no pairs, so its line is the held-out reward margin, eval_rewards/chosen minus
eval_rewards/rejected (TRL's rewards/margins for KTO), and the share of held-out samples whose
reward has the sign its tag asks for is not logged.

    python bench/pref_demo_accuracy.py --base runs/sft_full [--out runs/pref_demo] [--only rm,dpo] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMBER = str(Path(sys.executable).parent / "ember")


def evaluations(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "eval_loss" in r]


def summary(name: str, evals: list[dict]) -> dict:
    first, last = evals[0], evals[-1]
    if name == "kto":
        margin = lambda r: r["eval_rewards/chosen"] - r["eval_rewards/rejected"]  # noqa: E731
        return {"recipe": name, "metric": "eval reward margin", "step": [first["step"], last["step"]],
                "before": round(margin(first), 4), "after": round(margin(last), 4)}
    return {"recipe": name, "metric": "eval_rewards/accuracies", "step": [first["step"], last["step"]],
            "before": round(first["eval_rewards/accuracies"], 4), "after": round(last["eval_rewards/accuracies"], 4),
            "best": round(max(r["eval_rewards/accuracies"] for r in evals), 4),
            "margin": [round(first["eval_rewards/margins"], 4), round(last["eval_rewards/margins"], 4)]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the base model folder (the demo's runs/sft_full)")
    parser.add_argument("--out", default="runs/pref_demo")
    parser.add_argument("--only", default="dpo,kto,rm")
    parser.add_argument("--dataset_dir", default=str(REPO / "examples" / "data"))
    args, overrides = parser.parse_known_args()
    for name in args.only.split(","):
        out = Path(args.out) / name
        subprocess.run([EMBER, "train", str(REPO / "examples" / f"{name}_lora.yaml"), f"model_name_or_path={args.base}",
                        f"output_dir={out}", f"dataset_dir={args.dataset_dir}", "eval_on_start=true",
                        "disable_tqdm=true", *overrides], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(json.dumps(summary(name, evaluations(out))), flush=True)


if __name__ == "__main__":
    main()
