"""Regenerate the demo SFT sets from CPython's help topics (no download).

sft_alpaca.json: alpaca rows (instruction, input, output, system).
sft_sharegpt.json: two-turn sharegpt conversations ("from"/"value" tags, human/gpt roles).
"""
import json
import random
import re
from pathlib import Path
from pydoc_data.topics import topics

here = Path(__file__).parent


def pydoc_facts() -> list[tuple[str, str]]:
    """(topic, its first prose sentence) for every help topic with one of a sensible length."""
    facts = []
    for name in sorted(topics):
        blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n", topics[name].strip())]
        prose = [b for b in blocks if not re.search(r"[*=~-]{4}", b) and len(b) >= 30]  # skip title underlines
        if prose:
            sentence = re.split(r"(?<=[.:])\s", prose[0])[0]
            if 30 <= len(sentence) <= 240:
                facts.append((name, sentence))
    return facts


def main() -> None:
    rng = random.Random(0)
    facts = pydoc_facts()
    alpaca = [{"instruction": "What does the Python help topic say about this?", "input": name, "output": sentence,
               "system": "You answer questions about Python."} for name, sentence in facts]
    sharegpt = []
    for (name, sentence), (other, other_sentence) in zip(facts, facts[1:] + facts[:1]):
        sharegpt.append({"conversations": [
            {"from": "human", "value": f"Tell me about '{name}' in Python."},
            {"from": "gpt", "value": sentence},
            {"from": "human", "value": f"And '{other}'?"},
            {"from": "gpt", "value": other_sentence},
        ]})
    rng.shuffle(alpaca)
    (here / "sft_alpaca.json").write_text(json.dumps(alpaca, indent=1) + "\n")
    (here / "sft_sharegpt.json").write_text(json.dumps(sharegpt, indent=1) + "\n")
    print(len(alpaca), len(sharegpt))


if __name__ == "__main__":
    main()
