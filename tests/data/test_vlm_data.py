"""VLM data: multimodal sharegpt and the_cauldron rows → ids with expanded image tokens,
assistant-only labels, rating filters, bad images, validation split, and the generated
shapes_vqa dataset read back through the registry.

Expected labels are the assistant texts written out by hand, decoded back from the tokens.
"""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoTokenizer

from ember.config import ConfigError
from ember.config.schema import TrainConfig
from ember.data.labels import IGNORE
from ember.tasks.vlm.data import build_vlm_datasets
from ember.tasks.vlm.images import BadImage, ImageProcessor

REPO = Path(__file__).resolve().parents[2]
IMAGE_TOKEN, EOS, TPI = "<|image|>", "<|endoftext|>", 2
ROLE_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
SHAREGPT = {"formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"}, "tags": ROLE_TAGS}


@pytest.fixture(scope="module")
def tokenizer():
    tok = AutoTokenizer.from_pretrained(str(REPO / "examples" / "data" / "tokenizer"))
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tok


def jpeg(root: Path, name: str, size=(8, 8), rgb=(200, 30, 30)) -> str:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(root / name, format="JPEG")
    return name


def write(root: Path, entries: dict[str, tuple[dict, list]]) -> Path:
    """entries: name → (dataset_info entry without file_name, rows)."""
    root.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, (entry, rows) in entries.items():
        (root / f"{name}.json").write_text(json.dumps(rows))
        info[name] = {"file_name": f"{name}.json", **entry}
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


def chat(*turns: str, images=()) -> dict:
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)], "images": list(images)}


def build(tokenizer, root, dataset, image_size=8, max_img_size=None, **overrides):
    cfg = TrainConfig(task="vlm", dataset=dataset, dataset_dir=str(root), seq_length=overrides.pop("seq_length", 512),
                      **overrides)
    return build_vlm_datasets(cfg, tokenizer, ImageProcessor(image_size, max_img_size), IMAGE_TOKEN, TPI)


def image_runs(ids, image_id) -> list[tuple[int, int]]:
    """(start, length) of each run of image tokens."""
    runs, start = [], None
    for i, token in enumerate(list(ids) + [-1]):
        if token == image_id and start is None:
            start = i
        elif token != image_id and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def labelled_text(tokenizer, labels) -> str:
    return tokenizer.decode([t for t in labels if t != IGNORE])


# ---- sharegpt ------------------------------------------------------------------------------

def test_each_image_becomes_views_times_tokens_per_image(tokenizer, tmp_path):
    small = jpeg(tmp_path, "img/small.jpg", (8, 8))            # one view
    wide = jpeg(tmp_path, "img/wide.jpg", (32, 16))            # 2 × 4 tiles + global view
    absolute = str(tmp_path / jpeg(tmp_path, "img/abs.jpg", (8, 8)))
    rows = [chat("Look: <image> then <image>. Same?", "no", images=[small, wide]),
            chat("<image>Colour?", "red", images=[absolute])]
    write(tmp_path, {"pics": (SHAREGPT, rows)})
    train, val, _ = build(tokenizer, tmp_path, "pics", image_size=8, max_img_size=32)
    assert val is None
    samples, image_id = train.samples, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert samples.views == [[1, 9], [1]]
    first = samples.input_ids[0]
    runs = image_runs(first, image_id)
    assert [n for _, n in runs] == [1 * TPI, 9 * TPI]  # in marker order
    assert tokenizer.decode(first[:runs[0][0]]).endswith("Look: ")
    assert tokenizer.decode(first[runs[0][0] + runs[0][1]:runs[1][0]]) == " then "
    assert samples.images[0][0][0].endswith("small.jpg") and samples.images[1][0][0] == absolute


def test_labels_cover_assistant_turns_only(tokenizer, tmp_path):
    said = [("human", "<image>What is it?"), ("gpt", "a red square"), ("human", "And the colour?"), ("gpt", "red")]
    rows = [{"conversations": [{"from": who, "value": text} for who, text in said], "images": [jpeg(tmp_path, "a.jpg")]}]
    entry = {"formatting": "sharegpt", "columns": {"messages": "conversations", "images": "images"}}  # from/value tags
    write(tmp_path, {"talk": (entry, rows)})
    train, _, _ = build(tokenizer, tmp_path, "talk")
    ids, labels = train.samples.input_ids[0], train.samples.labels[0]
    assert labelled_text(tokenizer, labels) == f"a red square{EOS}\nred{EOS}\n"
    assert tokenizer.decode(ids).startswith(f"Human: {IMAGE_TOKEN * TPI}What is it?\nAssistant: a red square")


