"""The schema as a form: every key present, values round-trip, the CLI's checks and messages."""
from __future__ import annotations

import yaml

from ember.config.loader import build_config
from ember.config.schema import GROUPS, TrainConfig
from ember.web import form


def values_with(**changes) -> list:
    values = form.defaults()
    for key, value in changes.items():
        values[[f.key for f in form.FIELDS].index(key)] = value
    return values


def test_every_key_of_the_schema_is_a_field_in_its_group():
    keys = {f.alias or n for n, f in TrainConfig.model_fields.items()}
    assert {f.key for f in form.FIELDS} == keys
    assert form.GROUP_TITLES == [g.__doc__.strip() for g in GROUPS]
    assert form.BY_KEY["lr_scheduler_type"].kind == "choice" and "cosine" in form.BY_KEY["lr_scheduler_type"].choices
    assert form.BY_KEY["plot_loss"].kind == "bool" and form.BY_KEY["learning_rate"].number is float


def test_defaults_give_an_empty_config_and_changes_only_their_keys():
    assert form.to_config(form.defaults()) == {}
    config = form.to_config(values_with(learning_rate="1e-3", max_steps="20", plot_loss=True, quantization_bit="4",
                                        greater_is_better="true"))
    assert config == {"learning_rate": 1e-3, "max_steps": 20, "plot_loss": True, "quantization_bit": 4,
                      "greater_is_better": True}


def test_the_cli_checks_reject_in_one_line_naming_the_key():
    error = form.validate(form.to_config(values_with(learning_rate="-1")))
    assert error.startswith("learning_rate:") and "\n" not in error
    assert form.error_key(error) == "learning_rate"
    assert form.error_key(form.validate({"learing_rate": 1})) == "learning_rate"
    assert form.validate(form.to_config(values_with(learning_rate="abc"))).startswith("learning_rate:")
    assert form.validate(form.to_config(values_with(learning_rate="0.001", model_config="llama-tiny", dataset="x"))) == ""
    assert form.error_key(form.validate({})) == "model_name_or_path"


def test_yaml_and_command_say_the_same_as_the_form():
    config = form.to_config(values_with(model_config="llama-tiny", dataset="d", learning_rate="0.001",
                                        plot_loss=True, run_name="my run"))
    assert yaml.safe_load(form.to_yaml(config)) == config
    assert form.to_command(config) == ("ember train --model_config llama-tiny --dataset d --learning_rate 0.001 "
                                       "--plot_loss --run_name 'my run'")
    from ember.config.loader import load_config
    import shlex
    assert load_config(shlex.split(form.to_command(config))[2:]).learning_rate == 0.001


def test_a_run_config_yaml_fills_the_form_and_round_trips(make_config, train, tmp_path):
    cfg = make_config(max_steps=2)
    train(cfg)
    values, error = form.to_values((tmp_path / "run" / "config.yaml").read_text())
    assert error == ""
    again = build_config(form.to_config(values)).to_dict()
    expected = cfg.to_dict()
    again.pop("run_name"), expected.pop("run_name")  # the written config names the run; the test's cfg leaves it unset
    assert again == expected


def test_a_refused_yaml_still_fills_what_it_names():
    values, error = form.to_values("learning_rate: -2\nmax_steps: 5\n")
    assert error.startswith("learning_rate:")
    assert form.to_config(values) == {"learning_rate": -2.0, "max_steps": 5}


def test_task_specific_groups_show_only_for_their_task():
    shown = dict(zip(form.GROUP_TITLES, form.visible_groups("causal_lm")))
    assert not any(v for t, v in shown.items() if "(task" in t) and all(v for t, v in shown.items() if "(task" not in t)
    assert any(v for t, v in zip(form.GROUP_TITLES, form.visible_groups("vlm")) if "(task vlm)" in t)


def test_dataset_names_and_preview(corpus_dir):
    assert form.dataset_names(str(corpus_dir)) == ["tiny_text", "tiny_json"]
    rows = form.preview(str(corpus_dir), "tiny_json", 3)
    assert len(rows) == 3 and set(rows[0]) == {"content"}
    assert form.preview(str(corpus_dir), "tiny_text", 2)[0]["text"]
    assert form.dataset_names(str(corpus_dir / "missing")) == []
