"""Regenerate the demo preference sets from CPython's help topics (no download).

Each prompt asks about one help topic; the chosen answer is that topic's first sentence, the
rejected one the first sentence of another topic (fluent, but about the wrong thing), so a
model can learn the preference only by relating the answer to the question.

pref_alpaca.json: alpaca rows (instruction, input, chosen, rejected).
pref_sharegpt.json: sharegpt rows (conversations ending with the user's turn, chosen, rejected).
kto_sharegpt.json: LLaMA-Factory's KTO shape: messages (role/content) ending with the answer, and a
boolean label (true: the topic's own sentence; false: another topic's), alternating.
"""
import json
import random
from pathlib import Path

from make_sft_demo import pydoc_facts  # the same facts the SFT demo is made of

here = Path(__file__).parent
rng = random.Random(0)
facts = pydoc_facts()


def rival(index: int) -> str:
    other = (index + rng.randrange(1, len(facts))) % len(facts)
    return facts[other][1]


alpaca = [{"instruction": "What does the Python help topic say about this?", "input": name,
           "chosen": sentence, "rejected": rival(i)} for i, (name, sentence) in enumerate(facts)]
sharegpt = [{"conversations": [{"from": "human", "value": f"Tell me about '{name}' in Python."}],
             "chosen": {"from": "gpt", "value": sentence}, "rejected": {"from": "gpt", "value": rival(i)}}
            for i, (name, sentence) in enumerate(facts)]
kto = [{"messages": [{"role": "user", "content": f"What is '{name}' in Python?"},
                     {"role": "assistant", "content": sentence if i % 2 == 0 else rival(i)}], "label": i % 2 == 0}
       for i, (name, sentence) in enumerate(facts)]
rng.shuffle(alpaca)
rng.shuffle(sharegpt)
rng.shuffle(kto)
(here / "pref_alpaca.json").write_text(json.dumps(alpaca, indent=1) + "\n")
(here / "pref_sharegpt.json").write_text(json.dumps(sharegpt, indent=1) + "\n")
(here / "kto_sharegpt.json").write_text(json.dumps(kto, indent=1) + "\n")
print(len(alpaca), len(sharegpt), len(kto))
