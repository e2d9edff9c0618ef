"""Regenerate the demo preference sets from CPython's help topics (no download).

Each prompt asks about one help topic; the chosen answer is that topic's first sentence, the
rejected one the same sentence with its words shuffled (the right words, scrambled). The
preference, coherent text over scrambled text, holds for every topic, so what a model learns from
the training pairs carries over to held-out ones, and the reward accuracy of the shipped recipes
visibly rises (bench/pref_demo_accuracy.py; README, "Preference and reward training"). An earlier
version rejected another topic's sentence, which a model of the demo's size cannot tell from the
right one without knowing the topic: held-out accuracy stayed near chance.

pref_alpaca.json: alpaca rows (instruction, input, chosen, rejected).
pref_sharegpt.json: sharegpt rows (conversations ending with the user's turn, chosen, rejected).
kto_sharegpt.json: LLaMA-Factory's KTO shape: messages (role/content) ending with the answer, and a
boolean label (true: the topic's sentence; false: the sentence scrambled), alternating.
"""
import json
import random
from pathlib import Path

from make_sft_demo import pydoc_facts  # the same facts the SFT demo is made of

here = Path(__file__).parent
rng = random.Random(0)
facts = pydoc_facts()


def scrambled(sentence: str) -> str:
    """The sentence's words in a shuffled order (never the original order)."""
    words = sentence.split()
    for _ in range(10):
        shuffled = rng.sample(words, len(words))
        if shuffled != words:
            return " ".join(shuffled)
    return " ".join(reversed(words))


alpaca = [{"instruction": "What does the Python help topic say about this?", "input": name,
           "chosen": sentence, "rejected": scrambled(sentence)} for name, sentence in facts]
sharegpt = [{"conversations": [{"from": "human", "value": f"Tell me about '{name}' in Python."}],
             "chosen": {"from": "gpt", "value": sentence},
             "rejected": {"from": "gpt", "value": scrambled(sentence)}}
            for name, sentence in facts]
kto = [{"messages": [{"role": "user", "content": f"What is '{name}' in Python?"},
                     {"role": "assistant", "content": sentence if i % 2 == 0 else scrambled(sentence)}],
        "label": i % 2 == 0}
       for i, (name, sentence) in enumerate(facts)]
rng.shuffle(alpaca)
rng.shuffle(sharegpt)
rng.shuffle(kto)
(here / "pref_alpaca.json").write_text(json.dumps(alpaca, indent=1) + "\n")
(here / "pref_sharegpt.json").write_text(json.dumps(sharegpt, indent=1) + "\n")
(here / "kto_sharegpt.json").write_text(json.dumps(kto, indent=1) + "\n")
print(len(alpaca), len(sharegpt), len(kto))