def test_image_tokens_never_carry_loss_even_with_train_on_prompt(tokenizer, tmp_path):
    write(tmp_path, {"p": (SHAREGPT, [chat("<image>Shape?", "circle", images=[jpeg(tmp_path, "a.jpg")])])})
    train, _, _ = build(tokenizer, tmp_path, "p", train_on_prompt=True)
    ids, labels = train.samples.input_ids[0], train.samples.labels[0]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert all(label == IGNORE for token, label in zip(ids, labels) if token == image_id)
    assert "Shape?" in labelled_text(tokenizer, labels)  # the prompt text itself is trained on


def test_marker_count_must_match_images(tokenizer, tmp_path):
    a, b = jpeg(tmp_path, "a.jpg"), jpeg(tmp_path, "b.jpg")
    rows = [chat("<image>ok", "fine", images=[a]), chat("<image>two pictures", "hm", images=[a, b])]
    write(tmp_path, {"mm": (SHAREGPT, rows)})
    with pytest.raises(ConfigError, match=r"dataset 'mm' row 2: the text has 1 <image> markers but the row lists 2"):
        build(tokenizer, tmp_path, "mm")


@pytest.mark.parametrize("entry, row, message", [
    (SHAREGPT, {"messages": [{"role": "user", "content": "<image>?"}, {"role": "assistant", "content": "x"}],
                "images": [5]}, r"dataset 'e' row 1: images must be a list of file paths, got 5"),
    ({"formatting": "cauldron"}, {"images": [], "texts": [{"user": "q", "assistant": "a"}], "relevance_ratings": ["high"]},
     r"dataset 'e' row 1: relevance_ratings holds 'high', not a number"),
    ({"formatting": "cauldron"}, {"images": [], "turns": []}, r"dataset 'e' \(cauldron\) has no column 'texts'"),
])
def test_bad_rows_are_one_sentence_naming_dataset_and_row(tokenizer, tmp_path, entry, row, message):
    write(tmp_path, {"e": (entry, [row])})
    with pytest.raises(ConfigError, match=message):
        build(tokenizer, tmp_path, "e")


def test_plain_path_with_role_content_messages_is_recognised(tokenizer, tmp_path):
    rows = [chat("<image>Colour?", "red", images=[jpeg(tmp_path, "a.jpg")])]
    (tmp_path / "plain.json").write_text(json.dumps(rows))
    train, _, _ = build(tokenizer, tmp_path, str(tmp_path / "plain.json"))
    assert labelled_text(tokenizer, train.samples.labels[0]) == f"red{EOS}\n"


def test_alpaca_rows_with_images(tokenizer, tmp_path):
    rows = [{"instruction": "<image>Name it.", "input": "", "output": "cat", "images": [jpeg(tmp_path, "a.jpg")]}]
    write(tmp_path, {"alp": ({"columns": {"prompt": "instruction", "response": "output", "images": "images"}}, rows)})
    train, _, _ = build(tokenizer, tmp_path, "alp")
    assert tokenizer.decode(train.samples.input_ids[0]).startswith(f"Human: {IMAGE_TOKEN * TPI}Name it.")


# ---- the_cauldron --------------------------------------------------------------------------

def test_cauldron_parquet_with_embedded_images(tokenizer, tmp_path):
    """the_cauldron's own parquet files embed each image's bytes (datasets' Image feature)."""
    import datasets
    jpeg(tmp_path, "e.jpg", (24, 8))
    features = datasets.Features({"images": datasets.List(datasets.Image()),
                                  "texts": datasets.List({"user": datasets.Value("string"),
                                                          "assistant": datasets.Value("string")})})
    datasets.Dataset.from_dict({"images": [[{"bytes": (tmp_path / "e.jpg").read_bytes(), "path": None}]],
                                "texts": [[{"user": "Q", "assistant": "A"}]]}, features=features
                               ).to_parquet(str(tmp_path / "c.parquet"))
    train, _, collate = build(tokenizer, tmp_path, "c.parquet", image_size=8, max_img_size=24)
    assert train.samples.views == [[4]]  # 3 tiles + the global view
    batch = collate([train[0]])
    assert batch["pixel_values"].shape == (4, 3, 8, 8)
    assert tokenizer.decode(batch["input_ids"][0]).startswith(f"Human: {IMAGE_TOKEN * 4 * TPI}Q\n")


