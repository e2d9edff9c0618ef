"""Merging defaults < YAML < arguments into one validated TrainConfig, and refusing bad input."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ember.config import ConfigError, TrainConfig, build_config, load_config
from ember.config.aliases import ALIASES
from ember.config.schema import OPTIMIZERS, SCHEDULERS, field_names

# The least a config needs to pass the cross-key checks; no file is read when building it.
MINIMAL = {"model_config": "llama-tiny", "dataset": "tiny_text"}
MINIMAL_ARGS = [f"{k}={v}" for k, v in MINIMAL.items()]


def default(key: str):
    return {f.alias or name: f.default for name, f in TrainConfig.model_fields.items()}[key]


def write_yaml(path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def error_of(*sources) -> str:
    with pytest.raises(ConfigError) as err:
        build_config(*sources)
    message = str(err.value)
    assert "\n" not in message, "a config error is one line"
    return message


def args_error(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(MINIMAL_ARGS + argv)
    message = str(err.value)
    assert "\n" not in message, "a config error is one line"
    return message


# ---- precedence ------------------------------------------------------------------------
@pytest.mark.parametrize("override", [
    ["learning_rate=2e-4"], ["--learning_rate", "2e-4"], ["--learning_rate=2e-4"],
])
def test_arguments_beat_yaml_beats_defaults(tmp_path, override):
    path = write_yaml(tmp_path / "run.yaml", {**MINIMAL, "learning_rate": 1e-3, "max_steps": 10,
                                              "warmup_steps": 3, "plot_loss": True})
    cfg = load_config([path, *override])
    assert cfg.learning_rate == 2e-4          # argument wins over YAML
    assert cfg.max_steps == 10                # YAML wins over default
    assert cfg.warmup_steps == 3
    assert cfg.plot_loss is True
    assert cfg.seed == default("seed")        # untouched keys keep their defaults
    assert cfg.cutoff_len == default("cutoff_len")


def test_yaml_alone_beats_defaults(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {**MINIMAL, "cutoff_len": 77, "lr_scheduler_type": "cosine"})
    cfg = load_config([path])
    assert (cfg.cutoff_len, cfg.lr_scheduler_type) == (77, "cosine")
    assert cfg.max_grad_norm == default("max_grad_norm")


def test_arguments_alone_without_yaml():
    cfg = load_config(["--model_config", "llama-tiny", "--dataset", "tiny_text", "--max_steps", "300",
                       "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2",
                       "--lr_scheduler_type", "cosine", "--val_size", "0.05", "--eval_steps", "50", "--plot_loss",
                       "--output_dir", "runs/demo"])
    assert (cfg.max_steps, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (300, 8, 2)
    assert (cfg.lr_scheduler_type, cfg.val_size, cfg.eval_steps, cfg.plot_loss) == ("cosine", 0.05, 50, True)
    assert cfg.output_dir == "runs/demo"


@pytest.mark.parametrize("argv, expected", [
    (["--plot_loss", "false"], False), (["plot_loss=false"], False), (["--plot_loss=false"], False),
    (["--no_plot_loss"], False), (["plot_loss=true"], True),
])
def test_boolean_argument_overrides_yaml(tmp_path, argv, expected):
    path = write_yaml(tmp_path / "run.yaml", {**MINIMAL, "plot_loss": not expected})
    assert load_config([path, *argv]).plot_loss is expected


def test_bare_boolean_flag_sets_true():
    assert load_config([*MINIMAL_ARGS, "--plot_loss"]).plot_loss is True
    assert load_config([*MINIMAL_ARGS, "--plot_loss", "true"]).plot_loss is True


@pytest.mark.parametrize("argv", [["learning_rate=1e-4"], ["--learning_rate", "1e-4"], ["--learning_rate=1e-4"]])
def test_scientific_notation_in_arguments_is_a_float(argv):
    cfg = load_config(MINIMAL_ARGS + argv)
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == 1e-4


def test_scientific_notation_in_yaml_is_a_float(tmp_path):
    # PyYAML reads '1e-4' as a string; the config must still end up with the float.
    path = tmp_path / "run.yaml"
    path.write_text("model_config: llama-tiny\ndataset: tiny_text\nlearning_rate: 1e-4\nweight_decay: 1e-2\n")
    cfg = load_config([str(path)])
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == 1e-4
    assert cfg.weight_decay == 1e-2


def test_model_config_key_is_written_as_model_config():
    cfg = load_config(["model_config=llama-tiny", "dataset=tiny_text"])
    assert cfg.model_config_ == "llama-tiny"
    assert cfg.to_dict()["model_config"] == "llama-tiny"


@pytest.mark.parametrize("argv, key, expected", [
    (["run_name=2024"], "run_name", "2024"),
    (["--exp_name", "123"], "run_name", "123"),
    (["--output_dir", "42"], "output_dir", "42"),
])
def test_text_keys_accept_number_like_text(argv, key, expected):
    # argv is text: `--run_name 2024` names a run "2024", it is not a type error.
    assert getattr(load_config(MINIMAL_ARGS + argv), key) == expected


def test_resume_from_checkpoint_true_is_accepted():
    # schema: "a checkpoint folder, or true/auto for the newest complete one in output_dir"
    cfg = load_config(MINIMAL_ARGS + ["resume_from_checkpoint=true"])
    assert str(cfg.resume_from_checkpoint).lower() == "true"


@pytest.mark.parametrize("argv", [["--eval_strategy", "no"], ["eval_strategy=no"], ["--evaluation_strategy", "no"]])
def test_eval_strategy_no_from_arguments(argv):
    # 'no' is HF's spelling of the choice, not YAML 1.1's false
    assert load_config(MINIMAL_ARGS + argv).eval_strategy == "no"


def test_eval_strategy_no_from_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model_config: llama-tiny\ndataset: tiny_text\neval_strategy: no\n")
    assert load_config([str(path)]).eval_strategy == "no"


# ---- aliases: the seeds' spellings -------------------------------------------------------
# alias → (value written, canonical keys it must set, other keys the case needs to be consistent)
ALIAS_CASES = {
    "exp_name": ("my-run", {"run_name": "my-run"}, {}),
    "batch_size": (4, {"per_device_train_batch_size": 4}, {}),
    "start_learning_rate": (3e-4, {"learning_rate": 3e-4}, {}),
    "lr": (2e-4, {"learning_rate": 2e-4}, {}),
    "lr_scheduler": ("cosine", {"lr_scheduler_type": "cosine"}, {}),
    "evaluation_strategy": ("epoch", {"eval_strategy": "epoch"}, {"val_size": 0.1}),
    "betas": ([0.8, 0.95], {"adam_beta1": 0.8, "adam_beta2": 0.95}, {}),
    "precision": ("bf16", {"bf16": True, "fp16": False, "pure_bf16": False}, {}),
    "clip_grad": (False, {"max_grad_norm": 0.0}, {}),
    "disable_gradient_checkpointing": (False, {"gradient_checkpointing": True}, {}),
    "neat_packing": (True, {"packing": True}, {"stage": "sft"}),
    "log_wandb": (True, {"report_to": "wandb"}, {}),
    "train_dataset_path": ("tiny_text", {"dataset": "tiny_text"}, {}),  # see the test below
    "max_training_steps": (7, {"max_steps": 7}, {}),
    "eval_interval": (3, {"eval_steps": 3}, {"val_size": 0.1}),
    "stats_log_interval": (2, {"logging_steps": 2}, {}),
    "use_cpu": (True, {"device": "cpu"}, {}),  # LLaMA-Factory's CPU switch
}


def test_train_dataset_path_is_the_dataset():
    cfg = build_config({k: v for k, v in MINIMAL.items() if k != "dataset"} | {"train_dataset_path": "other_text"})
    assert cfg.dataset == "other_text"


def test_no_log_wandb_turns_tracking_off(tmp_path):
    # nanoVLM's flag: --no_log_wandb on the command line overrides a YAML's tracker
    path = tmp_path / "run.yaml"
    path.write_text("model_config: llama-tiny\ndataset: tiny_text\nreport_to: wandb\n")
    assert load_config([str(path), "--no_log_wandb"]).report_to == "none"


def test_every_alias_has_a_case_here():
    assert set(ALIASES) <= set(ALIAS_CASES), "add a case for each new alias"


@pytest.mark.parametrize("alias", sorted(ALIAS_CASES))
def test_alias_maps_to_its_field(alias):
    if alias not in ALIASES:
        pytest.skip(f"{alias} is not an alias in this version")
    value, expected, context = ALIAS_CASES[alias]
    cfg = build_config({**MINIMAL, **context, alias: value})
    for key, want in expected.items():
        assert getattr(cfg, key) == want, key


@pytest.mark.parametrize("alias", sorted(ALIAS_CASES))
def test_alias_from_argv_equals_canonical_keys(alias):
    if alias not in ALIASES:
        pytest.skip(f"{alias} is not an alias in this version")
    value, expected, context = ALIAS_CASES[alias]
    text = " ".join(str(v) for v in value) if isinstance(value, list) else str(value)
    via_alias = load_config([*MINIMAL_ARGS, *(f"{k}={v}" for k, v in context.items()), f"--{alias}", *text.split()])
    via_canonical = build_config({**MINIMAL, **context, **expected})
    assert via_alias == via_canonical


@pytest.mark.parametrize("argv", [
    ["--betas", "0.8", "0.95"], ["betas=0.8,0.95"], ["betas=[0.8, 0.95]"], ["--betas=0.8 0.95"],
])
def test_betas_spellings(argv):
    cfg = load_config(MINIMAL_ARGS + argv)
    assert (cfg.adam_beta1, cfg.adam_beta2) == (0.8, 0.95)


@pytest.mark.parametrize("value, fp16, bf16", [
    ("bf16", False, True), ("fp16", True, False), ("fp32", False, False),
    ("BF16", False, True), ("16", True, False), ("32", False, False),
])
def test_precision_alias(value, fp16, bf16):
    cfg = load_config([*MINIMAL_ARGS, "--precision", value])
    assert (cfg.fp16, cfg.bf16, cfg.pure_bf16) == (fp16, bf16, False)


@pytest.mark.parametrize("argv, norm", [
    (["--clip_grad", "False"], 0.0), (["clip_grad=false"], 0.0),
    (["--clip_grad", "True"], default("max_grad_norm")), (["--clip_grad"], default("max_grad_norm")),
    (["--clip_grad", "True", "--max_grad_norm", "0.5"], 0.5),
])
def test_clip_grad_alias(argv, norm):
    assert load_config(MINIMAL_ARGS + argv).max_grad_norm == norm


def test_alias_in_arguments_beats_canonical_key_in_yaml(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {**MINIMAL, "run_name": "from-yaml", "learning_rate": 1e-3,
                                              "per_device_train_batch_size": 16})
    cfg = load_config([path, "--exp_name", "from-cli", "start_learning_rate=5e-4", "--batch_size", "2"])
    assert (cfg.run_name, cfg.learning_rate, cfg.per_device_train_batch_size) == ("from-cli", 5e-4, 2)


@pytest.mark.parametrize("yaml_precision, argv, expected", [
    ({"bf16": True}, ["--precision", "fp32"], (False, False, False)),
    ({"fp16": True}, ["--precision", "bf16"], (False, True, False)),
    ({"pure_bf16": True}, ["precision=fp16"], (True, False, False)),
    ({"precision": "fp16"}, ["--bf16", "--fp16", "false"], (False, True, False)),
])
def test_precision_from_arguments_replaces_precision_from_yaml(tmp_path, yaml_precision, argv, expected):
    # Later sources win: `--precision fp32` on the command line means fp32, whatever the YAML said.
    path = write_yaml(tmp_path / "run.yaml", {**MINIMAL, **yaml_precision})
    cfg = load_config([path, *argv])
    assert (cfg.fp16, cfg.bf16, cfg.pure_bf16) == expected


def test_clip_grad_true_in_arguments_turns_clipping_back_on(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {**MINIMAL, "max_grad_norm": 0.0})
    assert load_config([path, "--clip_grad", "True"]).max_grad_norm > 0


def test_clip_grad_false_in_arguments_turns_clipping_off(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {**MINIMAL, "max_grad_norm": 0.5})
    assert load_config([path, "--clip_grad", "False"]).max_grad_norm == 0.0


# ---- unknown keys ------------------------------------------------------------------------
@pytest.mark.parametrize("typo, meant", [
    ("learning_rat", "learning_rate"),
    ("per_device_train_batchsize", "per_device_train_batch_size"),
    ("gradient_acumulation_steps", "gradient_accumulation_steps"),
    ("warmup_step", "warmup_steps"),
    ("overwrite_outputdir", "overwrite_output_dir"),
    ("lr_scheduler_typ", "lr_scheduler_type"),
])
def test_unknown_key_names_the_closest_valid_key(typo, meant):
    for argv in ([f"{typo}=1"], [f"--{typo}", "1"]):
        message = args_error(argv)
        assert f"'{typo}'" in message and f"'{meant}'" in message


def test_unknown_key_in_yaml_is_refused(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {**MINIMAL, "cutof_len": 128})
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert "'cutof_len'" in str(err.value) and "'cutoff_len'" in str(err.value)


def test_unknown_key_far_from_any_key_has_no_guess():
    message = args_error(["zzzqqq=1"])
    assert "'zzzqqq'" in message and "did you mean" not in message


def test_suggested_key_is_a_real_key():
    message = args_error(["--lerning_rate", "1e-4"])
    suggested = message.split("did you mean '")[1].split("'")[0]
    assert suggested in set(field_names()) | set(ALIASES)


# ---- wrong types -------------------------------------------------------------------------
@pytest.mark.parametrize("argv, key", [
    (["max_steps=abc"], "max_steps"),
    (["--cutoff_len", "12.5"], "cutoff_len"),
    (["--learning_rate", "fast"], "learning_rate"),
    (["plot_loss=maybe"], "plot_loss"),
    (["--seed", "[1, 2]"], "seed"),
    (["--clip_grad", "maybe"], "clip_grad"),
])
def test_wrong_type_names_the_key(argv, key):
    assert key in args_error(argv)


# ---- out of range ------------------------------------------------------------------------
@pytest.mark.parametrize("argv, key", [
    (["learning_rate=0"], "learning_rate"),
    (["learning_rate=-1e-4"], "learning_rate"),
    (["warmup_ratio=1.5"], "warmup_ratio"),
    (["adam_beta2=1.0"], "adam_beta2"),
    (["cutoff_len=1"], "cutoff_len"),
    (["per_device_train_batch_size=0"], "per_device_train_batch_size"),
    (["gradient_accumulation_steps=0"], "gradient_accumulation_steps"),
    (["logging_steps=0"], "logging_steps"),
    (["val_size=-0.1"], "val_size"),
    (["--betas", "0.9", "1.5"], "adam_beta2"),
])
def test_out_of_range_names_the_key(argv, key):
    assert key in args_error(argv)


@pytest.mark.parametrize("argv", [["--betas", "0.9"], ["betas=0.9,0.95,0.99"]])
def test_betas_need_exactly_two_values(argv):
    assert "betas" in args_error(argv)


# ---- invalid choices ---------------------------------------------------------------------
@pytest.mark.parametrize("key, bad, choices", [
    ("lr_scheduler_type", "cosin", SCHEDULERS),
    ("optim", "adamww", OPTIMIZERS),
    ("eval_strategy", "step", ("no", "steps", "epoch")),
    ("report_to", "wandbb", ("none", "tensorboard")),
    ("task", "gan", ("causal_lm", "vlm", "video_vae")),
    ("precision", "fp8", ("fp32", "bf16", "fp16")),
])
def test_invalid_choice_lists_the_valid_ones(key, bad, choices):
    message = args_error([f"--{key}", bad])
    assert key in message and bad in message
    for choice in choices:
        assert choice in message


def test_invalid_choice_through_an_alias_lists_the_valid_ones():
    message = args_error(["--lr_scheduler", "cosinus"])
    assert "lr_scheduler" in message and all(s in message for s in SCHEDULERS)


# ---- contradictions ----------------------------------------------------------------------
@pytest.mark.parametrize("extra, keys", [
    ({"fp16": True, "bf16": True}, ("fp16", "bf16")),
    ({"precision": "fp16", "bf16": True}, ("fp16", "bf16")),
    ({"bf16": True, "pure_bf16": True}, ("bf16", "pure_bf16")),
    ({"eval_strategy": "steps"}, ("eval_strategy", "val_size")),
    ({"eval_strategy": "epoch"}, ("eval_strategy", "val_size")),
    ({"evaluation_strategy": "steps", "val_size": 0}, ("eval_strategy",)),
    ({"max_steps": 0, "num_train_epochs": 0}, ("max_steps", "num_train_epochs")),
    ({"max_steps": -1, "num_train_epochs": 0}, ("max_steps", "num_train_epochs")),
    ({"model_name_or_path": "some/model"}, ("model_name_or_path", "model_config")),
    ({"val_size": 0.1, "eval_dataset": "tiny_json"}, ("val_size", "eval_dataset")),
])
def test_contradiction_names_the_keys(extra, keys):
    message = error_of({**MINIMAL, **extra})
    for key in keys:
        assert key in message


def test_contradiction_across_sources(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {**MINIMAL, "fp16": True})
    with pytest.raises(ConfigError, match="fp16.*bf16|bf16.*fp16"):
        load_config([path, "--bf16"])


@pytest.mark.parametrize("extra", [
    {"eval_strategy": "steps", "val_size": 0.05},
    {"eval_strategy": "epoch", "eval_dataset": "tiny_json"},
    {"eval_strategy": "no"},
    {"max_steps": 5, "num_train_epochs": 0},
    {"max_steps": -1, "num_train_epochs": 0.5},
    {"fp16": True},
    {"bf16": True, "fp16": False},
    {"model_name_or_path": "some/model", "model_config": None},
])
def test_consistent_settings_pass(extra):
    build_config({**MINIMAL, **extra})


# ---- files -------------------------------------------------------------------------------
def test_yaml_syntax_error_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model_config: llama-tiny\ndataset: [tiny_text\nmax_steps: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config([str(path), "max_steps=5"])
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_config_file_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "no_such.yaml"
    with pytest.raises(ConfigError) as err:
        load_config([str(path), "max_steps=5"])
    assert str(path) in str(err.value)


# ---- the resolved config round-trips -----------------------------------------------------
def test_written_config_reloads_to_an_equal_config(make_config, train):
    cfg = make_config(max_steps=2, cutoff_len=32, val_size=0.1, eval_steps=1, lr_scheduler_type="cosine",
                      warmup_steps=1, plot_loss=True, run_name="roundtrip", adam_beta2=0.95)
    train(cfg)
    written = f"{cfg.output_dir}/config.yaml"
    reloaded = load_config([written])
    assert reloaded == cfg
    assert yaml.safe_load(Path(written).read_text()) == cfg.to_dict()
    # and the written file spells keys as users write them, so an override still applies on top
    assert load_config([written, "max_steps=7"]) == cfg.model_copy(update={"max_steps": 7})


def test_written_config_of_a_run_from_a_model_folder_reloads(corpus_dir, tiny_model_dir, train, tmp_path):
    # built without make_config, which always names model_config: here the user never wrote it
    cfg = build_config({"model_name_or_path": str(tiny_model_dir), "dataset": "tiny_text",
                        "dataset_dir": str(corpus_dir), "cutoff_len": 32, "per_device_train_batch_size": 4,
                        "max_steps": 1, "logging_steps": 1, "save_steps": 0, "disable_tqdm": True,
                        "output_dir": str(tmp_path / "run")})
    name = train(cfg).run_name  # resolved for the run; cfg itself is never changed
    assert load_config([f"{cfg.output_dir}/config.yaml"]) == cfg.model_copy(update={"run_name": name})
