"""What a compiled program's collectives move, read from its optimised HLO text.

    text = jitted.lower(*args).compile().as_text()
    hlo.collectives(text)   # each source-level collective once, bytes per device
    hlo.loop_bytes(text)    # one iteration of the outermost loop (a sampler: per token)
    hlo.call_bytes(text)    # outside every loop: once per call

The text is XLA's optimised module for the target (TPU slice or GPU node), so
these are the collectives the partitioner inserted, not the ones the source
asked for. A collective is attributed to its source operation by its
`metadata={op_name=...}`: JAX names what runs inside a `lax.while_loop` (and a
`lax.scan`, which lowers to one) `.../while/body/...`. Computation names are no
guide: XLA clones and sinks loop bodies and splits dots into windowed loops,
so one source-level collective can appear several times in the text; it is
counted once, by (op_name, kind).

Bytes are per device: the size of the collective's result on one device
(dtype width x dims; an async `*-start` counts its result, not the operand
and context buffers of its tuple). For an all-gather that is the gathered
array, for an all-reduce the reduced array, for a reduce-scatter the shard it
keeps, for a collective-permute what each device receives. Layout padding
(TPU tiles) is not counted.
"""

from __future__ import annotations

import dataclasses
import re

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
BODY = "while/body"
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.*?)\s+"
    r"(?P<op>(?:ragged-)?(?:" + "|".join(KINDS) + r"))(?P<start>-start)?\("
)
_WHILE = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\swhile\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([\d,<=]*)\]")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


@dataclasses.dataclass(frozen=True)
class Collective:
    """One source-level collective of a compiled program.

    Attributes:
      kind: 'all-gather' | 'all-reduce' | 'reduce-scatter' | 'all-to-all' |
        'collective-permute' (async `-start` forms folded in; `ragged-all-to-all`
        counts as all-to-all).
      op_name: the source operation JAX named (`jit(f)/while/body/dot_general`);
        for a collective without metadata, '%' and its instruction name.
      bytes: per device, of the result (the largest where copies differ).
      in_loop: whether it runs inside a while loop body (`while/body` in op_name).
      loop: op_name up to and including its outermost `while/body`; None outside loops.
    """

    kind: str
    op_name: str
    bytes: int
    in_loop: bool
    loop: str | None