def turns(*numbers: int) -> list[dict]:
    return [{"user": f"Q{n}", "assistant": f"A{n}"} for n in numbers]


def test_cauldron_ratings_drop_turns_and_rows(tokenizer, tmp_path, caplog):
    img = jpeg(tmp_path, "c.jpg")
    per_turn = [  # recognised by its columns: no formatting in dataset_info.json
        {"images": [img, img], "texts": turns(1, 2), "relevance_ratings": [5, 1], "formatting_ratings": [4, 4]},
        {"images": [img], "texts": turns(3), "relevance_ratings": [2], "formatting_ratings": [5]},
        {"images": [img], "texts": turns(4), "relevance_ratings": None, "formatting_ratings": None},
    ]
    scalar = [  # one rating per row, declared with formatting: cauldron
        {"images": [img], "texts": turns(5), "visual_dependency_ratings": 1},
        {"images": [img], "texts": turns(6, 7), "visual_dependency_ratings": 4},
    ]
    write(tmp_path, {"turns": ({}, per_turn), "rows": ({"formatting": "cauldron"}, scalar)})
    with caplog.at_level(logging.INFO, logger="ember"):
        train, _, _ = build(tokenizer, tmp_path, "turns,rows", relevance_min_rating=3, visual_dependency_min_rating=3)
    texts = {labelled_text(tokenizer, labels): tokenizer.decode(ids)
             for ids, labels in zip(train.samples.input_ids, train.samples.labels)}
    assert sorted(texts) == [f"A1{EOS}\n", f"A4{EOS}\n", f"A6{EOS}\nA7{EOS}\n"]
    # the images go before the first user turn; the low-rated second turn of row 1 is gone
    assert texts[f"A1{EOS}\n"] == f"Human: {IMAGE_TOKEN * 2 * TPI}Q1\nAssistant: A1{EOS}\n"
    assert texts[f"A6{EOS}\nA7{EOS}\n"] == f"Human: {IMAGE_TOKEN * TPI}Q6\nAssistant: A6{EOS}\nHuman: Q7\nAssistant: A7{EOS}\n"
    log = " ".join(r.getMessage() for r in caplog.records if r.name == "ember")
    assert "'turns': 2 of 3 samples kept; dropped: 1 by rating (2 turns" in log
    assert "'rows': 1 of 2 samples kept; dropped: 1 by rating (1 turns" in log


# ---- dropped samples -------------------------------------------------------------------------

