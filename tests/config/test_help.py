"""`ember train --help` documents every key: type, default and one line of meaning."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ember.config import TrainConfig
from ember.config.aliases import ALIASES
from ember.config.help import render_help
from ember.config.schema import field_names

EMBER = Path(sys.executable).with_name("ember")
FIELDS = {f.alias or name: f for name, f in TrainConfig.model_fields.items()}


@pytest.fixture(scope="module")
def help_lines() -> dict[str, str]:
    """key → its line in the help text (a key line is indented and starts with the key)."""
    lines: dict[str, str] = {}
    for line in render_help().splitlines():
        words = line.split()
        if line.startswith("  ") and words and words[0] in FIELDS:
            assert words[0] not in lines, f"{words[0]} is listed twice"
            lines[words[0]] = line
    return lines


def test_field_names_are_the_keys_users_write():
    names = field_names()
    assert len(names) == len(set(names)) == len(TrainConfig.model_fields)
    assert "model_config" in names and "model_config_" not in names


@pytest.mark.parametrize("key", field_names())
def test_every_key_is_listed_with_its_default_and_meaning(help_lines, key):
    assert key in help_lines, f"{key} is missing from `ember train --help`"
    line = help_lines[key]
    field = FIELDS[key]
    assert f"default {field.default}" in line
    assert field.description and field.description in line


def test_help_lists_exactly_the_schema_keys(help_lines):
    assert set(help_lines) == set(field_names())


def test_help_shows_choices_of_enumerated_keys(help_lines):
    assert "cosine_with_restarts" in help_lines["lr_scheduler_type"]
    assert "adafactor" in help_lines["optim"]
    assert "steps" in help_lines["eval_strategy"] and "epoch" in help_lines["eval_strategy"]


def test_help_is_grouped_by_topic():
    text = render_help()
    headings = [line for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert len(headings) >= 5
    # keys of one topic sit together under their heading
    assert text.index("Optimizer:") < text.index("  learning_rate ") < text.index("  adam_beta2 ")
    assert text.index("Learning-rate schedule:") < text.index("  lr_scheduler_type ")


def test_help_names_the_seed_spellings():
    text = render_help()
    for alias in ALIASES:
        assert alias in text


def test_ember_train_help_prints_the_help(tmp_path):
    done = subprocess.run([str(EMBER), "train", "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == render_help().strip()
    assert list(tmp_path.iterdir()) == [], "--help must not create anything"
