"""'did you mean': offered only for a near-miss spelling of a key, never for a merely similar name.

difflib's similarity ratio pairs keys that share long parts (`loraplus_lr_ratio` → `min_lr_ratio`,
`ppo_target` → `oft_target`), which points the user at a different setting. A typo is a letter or two:
so the rule is an edit distance (insert, delete, substitute, swap two neighbours) of at most 1 for
short keys and 2 for longer ones."""
from __future__ import annotations

from typing import Iterable


def edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance (Damerau-Levenshtein without repeated edits of one span)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def closest_key(name: str, known: Iterable[str]) -> str | None:
    """The known key one typo away from `name`, or None when none is that close."""
    allowed = 1 if len(name) <= 6 else 2
    best = min(((edit_distance(name.lower(), key), key) for key in known), default=None)
    return best[1] if best is not None and best[0] <= allowed else None
