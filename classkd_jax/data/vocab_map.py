"""Vocabulary entries two tokenizers spell identically (the exact-match KL's support).

A token's spelling is the bytes it stands for: byte-level BPE tokens through
GPT-2's byte-to-unicode table, SentencePiece pieces with '▁' as a space and
byte-fallback pieces '<0xNN>' as that byte, other tokens as their UTF-8.
Special tokens are matched by role (BOS to BOS, EOS to EOS, ...), not by text,
since families spell them differently ('</s>', '<|endoftext|>').

A side may spell one string with several ids: with byte fallback, 'k' is both
the piece 'k' and the byte piece '<0x6B>'. The id that stands for the string
is the one its tokenizer emits for it (a trained model puts its probability
there, and next to none on the other), else an id that is not a byte piece.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence

import numpy as np

__all__ = [
    "first_token_map",
    "prepends_space",
    "shared_vocabulary",
    "token_bytes",
    "valid_utf8_prefix",
]

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else ""
    return '"ByteLevel"' in text


def token_bytes(tokenizer) -> list[bytes | None]:
    """Per id (`len(tokenizer)` of them) the bytes it spells; None for special tokens."""
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    decoder = _byte_decoder() if _is_byte_level(tokenizer) else None
    out: list[bytes | None] = []
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            out.append(None)
        elif decoder is not None and all(ch in decoder for ch in piece):
            out.append(bytes(decoder[ch] for ch in piece))
        elif m := _BYTE_PIECE.match(piece):
            out.append(bytes([int(m.group(1), 16)]))
        else:
            out.append(piece.replace("▁", " ").encode("utf-8"))
    return out


_ROLES = ("eos_token_id", "bos_token_id", "pad_token_id", "unk_token_id")  # EOS wins a tie


def valid_utf8_prefix(raw: bytes) -> bytes:
    """The longest prefix of `raw` that decodes as UTF-8 (spelled tokens can end
    inside a character, and a byte-level model can sample bytes that are not text)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return raw[: e.start]
    return raw


def prepends_space(tokenizer, spelling: Sequence[bytes | None]) -> bool:
    """Whether `tokenizer` spells a text with a space in front of it (SentencePiece's
    dummy prefix, Metaspace's `prepend_scheme='always'`): its tokens of "a" spell " a".
    Text spelled from its tokens then starts with a space the text did not have."""
    ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    return b"".join(spelling[i] or b"" for i in ids) == b" a"


def shared_vocabulary(student, teacher) -> tuple[np.ndarray, np.ndarray]:
    """`(student_ids [M], teacher_ids [M]) int32`: entry m is one spelling's id on each
    side (where a side spells it twice, the id it emits: module docstring), special
    tokens matched by role."""
    pairs: dict[int, int] = {}
    for role in _ROLES:
        s, t = getattr(student, role, None), getattr(teacher, role, None)
        if s is not None and t is not None and s not in pairs:
            pairs[int(s)] = int(t)
    by_bytes = _ids_by_spelling(teacher)
    used_t = set(pairs.values())
    for b, i in _ids_by_spelling(student).items():
        t = by_bytes.get(b)
        if t is not None and i not in pairs and t not in used_t:
            pairs[i] = t
            used_t.add(t)
    ids = sorted(pairs)
    return np.asarray(ids, np.int32), np.asarray([pairs[i] for i in ids], np.int32)


def first_token_map(student, teacher) -> np.ndarray:
    """`[V_t] int32`: per teacher id, the student's first token of the bytes it spells
    (-1: none, e.g. special tokens; EOS maps to EOS).

    The student's own tokenisation of the token's text where it is text and that
    tokenisation's first token spells a prefix of it (no dummy-prefix space in
    front); otherwise (a byte piece, part of a character) the student's longest
    vocabulary entry spelling a prefix of it. Where the teacher's tokens are runs
    of the student's (a teacher with a larger vocabulary on the same word
    boundaries) this is the student token the student would emit first.
    """
    t_spell, s_spell = token_bytes(teacher), token_bytes(student)
    by_bytes = _ids_by_spelling(student)
    longest = max((len(b) for b in by_bytes), default=0)
    out = np.full(len(t_spell), -1, np.int32)
    texts = {}
    for t, b in enumerate(t_spell):
        with contextlib.suppress(UnicodeDecodeError):
            texts[t] = b.decode("utf-8") if b else None
    ids = [t for t, text in texts.items() if text]
    encoded = student([texts[t] for t in ids], add_special_tokens=False)["input_ids"] if ids else []
    first = {t: e[0] for t, e in zip(ids, encoded, strict=True) if e}
    for t, b in enumerate(t_spell):
        if not b:
            continue
        s = first.get(t)
        if s is not None and s_spell[s] and b.startswith(s_spell[s]):
            out[t] = s
            continue
        for k in range(min(len(b), longest), 0, -1):
            if b[:k] in by_bytes:
                out[t] = by_bytes[b[:k]]
                break
    if student.eos_token_id is not None and teacher.eos_token_id is not None:
        out[int(teacher.eos_token_id)] = int(student.eos_token_id)
    return out


def _ids_by_spelling(tokenizer) -> dict[bytes, int]:
    """Per spelling the one id that stands for it (module docstring)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    ids: dict[bytes, list[int]] = {}
    for i, b in enumerate(token_bytes(tokenizer)):
        if b is not None:
            ids.setdefault(b, []).append(i)
    out = {}
    for b, group in ids.items():
        if len(group) > 1:
            try:
                emitted = tokenizer(b.decode("utf-8"), add_special_tokens=False)["input_ids"]
            except UnicodeDecodeError:  # one byte of a multi-byte character
                emitted = []
            if len(emitted) == 1 and emitted[0] in group:
                group = emitted
            else:
                group = [i for i in group if not _BYTE_PIECE.match(pieces[i] or "")] or group
        out[b] = group[0]
    return out
