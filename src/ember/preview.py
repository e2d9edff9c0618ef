"""`ember preview CONFIG.yaml [key=value ...] [--n N] [--json]`: the first training samples exactly
as the model will see them, so a template or masking mistake shows before a GPU-day is spent.

The samples are built by the training code itself (the LM task's reader, template and encoding,
with max_samples, cutoff_len and the template keys of the config), in dataset order: before the
validation split, shuffling and packing. Only the tokenizer is loaded (model_name_or_path may be
a folder holding just a tokenizer). Pretraining blocks are cut from the first batches of 1000
documents as a one-process run cuts them. The preference stages show each pair's chosen and
rejected sequences (kto: the sample and its KL sample), as their data code builds them.
"""
from __future__ import annotations

import json

import datasets

from .config.errors import ConfigError
from .data.labels import IGNORE
from .data.media import refuse_media

NO_LOSS_OPEN, NO_LOSS_CLOSE = "«", "»"


def preview_samples(cfg, n: int) -> tuple[object, list[dict]]:
    """(the tokenizer, the first n samples): each a dict of its sequences' input_ids and labels
    (pt, sft: input_ids, labels; preference pairs: chosen_* and rejected_*; kto: the sample, its
    KL sample kl_* and kto_tag)."""
    if cfg.task != "causal_lm":
        raise ConfigError(f"ember preview shows the samples of task causal_lm (got task {cfg.task})")
    if cfg.dataset is None:
        raise ConfigError("no training data: set dataset (a name in dataset_info.json or a path)")
    from .data.pretrain import BATCH_DOCUMENTS
    from .tasks import build_task
    task = build_task(cfg)  # loads the tokenizer and the template only; the model is built later, in training
    samples: list[dict] = []
    for spec, ds in task.read_datasets(cfg.dataset):
        refuse_media(ds, spec)  # as training does
        start = 0
        while len(samples) < n and start < len(ds):  # encode only as many rows as the preview needs
            rows = ds.select(range(start, min(start + BATCH_DOCUMENTS, len(ds))))
            start += len(rows)
            samples += _encode_stretch(task, cfg, spec, rows)
    return task.tokenizer, samples[:n]


def _encode_stretch(task, cfg, spec, rows) -> list[dict]:
    """The samples of a stretch of rows, encoded by training's own functions."""
    from .data.preference import build_pair_dataset
    from .data.pretrain import build_blocks
    from .data.readers import text_column
    from .data.sft import encode_sft
    if cfg.stage == "pt":
        blocks = build_blocks(text_column(rows, spec), task.tokenizer, cfg, "preview", cfg.template)
        return [{"input_ids": ids, "labels": ids} for ids in (blocks[i].tolist() for i in range(len(blocks)))]
    try:
        if task.pairs is not None:
            pairs = build_pair_dataset([(spec, rows)], task.template, task.tokenizer, cfg, "preview")
            return [pairs[i] for i in range(len(pairs))]
        encoded = encode_sft(rows, spec, task.template, task.tokenizer, cfg)
    except ConfigError as err:
        if "no usable" in str(err):  # every row of this stretch dropped: look further
            return []
        raise
    return [{"input_ids": ids, "labels": labels} for ids, labels in zip(encoded["input_ids"], encoded["labels"])]


def marked_text(tokenizer, ids: list[int], labels: list[int]) -> str:
    """The sample's text, each stretch that carries no loss between « and »."""
    out, run, trained = [], [], None
    for token, label in zip(ids, labels):
        is_trained = label != IGNORE
        if run and is_trained != trained:
            out.append(_span(tokenizer, run, trained))
            run = []
        run.append(token)
        trained = is_trained
    if run:
        out.append(_span(tokenizer, run, trained))
    return "".join(out)


def _span(tokenizer, ids: list[int], trained: bool) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return text if trained else f"{NO_LOSS_OPEN}{text}{NO_LOSS_CLOSE}"


def render(tokenizer, samples: list[dict], as_json: bool) -> str:
    if as_json:
        return "".join(json.dumps(sample) + "\n" for sample in samples)
    blocks = [f"text within {NO_LOSS_OPEN} {NO_LOSS_CLOSE} carries no loss"]
    for number, sample in enumerate(samples, 1):
        tag = f" ({'desirable' if sample['kto_tag'] else 'undesirable'})" if "kto_tag" in sample else ""
        for side in (name[:-len("input_ids")] for name in sample if name.endswith("input_ids")):
            ids, labels = sample[f"{side}input_ids"], sample[f"{side}labels"]
            what = f" {side.rstrip('_')}" if side else tag
            trained = sum(label != IGNORE for label in labels)
            blocks.append(f"--- sample {number}{what}: {len(ids)} tokens, {trained} with loss ---\n"
                          f"{marked_text(tokenizer, ids, labels)}")
    return "\n".join(blocks) + "\n"


def run_preview(args: list[str], n: int, as_json: bool) -> str:
    from .config.loader import load_config
    cfg = load_config(args)
    datasets.disable_progress_bars()
    tokenizer, samples = preview_samples(cfg, n)
    return render(tokenizer, samples, as_json)
