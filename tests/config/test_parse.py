"""argv and YAML → raw dicts: the spellings a user may write, before any validation."""
from __future__ import annotations

import pytest

from ember.config import ConfigError
from ember.config.parse import as_bool, parse_overrides, parse_scalar, read_yaml


# ---- one key, every spelling -------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["learning_rate=1e-4"],
    ["--learning_rate", "1e-4"],
    ["--learning_rate=1e-4"],
])
def test_every_spelling_of_a_key_gives_the_same_value(argv):
    assert parse_overrides(argv) == {"learning_rate": 1e-4}


@pytest.mark.parametrize("text, expected", [
    ("1e-4", 1e-4), ("3e-4", 3e-4), ("5E-5", 5e-5), ("2.0e-3", 2e-3), ("1e3", 1000.0), ("0.05", 0.05),
])
def test_scientific_notation_parses_as_float(text, expected):
    # YAML 1.1 reads '1e-4' (no dot) as a string; ember must not.
    value = parse_scalar(text)
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=0, abs=0)


@pytest.mark.parametrize("text, expected", [
    ("300", 300), ("-1", -1), ("0", 0), ("true", True), ("false", False), ("True", True), ("False", False),
    ("cosine", "cosine"), ("runs/demo", "runs/demo"), ("tiny_text,tiny_json", "tiny_text,tiny_json"),
    ("[0.9, 0.95]", [0.9, 0.95]),
])
def test_scalars_keep_their_natural_type(text, expected):
    value = parse_scalar(text)
    assert value == expected and type(value) is type(expected)


def test_many_keys_in_mixed_spellings():
    argv = ["max_steps=200", "--plot_loss", "--cutoff_len", "256", "--output_dir=runs/x", "seed=7"]
    assert parse_overrides(argv) == {"max_steps": 200, "plot_loss": True, "cutoff_len": 256,
                                     "output_dir": "runs/x", "seed": 7}


def test_later_argument_wins():
    assert parse_overrides(["--max_steps", "3", "max_steps=4"]) == {"max_steps": 4}


def test_negative_number_is_a_value_not_a_flag():
    assert parse_overrides(["--max_steps", "-1", "--seed", "-3"]) == {"max_steps": -1, "seed": -3}


# ---- booleans ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["--plot_loss"], True),
    (["--plot_loss", "true"], True),
    (["--plot_loss", "True"], True),
    (["--plot_loss", "false"], False),
    (["--plot_loss=false"], False),
    (["plot_loss=false"], False),
    (["plot_loss=true"], True),
    (["--no_plot_loss"], False),
])
def test_boolean_spellings(argv, expected):
    assert parse_overrides(argv) == {"plot_loss": expected}


def test_bare_flag_before_another_flag_is_true():
    assert parse_overrides(["--plot_loss", "--max_steps", "5"]) == {"plot_loss": True, "max_steps": 5}
    assert parse_overrides(["--plot_loss", "max_steps=5"]) == {"plot_loss": True, "max_steps": 5}


@pytest.mark.parametrize("argv, expected", [
    (["--clip_grad", "True"], True), (["--clip_grad", "False"], False), (["clip_grad=False"], False),
])
def test_capitalised_python_booleans(argv, expected):
    assert parse_overrides(argv) == {"clip_grad": expected}


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), ("true", True), ("True", True), ("yes", True), ("1", True), (1, True),
    ("false", False), ("False", False), ("no", False), ("0", False), (0, False),
])
def test_as_bool(value, expected):
    assert as_bool("plot_loss", value) is expected


def test_as_bool_rejects_other_words_naming_the_key():
    with pytest.raises(ConfigError, match="clip_grad"):
        as_bool("clip_grad", "maybe")


# ---- multi-value and malformed arguments -------------------------------------------------
def test_betas_take_two_values():
    assert parse_overrides(["--betas", "0.9", "0.999"]) == {"betas": [0.9, 0.999]}
    assert parse_overrides(["--betas", "0.9", "0.95", "--max_steps", "3"]) == {"betas": [0.9, 0.95], "max_steps": 3}


def test_bare_word_is_refused():
    with pytest.raises(ConfigError, match="max_steps"):
        parse_overrides(["max_steps", "3"])


# ---- YAML files --------------------------------------------------------------------------
def test_yaml_file_is_read_as_a_mapping(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 2.0e-3\nmax_steps: 300\nplot_loss: true\n### a comment\ndataset: pydoc\n")
    assert read_yaml(str(path)) == {"learning_rate": 2e-3, "max_steps": 300, "plot_loss": True, "dataset": "pydoc"}


def test_empty_yaml_file_is_an_empty_config(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing but a comment\n")
    assert read_yaml(str(path)) == {}


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("max_steps: 10\nbetas: [0.9, 0.95\nseed: 1\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(str(path))
    message = str(err.value)
    assert str(path) in message and "line" in message
    assert "\n" not in message


def test_missing_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere" / "run.yaml"
    with pytest.raises(ConfigError, match="run.yaml") as err:
        read_yaml(str(path))
    assert str(path) in str(err.value)


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- learning_rate\n- 1e-4\n")
    with pytest.raises(ConfigError, match="list.yaml"):
        read_yaml(str(path))
