"""What a compiled program moves, read from its optimised HLO text.

    text = jitted.lower(*args).compile().as_text()
    hlo.collectives(text)   # each source-level collective once, bytes per device
    hlo.loop_bytes(text)    # one iteration of the outermost loop (a sampler: per token)
    hlo.call_bytes(text)    # outside every loop: once per call
    hlo.loops(text)         # {outermost loop: bytes of one iteration}
    hlo.trip_counts(text)   # {loop: trips} where XLA states them or the condition shows them
    hlo.memory(text)        # HBM bytes read and written: per call, per loop iteration

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
      in_loop: whether it runs in every iteration of a while loop (`while/body` in
        its op_name, or `while/cond`: the loop's condition).
      loop: its outermost loop: op_name up to and including the outermost
        `while/body` (a condition's `while/cond` read as `while/body`); None
        outside loops.
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


_LOOP = re.compile(r"while/(?:body|cond)\b")


def _loop_of(op_name: str) -> str | None:
    """The outermost loop's key: `jit(f)/while/body` for `jit(f)/while/body/...` and
    for `jit(f)/while/cond/...` (a loop's condition runs once per iteration too)."""
    m = _LOOP.search(op_name)
    return None if m is None else op_name[: m.start()] + BODY


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


def _trips(instr: _Instr, comps: dict[str, list[_Instr]]) -> int | None:
    """A while loop's trip count: XLA's `known_trip_count` (GPU states it for
    counted loops), else read off a condition `counter < N` with N a constant
    (the TPU compiler states none; a counter from 0 by 1 assumed), else None."""
    stated = _TRIPS.search(instr.attrs)
    if stated:
        return int(stated.group(1))
    cond = dict(_CALLED.findall(instr.attrs)).get("condition")
    body = comps.get(cond, [])
    consts = {
        i.name: i.args for i in body if i.opcode == "constant" and i.shape.startswith("s32[]")
    }
    compares = [i for i in body if i.opcode == "compare"]
    if len(compares) != 1 or "direction=LT" not in compares[0].attrs:
        return None
    limits = [consts[o] for o in compares[0].operands if o in consts]
    return int(limits[0]) if len(limits) == 1 and limits[0].strip().isdigit() else None


def trip_counts(hlo_text: str) -> dict[str, int]:
    """Loop (op_name prefix ending `while/body`, as `Collective.loop`) -> its trip
    count where XLA states it or its condition shows it (`_trips`); loops
    without one (a decode loop that stops early) are absent. Loops JAX named
    alike keep the largest."""
    comps, _ = _parse(hlo_text)
    trips: dict[str, int] = {}
    for body in comps.values():
        for i in body:
            name = _OP_NAME.search(i.attrs) if i.opcode == "while" else None
            n = _trips(i, comps) if name else None
            if n is not None:
                key = name.group(1) + "/body"
                trips[key] = max(trips.get(key, 0), n)
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
        while (m := _LOOP.search(rest)) is not None:  # loops nested inside the outermost
            prefix += rest[: m.start()] + BODY
            rest = rest[m.end() :]
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


# ----- HBM traffic ------------------------------------------------------------

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$")
_ASSIGN = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"(?:^|\s)([a-z][a-z0-9\-]*)\(")
_CALLED = re.compile(
    r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
# No memory traffic of their own (views, bookkeeping, control flow whose bodies count).
_FREE = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional",
    "call", "after-all", "partition-id", "replica-id", "opt-barrier", "async-start",
    "async-update", "async-done", "copy-done", "add-dependency", "domain",
}  # fmt: skip
_SLICES = {"dynamic-slice", "slice", "gather"}


@dataclasses.dataclass
class _Instr:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str
    root: bool
    args: str = ""