def test_bad_image_stops_naming_the_file(tokenizer, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    write(tmp_path, {"b": (SHAREGPT, [chat("<image>?", "x", images=["broken.jpg"])])})
    with pytest.raises(BadImage, match=r"broken\.jpg is not an image file"):
        build(tokenizer, tmp_path, "b")


def test_bad_images_skip_drops_and_counts(tokenizer, tmp_path, caplog):
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    rows = [chat("<image>?", "gone", images=["missing.jpg"]), chat("<image>?", "bad", images=["broken.jpg"]),
            chat("<image>?", "kept", images=[jpeg(tmp_path, "ok.jpg")])]
    write(tmp_path, {"b": (SHAREGPT, rows)})
    with caplog.at_level(logging.INFO, logger="ember"):
        train, _, _ = build(tokenizer, tmp_path, "b", bad_images="skip")
    assert [labelled_text(tokenizer, x) for x in train.samples.labels] == [f"kept{EOS}\n"]
    log = " ".join(r.getMessage() for r in caplog.records if r.name == "ember")
    assert "1 of 3 samples kept" in log and "2 with a bad image" in log and "missing.jpg does not exist" in log


def test_too_many_images_and_too_long_are_dropped_and_counted(tokenizer, tmp_path, caplog):
    a = jpeg(tmp_path, "a.jpg")
    rows = [chat("<image><image>two", "x", images=[a, a]), chat("<image>" + "long " * 80, "y", images=[a]),
            chat("<image>short", "z", images=[a])]
    write(tmp_path, {"d": (SHAREGPT, rows)})
    with caplog.at_level(logging.INFO, logger="ember"):
        train, _, _ = build(tokenizer, tmp_path, "d", max_images_per_example=1, max_sample_length=40)
    assert [labelled_text(tokenizer, x) for x in train.samples.labels] == [f"z{EOS}\n"]
    log = " ".join(r.getMessage() for r in caplog.records if r.name == "ember")
    assert "1 with more than max_images_per_example=1 images, 1 longer than max_sample_length=40 tokens" in log


def test_no_usable_samples_is_one_clear_error(tokenizer, tmp_path):
    write(tmp_path, {"d": (SHAREGPT, [chat("<image>hi", "x", images=["gone.jpg"])])})
    with pytest.raises(ConfigError, match=r"dataset 'd' \(train\): no usable samples among 1 rows"):
        build(tokenizer, tmp_path, "d", bad_images="skip")


# ---- validation ------------------------------------------------------------------------------

def test_val_size_holds_out_rows_deterministically(tokenizer, tmp_path):
    a = jpeg(tmp_path, "a.jpg")
    write(tmp_path, {"v": (SHAREGPT, [chat("<image>n", f"answer{i}", images=[a]) for i in range(8)])})

    def answers(ds):
        return sorted(labelled_text(tokenizer, x) for x in ds.samples.labels)
    train, val, _ = build(tokenizer, tmp_path, "v", val_size=0.25, seed=3)
    again_train, again_val, _ = build(tokenizer, tmp_path, "v", val_size=0.25, seed=3)
    assert len(val.samples) == 2 and len(train.samples) == 6
    assert answers(val) == answers(again_val) and not set(answers(val)) & set(answers(train))
    _, other_val, _ = build(tokenizer, tmp_path, "v", val_size=2, seed=4)
    assert len(other_val.samples) == 2


# ---- the generated dataset -------------------------------------------------------------------

def load_generator():
    spec = importlib.util.spec_from_file_location("make_shapes_vqa", REPO / "examples" / "make_shapes_vqa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_shapes_dataset_reads_back(tokenizer, tmp_path):
    generator = load_generator()
    generator.main(["--out", str(tmp_path / "s"), "--train", "40", "--val", "20", "--size", "32", "--seed", "1"])
    root = tmp_path / "s"
    val_rows = json.loads((root / "val.json").read_text())
    with Image.open(root / val_rows[0]["images"][0]) as picture:
        assert picture.format == "JPEG" and picture.size == (32, 32)
    assert all(len(r["messages"][1]["content"].split()) == 1 for r in val_rows)
    cfg = TrainConfig(task="vlm", dataset="shapes_train", eval_dataset="shapes_val", dataset_dir=str(root),
                      seq_length=128)
    train, val, _ = build_vlm_datasets(cfg, tokenizer, ImageProcessor(16), IMAGE_TOKEN, TPI)
    assert len(train.samples) == 40 and len(val.samples) == 20

    chance = json.loads((root / "chance.json").read_text())
    assert chance["colour"]["accuracy"] == pytest.approx(1 / 6, abs=0.04)
    assert chance["shape"]["accuracy"] == pytest.approx(1 / 3, abs=0.05)
    assert chance["count"]["accuracy"] == pytest.approx(1 / 3, abs=0.05)
    assert chance["position"]["accuracy"] == pytest.approx(1 / 2, abs=0.05)
    assert 0.25 < chance["overall"]["accuracy"] < 0.45 and chance["overall"]["val_samples"] == 20
    assert sum(chance[k]["val_samples"] for k in ("colour", "shape", "count", "position")) == 20


def test_generator_is_deterministic_under_its_seed(tmp_path):
    generator = load_generator()
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generator.generate(tmp_path / name, n_train=10, n_val=5, size=32, seed=seed)
    read = lambda name, path: (tmp_path / name / path).read_bytes()  # noqa: E731
    assert read("a", "train.json") == read("b", "train.json")
    assert read("a", "images/val_00004.jpg") == read("b", "images/val_00004.jpg")
    assert read("a", "train.json") != read("c", "train.json")
