"""Regenerate pydoc.txt: CPython's own help text (pydoc_data), one paragraph per line.

It ships inside every CPython, so the demo corpus needs no download; the file is committed so
every machine trains on the same text whatever its Python version.
"""
import re
from pathlib import Path

from pydoc_data.topics import topics

paragraphs = []
for name in sorted(topics):
    for block in re.split(r"\n\s*\n", topics[name]):
        text = " ".join(block.split())
        if len(text) >= 40:
            paragraphs.append(text)
Path(__file__).with_name("pydoc.txt").write_text("\n".join(paragraphs) + "\n", encoding="utf-8")
print(f"{len(paragraphs)} paragraphs")
