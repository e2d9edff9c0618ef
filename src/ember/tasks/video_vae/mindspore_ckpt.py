"""MindSpore .ckpt files (mindone's CausalVAE weights, seed 000's causal_vae_488_init.ckpt) read
without MindSpore: such a file is one protobuf message,

    Checkpoint  { repeated Value value = 1; }
    Value       { string tag = 1; TensorProto tensor = 2; }
    TensorProto { repeated int64 dims = 1; string tensor_type = 2; bytes tensor_content = 3; }

(MindSpore's checkpoint.proto), parsed here with the protobuf package from that schema, declared
in code. Names are mapped to torch's as mindone's convert_vae.py maps them the other way: norm
layers' .gamma/.beta are .weight/.bias (and BatchNorm's moving statistics running ones).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from ...config.errors import ConfigError

DTYPES = {"Float32": torch.float32, "Float16": torch.float16, "BFloat16": torch.bfloat16, "Float64": torch.float64,
          "Int8": torch.int8, "Int16": torch.int16, "Int32": torch.int32, "Int64": torch.int64,
          "UInt8": torch.uint8, "Bool": torch.bool}
#: MindSpore's parameter suffixes that torch spells otherwise
SUFFIXES = {".gamma": ".weight", ".beta": ".bias", ".moving_mean": ".running_mean", ".moving_variance": ".running_var"}


@lru_cache(maxsize=1)
def _checkpoint_class():
    proto = descriptor_pb2.FileDescriptorProto(name="ember_mindspore_checkpoint.proto", package="ember_ms",
                                               syntax="proto2")
    label, types = descriptor_pb2.FieldDescriptorProto, descriptor_pb2.FieldDescriptorProto

    def message(name: str, *spec):
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, repeated, type_name in spec:
            msg.field.add(name=field_name, number=number, type=kind, type_name=type_name,
                          label=label.LABEL_REPEATED if repeated else label.LABEL_OPTIONAL)

    message("TensorProto", ("dims", 1, types.TYPE_INT64, True, None), ("tensor_type", 2, types.TYPE_STRING, False, None),
            ("tensor_content", 3, types.TYPE_BYTES, False, None))
    message("Value", ("tag", 1, types.TYPE_STRING, False, None),
            ("tensor", 2, types.TYPE_MESSAGE, False, ".ember_ms.TensorProto"))
    message("Checkpoint", ("value", 1, types.TYPE_MESSAGE, True, ".ember_ms.Value"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("ember_ms.Checkpoint"))


def torch_name(mindspore_name: str) -> str:
    for suffix, torch_suffix in SUFFIXES.items():
        if mindspore_name.endswith(suffix):
            return mindspore_name[: -len(suffix)] + torch_suffix
    return mindspore_name


def is_mindspore_checkpoint(path: Path) -> bool:
    """A torch file is a zip (or, before torch 1.6, a pickle starting 0x80); a MindSpore one is a
    protobuf whose first field is `value` (tag byte 0x0a)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:1] == b"\x0a"


def read_mindspore_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """{torch name: tensor} of every tensor in the file (torch names: see torch_name)."""
    checkpoint = _checkpoint_class()()
    try:
        checkpoint.ParseFromString(Path(path).read_bytes())
    except DecodeError as err:
        raise ConfigError(f"cannot read {path} as a MindSpore checkpoint: {err}") from None
    tensors = {}
    for value in checkpoint.value:
        proto = value.tensor
        dtype = DTYPES.get(proto.tensor_type)
        if dtype is None:
            raise ConfigError(f"{path}: tensor {value.tag} has MindSpore type {proto.tensor_type!r}, "
                              f"which ember does not read (known: {', '.join(DTYPES)})")
        flat = torch.frombuffer(bytearray(proto.tensor_content), dtype=dtype) if proto.tensor_content \
            else torch.empty(0, dtype=dtype)
        shape = tuple(proto.dims)
        if flat.numel() != (torch.Size(shape).numel() if shape else 1):
            raise ConfigError(f"{path}: tensor {value.tag} holds {flat.numel()} values for shape {list(shape)}; "
                              "the file is damaged")
        tensors[torch_name(value.tag)] = flat.reshape(shape).clone()
    if not tensors:
        raise ConfigError(f"{path} holds no tensors (not a MindSpore checkpoint?)")
    return tensors
