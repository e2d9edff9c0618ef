"""Every key of LLaMA-Factory 0.9.5's example YAMLs (train_lora, train_full, train_qlora, merge_lora,
shipped under tests/fixtures/llamafactory/examples) either works or is refused in one line that names
it and says why; never an 'unknown key', never a did-you-mean that points at another setting."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ember.config import ConfigError, build_config
from ember.config.parse import read_yaml
from ember.config.suggest import closest_key, edit_distance
from ember.export import parse_export_config

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "llamafactory" / "examples"
TRAIN_YAMLS = sorted(p for p in EXAMPLES.glob("train_*/*.yaml"))
MERGE_YAMLS = sorted(EXAMPLES.glob("merge_lora/*.yaml"))
PATH_KEYS = ("model_name_or_path", "adapter_name_or_path", "output_dir", "export_dir", "dataset_dir",
             "tokenized_path", "export_quantization_dataset")

# what each whole YAML becomes: the finetuning_type ember runs, or the key it is refused on
EXPECTED = {
    "qwen3_full_sft.yaml": "deepspeed", "qwen3vl_full_sft.yaml": "image_max_pixels",
    "qwen3_lora_sft_ds3.yaml": "deepspeed", "qwen3vl_lora_sft.yaml": "image_max_pixels",
    "qwen3vl_lora_dpo.yaml": "image_max_pixels", "qwen3_lora_sft_ray.yaml": "ray_num_workers",
    "qwen3_lora_sft_bnb_npu.yaml": "qlora", "qwen3_lora_sft_otfq.yaml": "qlora",
}


def filled(path: Path, tmp_path: Path) -> dict:
    raw = read_yaml(str(path))
    for key in PATH_KEYS:
        if key in raw:
            raw[key] = str(tmp_path / key)
    return raw


def test_the_fixture_holds_the_four_folders():
    assert {p.parent.name for p in TRAIN_YAMLS + MERGE_YAMLS} == {"train_lora", "train_full", "train_qlora", "merge_lora"}
    assert len(TRAIN_YAMLS) == 17 and len(MERGE_YAMLS) == 4


@pytest.mark.parametrize("path", TRAIN_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_whole_train_yaml_loads_or_is_refused_on_a_named_key(path, tmp_path):
    raw = filled(path, tmp_path)
    expected = EXPECTED.get(path.name, "lora")
    if expected in raw:  # refused: the line names the key and gives a reason after it
        with pytest.raises(ConfigError) as err:
            build_config(raw)
        message = str(err.value)
        assert expected in message and "unknown key" not in message and "\n" not in message
        assert len(message.split(expected, 1)[1].strip(" :")) > 20, message
    else:
        cfg = build_config(raw)
        assert cfg.finetuning_type == expected and cfg.stage == raw["stage"]
        assert cfg.cutoff_len == raw["cutoff_len"] and cfg.learning_rate == raw.get("learning_rate", 5e-5)


def test_lora_plus_quantization_bit_is_qlora_as_in_llamafactory(tmp_path):
    cfg = build_config(filled(EXAMPLES / "train_qlora" / "qwen3_lora_sft_bnb_npu.yaml", tmp_path))
    assert (cfg.finetuning_type, cfg.quantization_bit, cfg.double_quantization) == ("qlora", 4, False)
    # the two keys may come from different sources: the YAML's lora, the command line's bits
    raw = filled(EXAMPLES / "train_lora" / "qwen3_lora_sft.yaml", tmp_path)
    assert build_config(raw, {"quantization_bit": 8}).finetuning_type == "qlora"
    with pytest.raises(ConfigError, match="quantization_bit.*full.*lora"):
        build_config(dict(raw, finetuning_type="full", quantization_bit=4))


def _first_values(paths):
    """Each key of these YAMLs once, with the value the first of them gives it."""
    seen = {}
    for path in paths:
        for key, value in read_yaml(str(path)).items():
            seen.setdefault(key, value)
    return sorted(seen.items())


@pytest.mark.parametrize("key, value", _first_values(TRAIN_YAMLS), ids=lambda v: str(v))
def test_each_train_key_alone_works_or_is_refused_with_a_reason(key, value, make_config, caplog):
    value = "/tmp/somewhere" if key in PATH_KEYS else value
    try:
        with caplog.at_level(logging.INFO, logger="ember"):
            cfg = make_config(**{key: value})
    except ConfigError as err:
        message = str(err)
        assert message.startswith(key) and "unknown key" not in message and len(message) > len(key) + 20, message
        return
    notice = " ".join(r.getMessage() for r in caplog.records if key in r.getMessage())
    assert hasattr(cfg, key) or "no effect" in notice, f"{key} was dropped without a word"


@pytest.mark.parametrize("key, value", _first_values(MERGE_YAMLS), ids=lambda v: str(v))
def test_each_merge_key_works_or_is_refused_with_a_reason(key, value, tmp_path):
    raw = {"model_name_or_path": str(tmp_path / "base"), "export_dir": str(tmp_path / "out")}
    raw[key] = str(tmp_path / key) if key in PATH_KEYS else value
    try:
        cfg = parse_export_config(raw)
    except ConfigError as err:
        assert key in str(err) and "GPTQ" in str(err), str(err)  # only the GPTQ export keys are refused
        return
    assert key in type(cfg).model_fields or key in ("export_device", "export_legacy_format")


def test_merge_yamls_load_except_gptq(tmp_path):
    for path in MERGE_YAMLS:
        raw = filled(path, tmp_path)
        if "export_quantization_bit" in raw:
            with pytest.raises(ConfigError, match="export_quantization_bit.*GPTQ"):
                parse_export_config(raw)
        else:
            assert parse_export_config(raw).export_dir == raw["export_dir"]


@pytest.mark.parametrize("typo, meant", [("lerning_rate", "learning_rate"), ("lora_rnk", "lora_rank"),
                                         ("warmup_ratios", "warmup_ratio"), ("quantisation_bit", "quantization_bit"),
                                         ("flash_atn", "flash_attn"), ("cutof_len", "cutoff_len")])
def test_did_you_mean_for_a_typo(make_config, typo, meant):
    with pytest.raises(ConfigError, match=f"did you mean '{meant}'"):
        make_config(**{typo: 1})


# names ember does not know, each merely *similar* to a key it does (difflib's 0.6 ratio paired every
# one of these with another setting: ppo_kl_target → ppo_target, model_dtype → reward_model_type, ...)
@pytest.mark.parametrize("other", ["ppo_kl_target", "galore_layers", "eval_every_steps", "reward_scale",
                                   "vision_lr", "lr_warmup", "dataset_weights", "model_dtype", "save_best"])
def test_no_did_you_mean_for_a_different_setting(make_config, other):
    with pytest.raises(ConfigError) as err:
        make_config(**{other: 1})
    assert "did you mean" not in str(err.value), str(err.value)


def test_loraplus_is_a_key_now_not_min_lr_ratio(make_config):
    assert make_config(loraplus_lr_ratio=16.0, finetuning_type="lora").loraplus_lr_ratio == 16.0


def test_edit_distance_against_a_plain_reference():
    def reference(a, b):  # textbook Levenshtein, plus one adjacent swap counted as one edit
        d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
                if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                    d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
        return d[-1][-1]
    for a, b in [("kitten", "sitting"), ("ab", "ba"), ("", "abc"), ("lora_rank", "lora_rnak"), ("ld_alpha", "lora_alpha")]:
        assert edit_distance(a, b) == reference(a, b)
    assert closest_key("xyz", []) is None


def _declared_keys() -> list[str]:
    lines = (EXAMPLES / "hparams_keys.txt").read_text().splitlines()
    return [line.split()[0] for line in lines if line and not line.startswith("#")]


def test_every_key_llamafactory_declares_is_known_with_a_reason():
    from ember.config.aliases import ALIASES
    from ember.config.foreign import INSTEAD, NO_EFFECT
    from ember.config.schema import field_names
    from ember.export import ExportConfig
    declared = _declared_keys()
    assert len(declared) == 241
    known = set(field_names()) | set(ALIASES) | set(ExportConfig.model_fields)
    unaccounted = [k for k in declared if k not in known and k not in NO_EFFECT and k not in INSTEAD]
    assert unaccounted == []
    assert all(len(reason) > 15 for reason in (*NO_EFFECT.values(), *INSTEAD.values()))


@pytest.mark.parametrize("key", ["use_swanlab", "ppo_epochs", "fp8", "use_dft_loss", "compute_accuracy", "use_kt"])
def test_declared_keys_that_would_change_the_result_are_refused_when_set(make_config, key):
    with pytest.raises(ConfigError, match=f"^{key} is not supported by ember: .{{20}}"):
        make_config(**{key: True})


@pytest.mark.parametrize("name", ["train_qlora/qwen3_lora_sft_otfq.yaml", "train_lora/qwen3_lora_sft.yaml"])
def test_example_yaml_trains_with_only_paths_filled_in(name, tiny_model_dir, tmp_path):
    """LLaMA-Factory's own QLoRA spelling (lora + quantization_bit: 4) and its LoRA SFT recipe run as written;
    the test fills model, dataset_dir and output_dir, and caps the run at one step."""
    from ember.engine.trainer import Trainer
    from ember.tasks import build_task
    data = demo_data(tmp_path)
    raw = filled(EXAMPLES / name, tmp_path)
    raw.update(model_name_or_path=str(tiny_model_dir), dataset_dir=str(data))
    cfg = build_config(raw, {"max_steps": 1, "preprocessing_num_workers": 1, "dataloader_num_workers": 0})
    assert cfg.finetuning_type == ("qlora" if "otfq" in name else "lora")
    assert Trainer(cfg, build_task(cfg)).fit()["step"] == 1
    assert (Path(cfg.output_dir) / "adapter_model.safetensors").is_file()


def demo_data(tmp_path: Path) -> Path:
    """A dataset_dir with the two datasets LLaMA-Factory's SFT recipes name, in alpaca form."""
    import json
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"instruction": f"Say {w}.", "input": "", "output": f"{w}."} for w in ("yes", "no", "maybe", "hello")]
    for dataset in ("identity", "alpaca_en_demo"):
        (data / f"{dataset}.json").write_text(json.dumps(rows))
    (data / "dataset_info.json").write_text(json.dumps({d: {"file_name": f"{d}.json"} for d in ("identity", "alpaca_en_demo")}))
    return data


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("extras/*.yaml")), ids=lambda p: p.stem)
def test_method_recipes_of_llamafactory_train_as_written(path, tiny_model_dir, tmp_path, caplog):
    """examples/extras of LLaMA-Factory 0.9.5 for the methods ember implements (adam_mini, apollo, badam, galore,
    loraplus, muon, oft, pissa): model, dataset_dir and output_dir filled in, two steps."""
    from ember.engine.trainer import Trainer
    from ember.tasks import build_task
    raw = filled(path, tmp_path)
    if "image_max_pixels" in raw:  # the Qwen2.5-VL OFT recipe: a multimodal model, refused with the reason
        with pytest.raises(ConfigError, match="image_max_pixels.*task: vlm"):
            build_config(raw)
        return
    raw.update(model_name_or_path=str(tiny_model_dir), dataset_dir=str(demo_data(tmp_path)))
    cfg = build_config(raw, {"max_steps": 2, "preprocessing_num_workers": 1, "dataloader_num_workers": 0})
    with caplog.at_level(logging.WARNING, logger="ember"):
        assert Trainer(cfg, build_task(cfg)).fit()["step"] == 2
    if raw.get("galore_layerwise") or raw.get("apollo_layerwise"):
        assert "layerwise: ember steps one optimizer after the whole backward" in caplog.text
    if raw.get("pissa_convert"):
        assert (Path(cfg.output_dir) / "pissa_converted" / "adapter_config.json").is_file()