def _parse(hlo_text: str) -> tuple[dict[str, list[_Instr]], str]:
    """Computations by name (their instructions in order) and the entry's name."""
    comps: dict[str, list[_Instr]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        if current is None:
            m = _COMPUTATION.match(line)
            if m:
                current = comps.setdefault(m.group(1), [])
                entry = m.group(1) if line.startswith("ENTRY") else entry
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _ASSIGN.match(line)
        op = _OPCODE.search(m.group(3)) if m else None
        if op is None:
            continue
        rest, depth, end = m.group(3), 0, len(m.group(3))
        for i in range(op.end() - 1, len(rest)):
            depth += {"(": 1, ")": -1}.get(rest[i], 0)
            if depth == 0:
                end = i
                break
        operands = re.findall(r"%([\w.\-]+)", rest[op.end() : end])
        shape = _strip_layouts(rest[: op.start()])
        root = bool(m.group(1))
        args = rest[op.end() : end]
        current.append(_Instr(m.group(2), shape, op.group(1), operands, rest[end:], root, args))
    return comps, entry


def _collective_kind(opcode: str) -> str | None:
    base = opcode.removesuffix("-start").removesuffix("-done").removeprefix("ragged-")
    return base if base in KINDS else None


def _fusion_bytes(body: list[_Instr]) -> int:
    """What a fusion reads and writes: a parameter used only through slices reads the
    slices; the buffer a dynamic-update-slice root updates in place is neither read
    nor written whole (only the update is written); a parameter the root passes
    through, and a collective's result (TPU fuses async collectives), count nothing."""
    local = {i.name: i for i in body}
    users: dict[str, list[_Instr]] = {}
    for i in body:
        for o in i.operands:
            users.setdefault(o, []).append(i)
    roots = [i for i in body if i.root]
    root = roots[0] if roots else None
    outs = [local[o] for o in root.operands] if root and root.opcode == "tuple" else [root]
    updates = [o for o in outs if o is not None and o.opcode == "dynamic-update-slice"]
    read = 0
    for i in body:
        if i.opcode != "parameter":
            continue
        parts = 0  # what its slices read; None once a use reads it whole
        for u in users.get(i.name, []):
            if u.opcode in _SLICES:
                parts += _bytes(u.shape)
            elif u is root and u.opcode == "tuple" or _collective_kind(u.opcode):
                continue  # passed through; what a collective sends is not HBM traffic here
            elif not (u in updates and u.operands[0] == i.name):  # not the in-place buffer
                parts = None
                break
        read += _bytes(i.shape) if parts is None else parts
    written = 0
    for o in outs:
        if o is None or o.opcode == "parameter" or _collective_kind(o.opcode):
            continue
        if o.opcode == "dynamic-update-slice":
            written += _bytes(local[o.operands[1]].shape) if o.operands[1] in local else 0
        else:
            written += _bytes(o.shape)
    return read + written


def _instr_bytes(instr: _Instr, comps, sizes: dict[str, int]) -> int:
    op = instr.opcode
    if op in _FREE or op.endswith("-done") or _collective_kind(op):
        return 0  # a collective's bytes are counted by `collectives()`
    if op == "fusion":
        called = _CALLED.search(instr.attrs)
        body = comps.get(called.group(2), []) if called else []
        if any(_collective_kind(i.opcode) for i in body):
            return 0  # the TPU's async collective fusions: collectives' bytes, counted there
        if body:
            return _fusion_bytes(body)
    if op == "copy-start":  # a prefetch (e.g. to on-chip memory): reads its operand once
        return _bytes(_top_level(instr.shape)[0])
    if op == "dynamic-slice":
        return 2 * _bytes(instr.shape)
    if op in ("slice-start", "dynamic-slice-start"):  # ((operand), slice, context)
        parts = _top_level(instr.shape)
        return 2 * _bytes(parts[1]) if len(parts) > 1 else 0
    if op == "dynamic-update-slice" and len(instr.operands) > 1:
        return 2 * sizes.get(instr.operands[1], 0)
    return _bytes(instr.shape) + sum(sizes.get(o, 0) for o in instr.operands)


@dataclasses.dataclass(frozen=True)
class Memory:
    """HBM bytes one device reads and writes in one call of a program.

    Attributes:
      total: every loop times its trip count (once where none is known).
      call: outside every loop.
      loops: outermost loop (keyed as `Collective.loop`) -> bytes of one
        iteration, nested loops included times their trips.
      trips: outermost loop -> its trip count (stated, or read off its
        condition), None where neither (counted once in `total`; a decode loop
        that may stop early: the caller knows its step limit).
    """

    total: int
    call: int
    loops: dict[str, int]
    trips: dict[str, int | None]


def memory(hlo_text: str) -> Memory:
    """HBM traffic per device, counted from the optimised module's structure.

    Each top-level instruction (a fusion as a unit) reads its operands and
    writes its result, the way XLA's cost analysis counts; a parameter a
    fusion only slices reads the slices, one it passes through untouched
    nothing; a dynamic-update-slice writes its update in place; views, tuples,
    control flow and collectives' results (their bytes are `collectives()`')
    move nothing here; layout padding is not counted. Unlike
    `compiled.cost_analysis()` (a loop body once), every while loop counts its
    own trip count times (`_trips`), and both branches of a conditional count.
    An estimate of the traffic (on-chip memory can only lower it), not a
    measurement.
    """
    comps, entry = _parse(hlo_text)
    sizes = {i.name: _bytes(i.shape) for body in comps.values() for i in body}
    skip = set()  # computations that run inside an instruction (fused, reducers)
    for body in comps.values():
        for i in body:
            for kind, name in _CALLED.findall(i.attrs):
                if kind == "to_apply" or (kind == "calls" and i.opcode == "fusion"):
                    skip.add(name)
    totals = [0, 0]  # total, call
    loops: dict[str, int] = {}
    trips_of: dict[str, int | None] = {}

    def visit(name: str, loop: str | None, times: int) -> int:
        """Bytes of computation `name` run `times` times inside `loop`."""
        moved = 0
        for i in comps.get(name, []):
            called = {k: v for k, v in _CALLED.findall(i.attrs) if v not in skip}
            if i.opcode == "while":
                trips = _trips(i, comps)
                parts = [called[p] for p in ("body", "condition") if p in called]
                if loop is None:  # an outermost loop: one iteration, then times its trips
                    op_name = _OP_NAME.search(i.attrs)
                    key = op_name.group(1) + "/body" if op_name else "%" + i.name
                    one = sum(visit(p, key, 1) for p in parts)
                    loops[key] = loops.get(key, 0) + one
                    known = trips_of.get(key, trips)
                    trips_of[key] = None if known is None or trips is None else max(known, trips)
                    totals[0] += one * (trips or 1)
                else:
                    moved += sum(visit(p, loop, times * (trips or 1)) for p in parts)
                continue
            branches = _BRANCHES.search(i.attrs)
            targets = list(called.values())
            targets += re.findall(r"%?([\w.\-]+)", branches.group(1)) if branches else []
            moved += sum(visit(t, loop, times) for t in targets)
            size = _instr_bytes(i, comps, sizes) * times
            if loop is None:
                totals[0] += size
                totals[1] += size
            moved += size
        return moved

    visit(entry, None, 1)
    return Memory(totals[0], totals[1], loops, trips_of)
