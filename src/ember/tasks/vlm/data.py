"""Vision-language data: rows with images → token ids, labels and the images each sample needs.

Two row forms, read through the dataset registry (dataset_info.json) or from a file path:

* LLaMA-Factory's multimodal sharegpt (or alpaca): chat turns whose text holds one `<image>`
  marker per image, in order, and an `images` column listing the files (relative to
  dataset_dir, or absolute). Marker count and image count must agree.
* the_cauldron: `images` plus `texts`, a list of {"user", "assistant"} turns; the images go in
  front of the first user turn, as nanoVLM puts them. Optional `*_ratings` columns (one rating
  per turn, or one for the whole row) drop the turns rated below the matching *_min_rating;
  a row left without turns is dropped, as in nanoVLM's VQADataset.

The form is `formatting` in dataset_info.json (sharegpt, alpaca or cauldron). For an entry
without formatting, or a plain path, it is guessed from the columns: `texts` → cauldron,
`messages`/`conversations` → sharegpt (role/content tags are recognised on their own).

Each image is opened once here, to find a missing or corrupt file up front and to learn its
size, hence its number of views; its pixels are loaded again, lazily, by the packed dataset.
In the ids an image becomes views × tokens_per_image copies of the image token; those never
carry loss. Rows are named 1-based, counted in the file (folders: across its files in order).
"""
from __future__ import annotations

import logging
import sys
from collections import Counter

import datasets
import numpy as np

from ...config.errors import ConfigError
from ...data.labels import IGNORE
from ...data.readers import read_dataset
from ...data.registry import DatasetSpec, resolve_datasets
from ...data.sft import DROPPED, check_columns, encode_conversation, to_messages
from ...data.templates import ensure_chat_template
from .images import BadImage, ImageProcessor, open_image
from .packing import VLMSamples, build_packed, collate_vlm
from .rows import MARKER, RATINGS, detect_form, image_refs, rating, undecoded_images

log = logging.getLogger("ember")


def build_vlm_datasets(cfg, tokenizer, processor: ImageProcessor, image_token: str, tokens_per_image: int,
                       layout=None):
    """(train, validation or None, collate); validation from eval_dataset or val_size. layout: how an
    image's tokens are laid out (None: a plain run of image tokens; nanovlm_inputs.NanoVLMLayout)."""
    if not getattr(tokenizer, "chat_template", None):
        ensure_chat_template(tokenizer, cfg.template)
    image_token_id = _image_token_id(tokenizer, image_token)
    seq_length = cfg.seq_length or cfg.cutoff_len
    encoder = RowEncoder(cfg, tokenizer, processor, image_token, image_token_id, tokens_per_image, seq_length, layout)
    train_parts = _read(cfg.dataset, cfg)
    val_parts = _read(cfg.eval_dataset, cfg) if cfg.eval_dataset else None
    if val_parts is None and cfg.val_size > 0:
        train_parts, val_parts = split_validation(train_parts, cfg.val_size, cfg.seed)
    datasets_ = []
    for parts, label in ((train_parts, "train"), (val_parts, "validation")):
        if parts is None:
            datasets_.append(None)
            continue
        samples = VLMSamples()
        for spec, ds, rows in parts:
            samples.extend(encoder.encode(ds, spec, rows, label))
        datasets_.append(build_packed(samples, seq_length, cfg.max_images_per_knapsack, processor, label, cfg.seed))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return datasets_[0], datasets_[1], collate_vlm(pad_id, processor.image_size)


