"""Regenerate pydoc.txt: CPython's own help text, one paragraph per line.

The help topics (pydoc_data) come first, then the docstrings of the standard library's
public modules, classes and functions. All of it ships inside every CPython, so the demo
corpus needs no download; the file is committed so every machine trains on the same text
whatever its Python version.
"""
import contextlib
import importlib
import inspect
import io
import re
import sys
from pathlib import Path

from pydoc_data.topics import topics

# modules that open windows or browsers, print on import, or are not documentation
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "ensurepip", "lib2to3", "pydoc_data"}


def paragraphs(text):
    for block in re.split(r"\n\s*\n", text or ""):
        line = " ".join(block.split())
        if len(line) >= 40:
            yield line


def stdlib_docstrings():
    for name in sorted(sys.stdlib_module_names):
        if name in SKIP or name.startswith("_"):
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                module = importlib.import_module(name)
        except Exception:
            continue
        yield inspect.getdoc(module)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield inspect.getdoc(obj)
            if inspect.isclass(obj):
                for member_name, member in sorted(vars(obj).items()):
                    if not member_name.startswith("_") and inspect.isfunction(member):
                        yield inspect.getdoc(member)


lines, seen = [], set()
for text in [topics[name] for name in sorted(topics)] + list(stdlib_docstrings()):
    for line in paragraphs(text):
        if line not in seen:
            seen.add(line)
            lines.append(line)
Path(__file__).with_name("pydoc.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
print(f"{len(lines)} paragraphs")
