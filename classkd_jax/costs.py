"""What a compiled program costs on its target, estimated from the program itself.

    peak = costs.peak(topo.device_kind)           # vendor figures per chip
    est = costs.bound(flops, hbm_bytes, comm_bytes, peak)   # all per device
    est.seconds, est.binds                        # e.g. 0.84, 'memory'

A lower bound on a program's time on one device: the largest of its FLOPs over
the chip's peak FLOP/s, its HBM bytes over the HBM bandwidth, and the bytes
its collectives move over the interconnect bandwidth. Each term assumes the
other two are free and the chip runs at its datasheet peak, so the program
can only be slower; the term that binds says what to change. These are
estimates from the compiled program and vendor figures, not measurements.
"""

from __future__ import annotations

import dataclasses

TERMS = ("compute", "memory", "interconnect")


@dataclasses.dataclass(frozen=True)
class Peak:
    """A chip's datasheet figures.

    Attributes:
      name: e.g. 'TPU v5e', 'H100 SXM'.
      flops: dense bf16 FLOP/s.
      hbm: HBM bytes/s.
      interconnect: bytes/s one chip sends (or receives) over the chip-to-chip
        links (ICI, NVLink): half the bidirectional figure vendors quote. A
        device's share of a collective (the bytes of its result, `hlo.py`)
        crosses them at most this fast.
    """

    name: str
    flops: float
    hbm: float
    interconnect: float


# By a lower-case substring of `device_kind` (first match wins). Sources:
# - Cloud TPU documentation, "System architecture" of each version
#   (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e): peak bf16 per chip, HBM
#   bandwidth per chip, ICI bandwidth per chip. v5e: 197 TFLOP/s, 819 GB/s,
#   400 GB/s bidirectional ICI; v6e (Trillium): 918 TFLOP/s, 1640 GB/s, 800 GB/s
#   bidirectional ICI; v5p: 459 TFLOP/s, 2765 GB/s, ICI 4800 Gbps (600 GB/s each
#   way); v4: 275 TFLOP/s, 1200 GB/s. The v4 page gives no per-chip ICI figure:
#   6 links of 50 GB/s each way, from "TPU v4: An Optically Reconfigurable
#   Supercomputer for Machine Learning" (Jouppi et al., ISCA 2023).
# - NVIDIA datasheets (SXM parts, dense bf16 Tensor Core, i.e. without sparsity):
#   A100 80GB SXM 312 TFLOP/s, 2039 GB/s HBM2e, NVLink 600 GB/s bidirectional;
#   H100 SXM 989 TFLOP/s, 3.35 TB/s HBM3, NVLink 900 GB/s bidirectional;
#   H200 SXM 989 TFLOP/s, 4.8 TB/s HBM3e, NVLink 900 GB/s bidirectional.
#   Between nodes (`h100:2x8`) the network is slower than NVLink; the bound
#   uses NVLink's figure and so stays a lower bound.
PEAKS: tuple[tuple[str, Peak], ...] = (
    ("tpu v6 lite", Peak("TPU v6e", 918e12, 1640e9, 400e9)),
    ("tpu v5 lite", Peak("TPU v5e", 197e12, 819e9, 200e9)),
    ("tpu v5", Peak("TPU v5p", 459e12, 2765e9, 600e9)),
    ("tpu v4", Peak("TPU v4", 275e12, 1200e9, 300e9)),
    ("a100", Peak("A100 SXM", 312e12, 2039e9, 300e9)),
    ("h100", Peak("H100 SXM", 989e12, 3350e9, 450e9)),
    ("h200", Peak("H200 SXM", 989e12, 4800e9, 450e9)),
)


def peak(device_kind: str) -> Peak | None:
    """The table's figures for `device_kind` ('TPU v5 lite', 'NVIDIA H100 80GB
    HBM3', ...); None for a chip it does not list."""
    kind = device_kind.lower()
    return next((p for key, p in PEAKS if key in kind), None)


@dataclasses.dataclass(frozen=True)
class Bound:
    """A lower bound on one device's time, and its three terms (seconds).

    Attributes:
      compute: FLOPs / peak FLOP/s.
      memory: HBM bytes / HBM bandwidth.
      interconnect: collective bytes / interconnect bandwidth (one way).
      seconds: the largest of the three.
      binds: 'compute' | 'memory' | 'interconnect': the term that is largest.
    """

    compute: float
    memory: float
    interconnect: float

    @property
    def seconds(self) -> float:
        return max(self.compute, self.memory, self.interconnect)

    @property
    def binds(self) -> str:
        terms = (self.compute, self.memory, self.interconnect)
        return TERMS[terms.index(max(terms))]


def bound(flops: float, hbm_bytes: float, comm_bytes: float, chip: Peak) -> Bound:
    """The bound for one device doing `flops` FLOPs, reading and writing
    `hbm_bytes` of HBM and receiving `comm_bytes` over the interconnect."""
    return Bound(flops / chip.flops, hbm_bytes / chip.hbm, comm_bytes / chip.interconnect)


SAMPLERS = ("sampler", "greedy", "seqkd")


