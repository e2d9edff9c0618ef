"""Reading DCP (torch.distributed.checkpoint) shards without ever unpickling code.

torch's FileSystemReader reads `.metadata` with plain `pickle.load`, and its DefaultLoadPlanner
reads every non-tensor item (an optimizer's step count, a learning rate) with
torch.load with weights_only off. A checkpoint is a file users share and download like model
weights, so either would run whatever a crafted file asks. Here the metadata goes through an
unpickler that admits only the classes DCP itself writes there, and non-tensor items through
`torch.load(weights_only=True)`; anything else is refused with the file named.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from .format import CheckpointError

# (module, name) pairs DCP's metadata pickle may name: its own dataclasses, the storage
# index, and the torch values a tensor's properties hold. Nothing here can run code.
_METADATA_MODULE = "torch.distributed.checkpoint.metadata"  # dataclasses and enums only
_ALLOWED = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
            ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
            ("pathlib", "PureWindowsPath"), ("builtins", "set"), ("builtins", "frozenset")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        value = None
        if module == _METADATA_MODULE or (module, name) in _ALLOWED:
            value = super().find_class(module, name)
        elif module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format,
                                                                            torch.layout)):
            value = getattr(torch, name)
        if value is None or (module == _METADATA_MODULE and not isinstance(value, type)):
            raise pickle.UnpicklingError(f"{module}.{name} is not something DCP writes")
        return value


def read_metadata(path: Path) -> Metadata:
    """A DCP `.metadata` file, refusing any pickle that names more than DCP's own classes."""
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except Exception as err:  # noqa: BLE001 - pickle raises many types for a malformed file
        raise CheckpointError(f"refused to read {path}: {err}; a DCP checkpoint's metadata holds only DCP's own "
                              "classes, so this file was not written by DCP or was tampered with") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"refused to read {path}: it holds a {type(metadata).__name__}, not DCP metadata")
    return metadata


class SafeReader(FileSystemReader):
    def read_metadata(self, *args, **kwargs) -> Metadata:
        metadata = read_metadata(Path(self.path) / ".metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"refused a DCP item '{read_item.dest_index.fqn}': it holds Python objects beyond "
                                  f"plain values ({str(err).splitlines()[0]})") from None
        super().load_bytes(read_item, _as_stream(obj))


def _as_stream(obj) -> io.BytesIO:
    """The parent class reads its own torch.load from a stream: hand it the checked value re-saved."""
    stream = io.BytesIO()
    torch.save(obj, stream)
    stream.seek(0)
    return stream