def _image_token_id(tokenizer, image_token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    probe = tokenizer(f"a{image_token}{image_token}b", add_special_tokens=False)["input_ids"]
    if token_id is None or token_id == tokenizer.unk_token_id or probe.count(token_id) != 2:
        raise ConfigError(f"the tokenizer does not encode the image token '{image_token}' as one token of its own; "
                          "add it with tokenizer.add_special_tokens before building the data")
    return token_id


def _read(names: str, cfg) -> list[tuple[DatasetSpec, datasets.Dataset, list[int]]]:
    parts = []
    for spec in resolve_datasets(names, cfg.dataset_dir):
        ds = read_dataset(spec, cfg.max_samples)
        parts.append((spec, ds, list(range(len(ds)))))
    return parts


def split_validation(parts: list, val_size: float, seed: int) -> tuple[list, list]:
    """Hold out rows (a fraction of each dataset, or a count shared in proportion to size)."""
    total = sum(len(rows) for _, _, rows in parts)
    if val_size >= 1 and int(val_size) >= total:
        raise ConfigError(f"val_size {val_size:g} leaves no training samples (there are {total})")
    train, val = [], []
    for spec, ds, rows in parts:
        share = val_size * len(rows) if val_size < 1 else val_size * len(rows) / total
        held = min(len(rows) - 1, max(1, round(share)))
        order = np.random.default_rng(seed).permutation(len(rows))
        train.append((spec, ds, sorted(rows[i] for i in order[held:])))
        val.append((spec, ds, sorted(rows[i] for i in order[:held])))
    return train, val


class RowEncoder:
    """Turns the rows of one dataset into samples, counting every row it drops and why."""

    def __init__(self, cfg, tokenizer, processor, image_token, image_token_id, tokens_per_image, seq_length,
                 layout=None):
        self.cfg, self.tokenizer, self.processor, self.layout = cfg, tokenizer, processor, layout
        self.image_token, self.image_token_id, self.tokens_per_image = image_token, image_token_id, tokens_per_image
        self.max_length = min(cfg.max_sample_length or seq_length, seq_length)  # longer cannot be packed
        self.grids: dict[str, tuple[int, int] | BadImage] = {}  # one look per file, however many rows use it

    def encode(self, ds: datasets.Dataset, spec: DatasetSpec, rows: list[int], label: str) -> VLMSamples:
        form, spec = detect_form(ds, spec)
        image_col = spec.columns.get("images") or ("images" if "images" in ds.column_names else None)
        if form == "cauldron":
            wanted = (image_col or "images", spec.columns.get("texts", "texts"))
            missing = [c for c in wanted if c not in ds.column_names]
            if missing:
                raise ConfigError(f"dataset '{spec.name}' (cauldron) has no column '{missing[0]}' "
                                  f"(it has: {', '.join(ds.column_names)})")
        else:
            check_columns(ds, spec)
            if image_col and image_col not in ds.column_names:
                raise ConfigError(f"dataset '{spec.name}' has no images column '{image_col}' "
                                  f"(it has: {', '.join(ds.column_names)})")
        ds = undecoded_images(ds, image_col)
        samples, counts, first_bad = VLMSamples(), Counter(), None
        for row_index in rows:
            row = ds[row_index]
            where = f"dataset '{spec.name}' row {row_index + 1}"
            images = image_refs(row.get(image_col) if image_col else None, spec, self.cfg.dataset_dir, where)
            if form == "cauldron":
                messages, why = self._cauldron_messages(row, spec, len(images), counts, where)
            else:
                messages, why = self._chat_messages(row, spec, len(images), where), "malformed"
            if messages is None:
                counts[why] += 1
                continue
            if len(images) > self.cfg.max_images_per_example:
                counts["images"] += 1
                continue
            try:
                grids = [self._grid(source, name) for source, name in images]
            except BadImage as err:
                if self.cfg.bad_images == "error":
                    raise
                counts["bad_image"] += 1
                first_bad = first_bad or str(err)
                continue
            ids, labels, status = encode_conversation(messages, self.tokenizer, sys.maxsize,
                                                      self.cfg.train_on_prompt, self.cfg.mask_history)
            if status == DROPPED:
                counts["no_answer"] += 1
                continue
            ids, labels = self._expand(ids, labels, grids, where)
            if len(ids) > self.max_length:
                counts["length"] += 1
                continue
            samples.add(ids, labels, images, [1 if r * c == 1 else 1 + r * c for r, c in grids])
        self._report(spec, label, len(rows), len(samples), counts, first_bad)
        return samples

    def _chat_messages(self, row, spec, n_images, where) -> list[dict] | None:
        messages = to_messages(row, spec)
        if messages is None:
            return None
        markers = sum(m["content"].count(MARKER) for m in messages)
        if markers != n_images:
            raise ConfigError(f"{where}: the text has {markers} {MARKER} markers but the row lists {n_images} "
                              f"images; put one {MARKER} where each image goes")
        return [{**m, "content": self._with_image_tokens(m["content"])} for m in messages]

    def _cauldron_messages(self, row, spec, n_images, counts, where) -> tuple[list[dict] | None, str]:
        turns = row.get(spec.columns.get("texts", "texts")) or []
        messages, rated_out = [], 0
        for index, turn in enumerate(turns):
            if not isinstance(turn, dict) or turn.get("user") is None or turn.get("assistant") is None:
                continue
            if any(rating(row.get(col), index, col, where) < getattr(self.cfg, key) for col, key in RATINGS.items()):
                rated_out += 1
                continue
            messages += [{"role": "user", "content": self._strip(str(turn["user"]))},
                         {"role": "assistant", "content": self._strip(str(turn["assistant"]))}]
        counts["rated_turns"] += rated_out
        if not messages:
            return None, "rating" if rated_out else "malformed"
        messages[0]["content"] = self.image_token * n_images + messages[0]["content"]
        return messages, ""

    def _strip(self, text: str) -> str:
        """Text must not smuggle in image tokens that have no image behind them."""
        return text.replace(self.image_token, "") if self.image_token != MARKER else text

    def _with_image_tokens(self, text: str) -> str:
        return self._strip(text).replace(MARKER, self.image_token)

    def _grid(self, source, name: str) -> tuple[int, int]:
        """(rows, cols) of tiles: one view when 1 × 1, else a global view and the tiles."""
        key = name if isinstance(source, bytes) else source
        if key not in self.grids:
            try:
                self.grids[key] = self.processor.grid(*open_image(source, name).size)
            except BadImage as err:
                self.grids[key] = err
        found = self.grids[key]
        if isinstance(found, BadImage):
            raise found
        return found

    def _expand(self, ids: list[int], labels: list[int], grids: list[tuple[int, int]], where: str):
        """One image token per image → views × tokens_per_image (or the layout's ids), none of them a target."""
        ids, labels = np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)
        at = np.flatnonzero(ids == self.image_token_id)
        if len(at) != len(grids):
            raise ConfigError(f"{where}: {len(grids)} images but {len(at)} image tokens after the chat template; "
                              "the template drops or adds text around the image token")
        if self.layout is not None:
            return self.layout.expand(ids, labels, at, grids)
        views = [1 if r * c == 1 else 1 + r * c for r, c in grids]
        repeats = np.ones(len(ids), dtype=np.int64)
        repeats[at] = np.asarray(views, dtype=np.int64) * self.tokens_per_image
        labels[at] = IGNORE
        return np.repeat(ids, repeats), np.repeat(labels, repeats)

    def _report(self, spec, label, rows, kept, counts, first_bad):
        parts = [f"{counts['rating']} by rating ({counts['rated_turns']} turns below the *_min_rating keys)",
                 f"{counts['images']} with more than max_images_per_example={self.cfg.max_images_per_example} images",
                 f"{counts['length']} longer than max_sample_length={self.max_length} tokens",
                 f"{counts['bad_image']} with a bad image"]
        parts += [f"{counts[k]} {what}" for k, what in (("malformed", "malformed"), ("no_answer", "without an answer"))
                  if counts[k]]
        if kept == 0:
            raise ConfigError(f"dataset '{spec.name}' ({label}): no usable samples among {rows} rows "
                              f"(dropped: {', '.join(parts)})")
        extra = f"; first bad image: {first_bad}" if first_bad else ""
        log.info("%s '%s': %d of %d samples kept; dropped: %s%s", label, spec.name, kept, rows, ", ".join(parts), extra)