def program_costs(program, text: str, devices: int, chip: Peak | None, xla=None) -> dict:
    """The report's cost fields of one compiled program (all per device).

    Args:
      program: its `programs.Program` (kind, counted FLOPs of the whole batch,
        and for samplers decode steps per call and FLOPs per step).
      text: `compiled.as_text()`, the optimised HLO.
      devices: devices the program runs on (counted FLOPs split evenly).
      chip: the device's figures; None leaves out the time estimates.
      xla: `compiled.cost_analysis()` (TPU; None on GPU), kept for comparison:
        it counts a loop body once.

    Returns a dict with `hbm_bytes` and `collective_bytes` of one call (loops
    times their trip count; a sampler's decode loop without one runs its
    `steps`), `collective_call_bytes` (outside loops), the bound `est_s`, its
    terms `est_terms` and `est_binds`; train steps add `est_mfu`; samplers add
    the decode loop's `step_hbm_bytes`, `step_collective_bytes` and the bound
    of one decode step (one token for every row) `est_ms_per_token`,
    `est_token_binds`.
    """
    from classkd_jax import hlo

    mem = hlo.memory(text)
    comm_loops, trips = hlo.loops(text), hlo.trip_counts(text)
    # the decode loop: a sampler's `lax.while_loop` (not a windowed einsum's loop),
    # the one moving most; its trip count is the steps limit where XLA states none
    decode = None
    if program.kind in SAMPLERS:
        candidates = [k for k in mem.loops if k.endswith(hlo.BODY)]
        decode = max(candidates, key=mem.loops.get, default=None)
    hbm = mem.total
    if decode is not None and mem.trips.get(decode) is None:
        hbm += mem.loops[decode] * (max(program.steps, 1) - 1)
    comm_call = hlo.call_bytes(text)
    steps = {decode: max(program.steps, 1)} if decode is not None else {}
    comm = comm_call + sum(b * trips.get(k, steps.get(k, 1)) for k, b in comm_loops.items())
    row = {
        "flops_per_device": program.flops / devices,
        "hbm_bytes": hbm,
        "hbm_call_bytes": mem.call,
        "hbm_source": "optimised HLO (hlo.memory)",
        "collective_bytes": comm,
        "collective_call_bytes": comm_call,
        "collective_loops": comm_loops,
        "loop_trips": {k: trips.get(k, mem.trips.get(k)) for k in {*comm_loops, *mem.loops}},
    }
    if xla:
        xla = xla[0] if isinstance(xla, list | tuple) else xla
        if "bytes accessed" in xla:
            row["xla_bytes_accessed"] = float(xla["bytes accessed"])
    if decode is not None:
        row["decode_loop"] = decode
        row["step_hbm_bytes"] = mem.loops[decode]
        row["step_collective_bytes"] = comm_loops.get(decode, 0)
    if chip is None:
        return row
    est = bound(program.flops / devices, hbm, comm, chip)
    row.update(
        est_s=est.seconds,
        est_binds=est.binds,
        est_terms={t: getattr(est, t) for t in TERMS},
    )
    if program.kind == "step":
        row["est_mfu"] = est.compute / est.seconds if est.seconds > 0 else 0.0
    if decode is not None:
        token = bound(
            program.step_flops / devices,
            row["step_hbm_bytes"],
            row["step_collective_bytes"],
            chip,
        )
        row.update(est_ms_per_token=token.seconds * 1e3, est_token_binds=token.binds)
    return row


def _cell(value, scale: float, digits: int = 2) -> str:
    if value is None:
        return "-"
    value /= scale
    return f"{value:.{digits}f}" if value == 0 or abs(value) >= 1 else f"{value:.{digits}g}"


def table(rows: list[dict], chip: Peak | None) -> str:
    """The costs of the compiled rows, one line each (≤ ~110 characters)."""
    gib, mib = 1024**3, 1024**2
    head = ("program", "TFLOP", "HBM GiB", "comm GiB", "bound ms", "binds", "MFU")
    head += ("comm MiB/tok", "ms/tok")
    lines = []
    for r in rows:
        if "hbm_bytes" not in r:
            continue
        mfu = r.get("est_mfu")
        lines.append(
            (
                r["program"],
                _cell(r["flops_per_device"], 1e12, 3),
                _cell(r["hbm_bytes"], gib),
                _cell(r["collective_bytes"], gib),
                _cell(r.get("est_s"), 1e-3, 3),
                r.get("est_binds", "-"),
                "-" if mfu is None else f"{100 * mfu:.0f}%",
                _cell(r.get("step_collective_bytes"), mib, 1),
                _cell(r.get("est_ms_per_token"), 1, 3),
            )
        )
    if not lines:
        return ""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = lambda cells: "  ".join(
        str(c).ljust(w) if i in (0, 5) else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return "\n".join([fmt(head), *map(fmt, lines)])


def footnote(chip: Peak | None) -> str:
    """What the cost table's numbers are (lines of at most ~100 characters)."""
    if chip is None:
        return "no time estimates: the table of chip peaks (classkd_jax/costs.py) lacks this device"
    return (
        "costs per device and call, estimated from the compiled programs, not measured; bytes "
        "from the\n  optimised HLO, loops times their trips. bound: a lower bound of the time, "
        "the largest of\n"
        f"  FLOPs / {chip.flops / 1e12:.0f} TFLOP/s, HBM bytes / {chip.hbm / 1e9:.0f} GB/s and "
        f"collective bytes / {chip.interconnect / 1e9:.0f} GB/s each way ({chip.name}\n"
        "  datasheet peaks); MFU: compute term / bound; MiB/tok, ms/tok: one decode step "
        "(a token a row)"
    )
