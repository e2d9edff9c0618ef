"""Files → `datasets.Dataset` rows, with errors that name the file (and line) at fault."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from ..config.errors import ConfigError
from .registry import DatasetSpec

log = logging.getLogger("ember")

BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
TEXT_BUILDERS = ("text", "json", "csv")  # files that are text, so a bad byte has a line to point at


def data_files(path: Path) -> tuple[str, list[str]]:
    """The builder and the files of a dataset path (a file, or a folder of files of one kind)."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in BUILDERS) if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"{path} holds no data files ({', '.join(BUILDERS)})")
    kinds = {BUILDERS.get(f.suffix) for f in files}
    if None in kinds:
        raise ConfigError(f"{files[0]}: unsupported file type '{files[0].suffix}'; use one of {', '.join(BUILDERS)}")
    if len(kinds) > 1:
        raise ConfigError(f"{path} mixes file types ({', '.join(sorted(kinds))}); keep one kind per dataset")
    return kinds.pop(), [str(f) for f in files]


def find_json_error(files: list[str]) -> str | None:
    """Scan JSON/JSONL files for the first malformed line (only after datasets failed to read them)."""
    for name in files:
        text = Path(name).read_text(encoding="utf-8", errors="replace")
        if text.lstrip().startswith(("[", "{")) and not name.endswith(".jsonl"):
            try:
                json.loads(text)
                continue
            except json.JSONDecodeError as err:
                if text.lstrip().startswith("["):
                    return f"{name} line {err.lineno}: {err.msg}"
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as err:
                    return f"{name} line {number}: malformed JSON ({err.msg})"
    return None


def find_encoding_error(files: list[str]) -> str | None:
    """Where these files first stop being UTF-8, as "file line N ..." (read only after a failure,
    in binary, line by line)."""
    for name in files:
        with open(name, "rb") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as err:
                    return (f"{name} line {number} is not UTF-8 text (byte 0x{line[err.start]:02x} at column "
                            f"{err.start + 1}); save the file as UTF-8")
    return None


def check_utf8(ds: datasets.Dataset, spec: DatasetSpec, builder: str, files: list[str]) -> None:
    """pyarrow's JSON reader takes bytes that are not UTF-8 into string columns unchecked; they
    would surface later as a decode error deep inside tokenisation. Arrow's full validation
    checks every string once, in memory-mapped data, at about the speed of reading it."""
    try:
        ds.data.table.validate(full=True)
    except pa.ArrowInvalid as err:
        where = (find_encoding_error(files) if builder in TEXT_BUILDERS else None) or \
            f"{spec.path} holds text that is not UTF-8 ({err})"
        raise ConfigError(f"dataset '{spec.name}': {where}") from None


def _holds_rows(name: str, builder: str) -> bool:
    """Cheap emptiness check, so an empty file gets a sentence rather than a library error.
    Reads only until it has seen enough lines: a large corpus is not read twice at start-up."""
    path = Path(name)
    if path.stat().st_size == 0:
        return False
    if builder not in ("text", "json", "csv"):
        return True
    needed = 2 if builder == "csv" else 1  # a csv needs a row besides its header
    seen = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.strip():
                seen.append(line.strip())
                if len(seen) > needed:
                    return True
    if builder == "json" and len(seen) == 1 and seen[0].replace(" ", "") in ("[]", "{}"):
        return False
    return len(seen) >= needed


def read_dataset(spec: DatasetSpec, max_samples: int | None = None, seed: int = 42) -> datasets.Dataset:
    """The dataset's rows: num_samples of them drawn as LLaMA-Factory draws them (seed: the run's),
    then the first max_samples."""
    builder, files = data_files(spec.path)
    for name in files:
        if not Path(name).is_file():
            raise ConfigError(f"dataset '{spec.name}': file not found: {name}")
    if not any(_holds_rows(name, builder) for name in files):
        raise ConfigError(f"dataset '{spec.name}' ({spec.path}) is empty")
    try:
        ds = datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as err:  # datasets wraps parser errors in several types; find the real cause
        where = find_encoding_error(files) if builder in TEXT_BUILDERS else None
        if where is None and builder == "json":
            where = find_json_error(files)
        raise ConfigError(f"dataset '{spec.name}': {where or f'cannot read {spec.path}: {_first_line(err)}'}") from None
    check_utf8(ds, spec, builder, files)
    if len(ds) == 0:
        raise ConfigError(f"dataset '{spec.name}' ({spec.path}) is empty")
    if spec.num_samples is not None:
        ds = ds.select(sample_indices(len(ds), spec.num_samples, seed))
    return ds.select(range(max_samples)) if max_samples is not None and max_samples < len(ds) else ds


def sample_indices(rows: int, wanted: int, seed: int) -> list[int]:
    """dataset_info's num_samples, as LLaMA-Factory draws them: a seeded permutation of the rows
    (each row once) cut to num_samples; past the number of rows, rows drawn again at random."""
    rng = np.random.RandomState(seed)
    indices = rng.permutation(rows)[:wanted]
    if wanted > rows:
        indices = np.concatenate([indices, rng.choice(rows, wanted - rows)])
    return indices.tolist()


def _first_line(err: Exception) -> str:
    """A library error as one line; datasets' own text ("An error occurred while generating the
    dataset") says less than the exception it wraps, so that one is named too."""
    cause = err.__cause__ or err.__context__
    text = f"{err}: {cause}" if cause is not None and str(cause) not in str(err) else str(err)
    return (text.strip().splitlines() or [type(err).__name__])[0]


def text_column(ds: datasets.Dataset, spec: DatasetSpec) -> datasets.Dataset:
    """The one column of raw text that pretraining reads, renamed to 'text'."""
    column = spec.columns.get("prompt") or ("text" if "text" in ds.column_names else None)
    if column is None or column not in ds.column_names:
        wanted = f"column '{column}'" if column else "'text' column"
        raise ConfigError(f"dataset '{spec.name}' has no {wanted} (it has: {', '.join(ds.column_names)}); "
                          "name the text column with columns: {\"prompt\": ...} in dataset_info.json")
    ds = ds.select_columns([column])
    return ds.rename_column(column, "text") if column != "text" else ds
