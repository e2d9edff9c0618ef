"""The attack corpus, part 1: bad configs, output folders, models and data, fed to `ember train` as
a user (or an unlucky day) would feed them.

Each case must end with exit code 2 and one last line `ember: error: ...` that names the problem
and where (the file, the key), with no traceback, and leave whatever was in output_dir as it
was (a run stopped before training leaves only its config.yaml in a folder it made). A few
inputs are not errors at all: a 50 MB line is a long document, and ember trains on it.

Cases marked proc=True run as real `ember` processes; the rest through ember.cli.main here.
Pickle payloads and custom code are in test_payloads.py.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from attack_kit import (Env, Setup, make_env, params, previous_run, processes, registry,  # noqa: F401
                        run_case, run_in_process, train_args)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
cases, case = registry()
LATIN1 = "café".encode("latin-1")  # what an editor that does not save UTF-8 writes


# ---- the config: refused before anything is built ---------------------------------------------
@case(proc=True)
def yaml_not_utf8(env: Env) -> Setup:
    path = env.dir / "run.yaml"
    path.write_bytes(b"learning_rate: 1e-3\nrun_name: " + LATIN1 + b"\n")
    return Setup(train_args(env.tiny(), path), env.dir / "out", [str(path), "UTF-8", "line 2"])


@case()
def yaml_is_a_list(env: Env) -> Setup:
    path = env.dir / "run.yaml"
    path.write_text("- max_steps: 2\n- learning_rate: 1e-3\n")
    return Setup(train_args(env.tiny(), path), env.dir / "out", [str(path), "mapping"])


@case()
def yaml_duplicate_key(env: Env) -> Setup:
    path = env.dir / "run.yaml"
    path.write_text("max_steps: 2\nlearning_rate: 1e-3\nmax_steps: 5\n")
    keys = env.tiny(max_steps=None)
    return Setup(train_args(keys, path), env.dir / "out", [str(path), "max_steps", "line 3"])


@case()
def yaml_duplicate_nested_key(env: Env) -> Setup:
    path = env.dir / "run.yaml"
    path.write_text("betas:\n  - 0.9\n  - 0.99\nlearning_rate: 1e-3\nlearning_rate: 3e-4\n")
    return Setup(train_args(env.tiny(), path), env.dir / "out", [str(path), "learning_rate"])


@case()
def cutoff_len_zero(env: Env) -> Setup:
    return Setup(train_args(env.tiny(cutoff_len=0)), env.dir / "out", ["cutoff_len", "0"])


@case()
def cutoff_len_negative(env: Env) -> Setup:
    return Setup(train_args(env.tiny(cutoff_len=-8)), env.dir / "out", ["cutoff_len", "-8"])


@case()
def batch_size_zero(env: Env) -> Setup:
    return Setup(train_args(env.tiny(per_device_train_batch_size=0)), env.dir / "out", ["per_device_train_batch_size"])


@case()
def batch_size_alias_zero(env: Env) -> Setup:
    keys = env.tiny(per_device_train_batch_size=None, batch_size=0)  # the seed's spelling
    return Setup(train_args(keys), env.dir / "out", ["per_device_train_batch_size"])


# ---- output_dir ---------------------------------------------------------------------------------
@case()
def output_dir_is_a_file(env: Env) -> Setup:
    out = env.dir / "out"
    out.write_text("my notes\n")
    return Setup(train_args(env.tiny(output_dir=str(out))), out, [str(out), "file"])


@case()
def output_dir_under_a_file(env: Env) -> Setup:
    """Unwritable even for root (these tests run as root, for whom chmod stops nothing): no
    folder can be made under a regular file (ENOTDIR)."""
    notes = env.dir / "notes.txt"
    notes.write_text("my notes\n")
    return Setup(train_args(env.tiny(output_dir=str(notes / "run"))), notes, [str(notes / "run"), "file"])


@case(proc=True)
def output_dir_unwritable(env: Env) -> Setup:
    """Unwritable even for root: procfs makes no folders on request, whatever the caller's rights
    (a read-only bind mount would need privileges these tests do not have)."""
    out = Path(f"/proc/ember-attack-{os.getpid()}/run")
    return Setup(train_args(env.tiny(output_dir=str(out))), out, [str(out), "cannot be written"])


@case()
def output_dir_holds_another_run(env: Env) -> Setup:
    out = env.dir / "out"
    shutil.copytree(env.previous_run, out)
    return Setup(train_args(env.tiny(output_dir=str(out))), out, [str(out), "overwrite_output_dir"])


@case()
def overwrite_with_bad_data_keeps_the_old_run(env: Env) -> Setup:
    out = env.dir / "out"
    shutil.copytree(env.previous_run, out)
    data = env.dir / "latin1.txt"
    data.write_bytes(b"a line\n" + LATIN1 + b"\n")
    keys = env.tiny(output_dir=str(out), overwrite_output_dir=True, dataset=str(data))
    return Setup(train_args(keys), out, [str(data), "UTF-8"])


# ---- models -------------------------------------------------------------------------------------
@case()
def model_path_missing(env: Env) -> Setup:
    missing = env.dir / "no-such-model"
    keys = env.tiny(model_config=None, model_name_or_path=str(missing))
    return Setup(train_args(keys), env.dir / "out", ["model_name_or_path", str(missing)])


@case()
def model_config_json_corrupt(env: Env) -> Setup:
    model = env.dir / "model"
    shutil.copytree(env.model, model)
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": 64,')
    keys = env.tiny(model_config=None, model_name_or_path=str(model))
    return Setup(train_args(keys), env.dir / "out", [str(model / "config.json")])


@case()
def model_config_file_not_utf8(env: Env) -> Setup:
    path = env.dir / "config.json"
    path.write_bytes(b'{"model_type": "llama", "name": "' + LATIN1 + b'"}')
    return Setup(train_args(env.tiny(model_config=str(path))), env.dir / "out", ["model_config", str(path), "UTF-8"])


@case()
def model_config_file_not_an_object(env: Env) -> Setup:
    path = env.dir / "config.json"
    path.write_text("42")
    return Setup(train_args(env.tiny(model_config=str(path))), env.dir / "out", ["model_config", str(path)])


@case()
def tokenizer_json_corrupt(env: Env) -> Setup:
    tokenizer = env.dir / "tokenizer"
    shutil.copytree(env.tokenizer, tokenizer)
    text = (tokenizer / "tokenizer.json").read_text()
    (tokenizer / "tokenizer.json").write_text(text[:len(text) // 2])
    keys = env.tiny(tokenizer_name_or_path=str(tokenizer))
    return Setup(train_args(keys), env.dir / "out", ["tokenizer_name_or_path", str(tokenizer)])


# ---- data ---------------------------------------------------------------------------------------
@case(proc=True)
def text_data_not_utf8(env: Env) -> Setup:
    data = env.dir / "corpus.txt"
    data.write_bytes(b"first line\nsecond line\nthird: " + LATIN1 + b"\n")
    return Setup(train_args(env.tiny(dataset=str(data))), env.dir / "out", [str(data), "line 3", "UTF-8"])


@case()
def jsonl_data_not_utf8(env: Env) -> Setup:
    """pyarrow's JSON reader takes the bytes unchecked: today's failure came deep in tokenisation."""
    data = env.dir / "corpus.jsonl"
    data.write_bytes(b'{"text": "fine"}\n{"text": "' + LATIN1 + b'"}\n')
    return Setup(train_args(env.tiny(dataset=str(data))), env.dir / "out", [str(data), "line 2", "UTF-8"])


@case()
def csv_data_not_utf8(env: Env) -> Setup:
    data = env.dir / "corpus.csv"
    data.write_bytes(b"text\nfine\n" + LATIN1 + b"\n")
    return Setup(train_args(env.tiny(dataset=str(data))), env.dir / "out", [str(data), "UTF-8"])


@case()
def dataset_info_not_utf8(env: Env) -> Setup:
    folder = env.dir / "data"
    folder.mkdir()
    (folder / "dataset_info.json").write_bytes(b'{"mine": {"file_name": "' + LATIN1 + b'.txt"}}')
    keys = env.tiny(dataset="mine", dataset_dir=str(folder))
    return Setup(train_args(keys), env.dir / "out", ["dataset_info.json", "UTF-8"])


def _alpaca(env: Env, rows, **keys) -> Setup:
    data = env.dir / "alpaca.json"
    data.write_text(json.dumps(rows))
    args = train_args(env.tiny(stage="sft", template="default", cutoff_len=64, dataset=str(data), **keys))
    return Setup(args, env.dir / "out", [str(data)])


@case()
def alpaca_instruction_is_a_number(env: Env) -> Setup:
    setup = _alpaca(env, [{"instruction": 7, "input": "", "output": "seven"}] * 4)
    setup.words += ["'instruction'", "int64", "not text"]
    return setup


@case()
def alpaca_instruction_is_a_list(env: Env) -> Setup:
    setup = _alpaca(env, [{"instruction": ["say", "hi"], "input": "", "output": "hi"}] * 4)
    setup.words += ["'instruction'", "lists", "not text"]
    return setup


@case()
def alpaca_output_is_null(env: Env) -> Setup:
    """A null answer used to become an empty one: the run trained on bare end-of-turn tokens."""
    setup = _alpaca(env, [{"instruction": "Say hi.", "input": "", "output": None}] * 4)
    setup.words = [str(env.dir / "alpaca.json"), "no usable samples", "null"]
    return setup


@case()
def alpaca_output_is_an_object(env: Env) -> Setup:
    setup = _alpaca(env, [{"instruction": "Say hi.", "input": "", "output": {"text": "hi"}}] * 4)
    setup.words += ["'output'", "not text"]
    return setup


@case()
def empty_data_file(env: Env) -> Setup:
    data = env.dir / "empty.json"
    data.write_text("")
    return Setup(train_args(env.tiny(dataset=str(data))), env.dir / "out", [str(data), "empty"])


@case()
def empty_json_array(env: Env) -> Setup:
    data = env.dir / "empty.json"
    data.write_text("[]\n")
    return Setup(train_args(env.tiny(stage="sft", template="default", dataset=str(data))), env.dir / "out",
                 [str(data), "empty"])


@case()
def blank_text_file(env: Env) -> Setup:
    data = env.dir / "blank.txt"
    data.write_text("\n   \n\t\n\n")
    return Setup(train_args(env.tiny(dataset=str(data))), env.dir / "out", [str(data), "empty"])


FIFTY_MB = 50 * 2**20


@case(proc=True)
def fifty_mb_one_line_json_array(env: Env) -> Setup:
    """A 50 MB file on one line, as json.dump writes it by default: a valid dataset, which ember
    reads whole (pyarrow, ~1 s) and trains on; max_samples keeps the encoding short."""
    rows, size = [], 2
    while size < FIFTY_MB:
        row = json.dumps({"instruction": f"Name item {len(rows)}.", "input": "", "output": f"Item {len(rows)}."})
        rows.append(row)
        size += len(row) + 2
    data = env.dir / "one_line.json"
    data.write_text("[" + ", ".join(rows) + "]")
    keys = env.tiny(stage="sft", template="default", cutoff_len=64, dataset=str(data), max_samples=16)
    return Setup(train_args(keys), env.dir / "out", expect="trains")


@case()
def fifty_mb_line_in_a_text_corpus(env: Env) -> Setup:
    """A 50 MB line is one long document: ember trains on it. Tokenising 50 MB costs about a
    CPU-minute whatever its shape (~1 s/MB), which this corpus does not pay: max_samples keeps
    the first document only, so the case checks that reading such a line neither hangs nor fails."""
    data = env.dir / "corpus.txt"
    words = (REPO / "examples" / "data" / "pydoc.txt").read_text(encoding="utf-8").split()[:2000]
    chunk = " ".join(words) + " "
    with open(data, "w", encoding="utf-8") as f:
        f.write(" ".join(words[:200]) + "\n")
        f.write(chunk * (FIFTY_MB // len(chunk) + 1) + "\n")
    keys = env.tiny(dataset=str(data), max_samples=1)
    return Setup(train_args(keys), env.dir / "out", expect="trains")


# ---- videos and images ----------------------------------------------------------------------------
def _video(env: Env, video_path: Path) -> list[str]:
    keys = dict(task="video_vae", model_config="causal_vae-tiny", video_path=str(video_path), video_num_frames=5,
                resolution=16, per_device_train_batch_size=1, max_steps=1, save_steps=0, disable_tqdm=True,
                output_dir=str(env.dir / "out"), perceptual_weight=0)  # no VGG16 weights offline
    return train_args(keys)


@case()
def video_zero_bytes(env: Env) -> Setup:
    folder = env.dir / "videos"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(b"")
    return Setup(_video(env, folder), env.dir / "out", [str(folder), "clip.mp4", "empty file"])


@case()
def video_text_renamed_mp4(env: Env) -> Setup:
    folder = env.dir / "videos"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a video at all\n" * 20)
    (folder / "notes.txt").rename(folder / "clip.mp4")
    return Setup(_video(env, folder), env.dir / "out", [str(folder), "clip.mp4"])


@case()
def video_list_not_utf8(env: Env) -> Setup:
    listing = env.dir / "videos.json"
    listing.write_bytes(b'["' + LATIN1 + b'.mp4"]')
    return Setup(_video(env, listing), env.dir / "out", [str(listing), "UTF-8"])


@case()
def video_list_malformed_json(env: Env) -> Setup:
    listing = env.dir / "videos.json"
    listing.write_text('["a.mp4", "b.mp4"')
    return Setup(_video(env, listing), env.dir / "out", [str(listing), "JSON"])


@case(proc=True)
def vlm_truncated_jpeg(env: Env) -> Setup:
    sys.path.insert(0, str(REPO / "examples"))
    from make_shapes_vqa import generate
    shapes = env.dir / "shapes"
    generate(shapes, n_train=4, n_val=1, size=32, seed=0)
    image = shapes / json.loads((shapes / "train.json").read_text())[0]["images"][0]
    body = image.read_bytes()
    image.write_bytes(body[:len(body) // 2])
    keys = dict(task="vlm", vision_config="siglip-tiny", mp_pixel_shuffle_factor=4, model_config="llama-tiny",
                tokenizer_name_or_path=str(REPO / "examples" / "data" / "tokenizer"), template="default",
                dataset="shapes_train", dataset_dir=str(shapes), seq_length=128, per_device_train_batch_size=2,
                max_steps=1, save_steps=0, disable_tqdm=True, output_dir=str(env.dir / "out"))
    return Setup(train_args(keys), env.dir / "out", [str(image), "cannot be decoded"])


# ---- running the corpus ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", params(cases))
def test_bad_input(name, make_env, processes, run_in_process):  # noqa: F811
    run_case(cases[name], name, make_env, processes, run_in_process)
