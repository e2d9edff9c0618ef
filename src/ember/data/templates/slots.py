"""A template's slots: the pieces one role's turn is written with.

A piece is text (with `{{content}}` where the message goes), BOS or EOS (the tokenizer's own
token, whatever it is after the template changed it), or Token("<|user|>") (one vocabulary entry
by name). Each piece is tokenised on its own, as LLaMA-Factory does: tokenising the joined
string instead can merge characters across a boundary into other ids.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Special:
    """The tokenizer's BOS or EOS token (resolved at encoding time)."""
    attribute: str  # "bos_token" or "eos_token"


@dataclass(frozen=True)
class Token:
    """One token looked up by its name in the vocabulary."""
    name: str


BOS, EOS = Special("bos_token"), Special("eos_token")
Slots = tuple  # of str | Special | Token


def slots(value) -> Slots:
    """A declaration's slot: one string, or a tuple of pieces."""
    return (value,) if isinstance(value, str) else tuple(value)


def fill(pieces: Slots, **values: str) -> list:
    """Each text piece with {{name}} replaced by its value (the first occurrence, as LLaMA-Factory)."""
    out = []
    for piece in pieces:
        if isinstance(piece, str):
            for name, value in values.items():
                piece = piece.replace("{{" + name + "}}", value, 1)
        out.append(piece)
    return out


def to_ids(tokenizer, pieces: list) -> list[int]:
    ids: list[int] = []
    for piece in pieces:
        if isinstance(piece, str):
            if piece:
                ids += tokenizer.encode(piece, add_special_tokens=False)
        elif isinstance(piece, Token):
            ids.append(tokenizer.convert_tokens_to_ids(piece.name))
        else:  # BOS/EOS: nothing when the tokenizer has no such token
            token_id = getattr(tokenizer, f"{piece.attribute}_id")
            if token_id is not None:
                ids.append(token_id)
    return ids


def text_of(pieces: list, tokenizer) -> str:
    """The pieces as one string (BOS/EOS by their text): what a chat_template would write."""
    out = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
        elif isinstance(piece, Token):
            out.append(piece.name)
        elif getattr(tokenizer, f"{piece.attribute}_id") is not None:
            out.append(getattr(tokenizer, piece.attribute))
    return "".join(out)
