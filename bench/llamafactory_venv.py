"""LLaMA-Factory's own virtual environment (bench/.lf-venv), made on first use and kept.

LLaMA-Factory pins its own transformers, peft, datasets and trl, which differ from ember's, so
it gets a venv of its own rather than sharing ember's. Install: torch pinned to the same CPU
build as ember's and `llamafactory==0.9.5`, in one pip command (so pip never swaps torch for a
CUDA build). Two of the packages it pulls in cannot load on this CPU-only torch:

- torchvision: the wheel the index offers for torch 2.13 is built against CUDA; importing its
  operators fails ("operator torchvision::nms does not exist"). No CPU build is on the index,
  and a text-only run does not need it, so it is uninstalled: transformers then treats vision
  as unavailable, as it does on any machine without torchvision.
- torchaudio: the newest release on the index (2.11) does not load with torch 2.13. It is
  uninstalled too, but LLaMA-Factory's data module imports it unconditionally at start-up
  (llamafactory/data/mm_plugin.py, only used to read audio files), so a one-file stand-in
  module takes its place: importing it works, reading audio raises a clear error. It has no
  package metadata, so transformers still reports torchaudio as unavailable.

    python bench/llamafactory_venv.py      # make it (or check it) and print its python
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".lf-venv"
REQUIREMENTS = ["torch==2.13.0", "llamafactory==0.9.5"]
READY = VENV / ".ready"  # written last, holding REQUIREMENTS: a half-made venv is made again
TORCHAUDIO_STANDIN = '''"""Stand-in for torchaudio in the bench's LLaMA-Factory venv (see bench/llamafactory_venv.py):
LLaMA-Factory imports torchaudio at start-up; the real package cannot load with this torch."""


def load(*args, **kwargs):
    raise RuntimeError("torchaudio is not installed in the bench's LLaMA-Factory venv: audio datasets cannot be read")


class functional:  # noqa: N801  (torchaudio.functional.resample is the other name LLaMA-Factory uses)
    resample = staticmethod(load)
'''


def python() -> Path:
    return VENV / "bin" / "python"


def ensure(log=print) -> Path:
    """The venv's python, after making the venv if it is missing or was left half-made."""
    if READY.exists() and READY.read_text().split() == REQUIREMENTS and python().exists():
        return python()
    log(f"LLaMA-Factory venv: creating {VENV} (once; 2-6 minutes)")
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python()), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, *REQUIREMENTS], check=True)  # torch pinned in the same command
    subprocess.run([str(python()), "-m", "pip", "uninstall", "--quiet", "-y", "torchvision", "torchaudio"], check=True)
    site = Path(subprocess.run([str(python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "torchaudio").mkdir(exist_ok=True)
    (site / "torchaudio" / "__init__.py").write_text(TORCHAUDIO_STANDIN)
    check = "import llamafactory.train.tuner, torch; assert torch.__version__.startswith('2.13.0')"
    subprocess.run([str(python()), "-c", check], check=True)
    READY.write_text(" ".join(REQUIREMENTS) + "\n")
    return python()


if __name__ == "__main__":
    print(ensure())