def _array_bytes(dtype: str, dims: str) -> int:
    """`bf16`, `[8,128]` -> 2048. Width from the type's name (`s32`, `f8e4m3fn`:
    8 bits, `pred`: a byte); sub-byte types round up per array."""
    if dtype == "token":
        return 0
    width = re.match(r"[a-z]+(\d+)", dtype)
    bits = int(width.group(1)) if width else 8
    count = 1
    for d in filter(None, dims.replace("<=", "").split(",")):
        count *= int(d)
    return -(-count * bits // 8)


def _strip_layouts(shape: str) -> str:
    """`bf16[8,128]{1,0:T(8,128)}` -> `bf16[8,128]`; drops `/*index=5*/` comments."""
    shape = re.sub(r"/\*.*?\*/", "", shape)
    out, depth = [], 0
    for ch in shape:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def _top_level(shape: str) -> list[str]:
    """The elements of a tuple shape `(a, (b, c), d)`; [shape] for an array."""
    shape = shape.strip()
    if not shape.startswith("("):
        return [shape]
    parts, depth, current = [], 0, []
    for ch in shape[1:-1]:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _bytes(shape: str) -> int:
    return sum(_array_bytes(t, d) for t, d in _ARRAY.findall(shape))


def result_bytes(shape: str, kind: str, start: bool) -> int:
    """Per-device bytes of a collective's result, from its HLO shape text.

    An async `all-gather-start` / `collective-permute-start` (and the
    all-to-all / reduce-scatter starts some backends emit) returns a tuple
    (operands, results, context scalars...): its second element is the
    result. `all-reduce-start` returns the result itself (a tuple when it
    reduces several arrays at once), as does every synchronous collective.
    """
    shape = _strip_layouts(shape)
    if start and kind != "all-reduce":
        parts = _top_level(shape)
        if len(parts) >= 2:
            return _bytes(parts[1])
    return _bytes(shape)


def _loop_of(op_name: str) -> str | None:
    at = op_name.find(BODY)
    return None if at < 0 else op_name[: at + len(BODY)]


def collectives(hlo_text: str) -> list[Collective]:
    """Each source-level collective of `hlo_text` once, in order of first appearance.

    Duplicates (same op_name and kind: a cloned loop body, the steps of a
    windowed einsum) collapse into one, with the largest of their byte counts
    (a clone can differ, e.g. a peeled first iteration). Collectives without
    an op_name are each kept, under their instruction name, and count as
    outside every loop.
    """
    found: dict[tuple[str, str], Collective] = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m is None:
            continue
        kind = m.group("op").removeprefix("ragged-")
        name = _OP_NAME.search(line)
        op_name = name.group(1) if name else "%" + m.group("name")
        size = result_bytes(m.group("shape"), kind, bool(m.group("start")))
        loop = _loop_of(op_name) if name else None
        key = (op_name, kind)
        if key in found:
            size = max(size, found[key].bytes)
        found[key] = Collective(kind, op_name, size, loop is not None, loop)
    return list(found.values())


def trip_counts(hlo_text: str) -> dict[str, int]:
    """Loop (op_name prefix ending `while/body`, as `Collective.loop`) -> the trip
    count XLA states for it (`known_trip_count`; GPU states it for counted
    loops, the TPU compiler often does not). Loops without one are absent."""
    trips: dict[str, int] = {}
    for line in hlo_text.splitlines():
        if not _WHILE.match(line):
            continue
        name, n = _OP_NAME.search(line), _TRIPS.search(line)
        if name and n:
            key = name.group(1) + "/body"
            trips[key] = max(trips.get(key, 0), int(n.group(1)))
    return trips


def loops(hlo_text: str) -> dict[str, int]:
    """Outermost loop -> bytes one of its iterations moves per device.

    A nested loop's collectives count its trip count times where XLA states
    it (`trip_counts`), once where it does not. Each `lax.scan` is a loop of
    its own: a train step with scanned layers has several outermost loops
    (forward, backward, accumulation), a sampler with unrolled layers one
    (its decode loop). Loops JAX named alike (same op_name prefix) merge.
    """
    trips = trip_counts(hlo_text)
    out: dict[str, int] = {}
    for c in collectives(hlo_text):
        if c.loop is None:
            continue
        times, rest = 1, c.op_name[len(c.loop) :]
        prefix = c.loop
        while (at := rest.find(BODY)) >= 0:  # loops nested inside the outermost
            prefix += rest[: at + len(BODY)]
            rest = rest[at + len(BODY) :]
            times *= trips.get(prefix, 1)
        out[c.loop] = out.get(c.loop, 0) + c.bytes * times
    return out


def loop_bytes(hlo_text: str) -> int:
    """Bytes per device of one iteration of the outermost loop; with several
    outermost loops, the one moving most per iteration; 0 without loops. For a
    sampler (layers unrolled, one decode loop) that is the bytes per generated
    token."""
    return max(loops(hlo_text).values(), default=0)


def call_bytes(hlo_text: str) -> int:
    """Bytes per device of the collectives outside every loop (once per call)."""
    return sum(c.bytes for c in collectives(hlo_text) if c.loop is None)


def total_bytes(hlo_text: str, unknown_trips: int = 1) -> int:
    """Bytes per device of one call: outside loops, plus each outermost loop's
    iterations times its stated trip count (`unknown_trips` where none is
    stated, e.g. a decode loop that stops early: pass its step limit)."""
    trips = trip_counts(hlo_text)
    looped = sum(b * trips.get(k, unknown_trips) for k, b in loops(hlo_text).items())
    return call_bytes(hlo_text) + looped
