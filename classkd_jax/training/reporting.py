"""Metrics of a run: kept on device until a log step, then JSONL, TensorBoard and the terminal.

    window = Window()
    window.add(step, metrics, host={"flops": ..., "sampling_s": ...})  # every step, no sync
    record = window.summarize(step)                                   # at a log step: one sync
    reporter.log(record)

`DIR/metrics.jsonl` gets one JSON object per logged step: `step`, `loss`,
every loss term, grad norms, learning rates, the gap, `tokens_per_s`
(non-padding tokens, prompt and response, of the batches the student trained
on, per second of wall time since the last log), `sampling_share`,
`step_time`, `mfu` (null when the device's peak is unknown) and `elapsed`;
the gap and the classmate's update flag also step by step (`gap_by_step`,
`classmate_updated_by_step`), as TensorBoard gets them.
The same scalars go to TensorBoard event files under `DIR/tensorboard`
(tensorboardX, no TensorFlow). A resumed run first drops what was logged
after its checkpoint, so the files read as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

# Sums over the window (the others are averaged over its steps, or the last value).
SUMMED = ("train_tokens", "scored_tokens_off", "scored_tokens_on", "scored_tokens_lm", "flops")
LAST = ("gap", "student_lr", "classmate_lr", "misfeedback_weight")
# Also recorded step by step (a list per record; TensorBoard gets each at its step).
PER_STEP = ("gap", "classmate_updated")


class NonFiniteLoss(FloatingPointError):
    """A loss term became NaN or inf; names the step and the term."""

    def __init__(self, step: int, term: str, value: float):
        self.step, self.term = step, term
        if "grad_norm" in term:  # the loss itself stayed finite
            what = f"{term} is {value} at step {step} (the loss terms were finite)"
        else:
            what = f"the loss term {term!r} is {value} at step {step}"
        super().__init__(what)


class Window:
    """The per-step metrics since the last log, on device until summarised."""

    def __init__(self):
        self._steps: list[tuple[int, Any, dict]] = []
        self._host: list[tuple[int, dict, dict]] = []  # already fetched and checked
        self._start = time.perf_counter()

    def add(self, step: int, metrics: Mapping[str, Any], host: Mapping[str, float]) -> None:
        self._steps.append((step, metrics, dict(host)))

    def check(self) -> None:
        """Fetches the pending metrics (one sync) and raises `NonFiniteLoss` at the
        first step with a NaN or inf value; the checked values are kept."""
        if not self._steps:
            return
        fetched = jax.device_get([m for _, m, _ in self._steps])
        for (step, _, host), values in zip(self._steps, fetched, strict=True):
            values = {k: float(np.asarray(v)) for k, v in values.items()}
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            if bad:
                self._steps = []
                # Name a loss term rather than the total when one is to blame.
                terms = sorted(k for k in bad if k != "loss" and "grad_norm" not in k)
                term = (terms or [k for k in sorted(bad) if k != "loss"] or ["loss"])[0]
                raise NonFiniteLoss(step, term, values[term])
            self._host.append((step, values, host))
        self._steps = []

    def summarize(self, step: int, *, devices: int, peak_tflops: float | None) -> dict:
        """One record for the steps since the last summary (then starts a new window)."""
        self.check()
        now = time.perf_counter()
        elapsed = max(now - self._start, 1e-9)
        rows = self._host
        record: dict[str, Any] = {"step": step}
        if rows:
            keys = sorted({k for _, v, _ in rows for k in v})
            for key in keys:
                vals = [v[key] for _, v, _ in rows if key in v]
                if key in PER_STEP:
                    record[f"{key}_by_step"] = vals
                if key in SUMMED:
                    record[key] = float(np.sum(vals))
                elif key in LAST:
                    record[key] = vals[-1]
                else:
                    record[key] = float(np.mean(vals))
            flops = record.pop("flops", 0.0) + sum(h.get("flops", 0.0) for _, _, h in rows)
            sampling = sum(h.get("sampling_s", 0.0) for _, _, h in rows)
            record["tokens_per_s"] = record.get("train_tokens", 0.0) / elapsed
            record["sampling_share"] = sampling / elapsed
            record["step_time"] = elapsed / len(rows)
            record["tflops_per_s"] = flops / elapsed / 1e12
            record["mfu"] = (
                None if not peak_tflops else flops / elapsed / (devices * peak_tflops * 1e12)
            )
        self._host = []
        self._start = now
        return record


class Reporter:
    """Writes records (process 0 only) and drives the progress display."""

    def __init__(
        self,
        workdir: str | Path,
        *,
        start_step: int,
        total_steps: int,
        is_writer: bool,
        progress: bool,
    ):
        self.workdir = Path(workdir)
        self.is_writer = is_writer
        self.total = total_steps
        self._t0 = time.perf_counter()
        self._start_step = start_step
        self._jsonl = None
        self._tb = None
        self._bar = None
        self._lines = False
        if not is_writer:
            return
        path = self.workdir / "metrics.jsonl"
        _truncate_after(path, start_step)
        self._jsonl = path.open("a", encoding="utf-8")
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=start_step + 1)
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        else:
            self._lines = progress

    def step(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def log(self, record: Mapping[str, Any]) -> None:
        if not self.is_writer:
            return
        record = {"elapsed": round(time.perf_counter() - self._t0, 3), **record}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        step = int(record["step"])
        for key, value in record.items():
            if f"{key}_by_step" in record:
                continue  # written step by step below
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
            elif key.endswith("_by_step"):  # the window's steps end at `step`
                for i, v in enumerate(value):
                    self._tb.add_scalar(key.removesuffix("_by_step"), v, step - len(value) + 1 + i)
        self._tb.flush()
        if "loss" in record:
            self._show(step, record)

    def _show(self, step: int, record: Mapping[str, Any]) -> None:
        postfix = {"loss": f"{record['loss']:.4f}"}
        if "gap" in record:
            postfix["gap"] = f"{record['gap']:.4f}"
        if record.get("tokens_per_s"):
            postfix["tok/s"] = f"{record['tokens_per_s']:.0f}"
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=True)
        elif self._lines:
            done = step - self._start_step
            rate = (time.perf_counter() - self._t0) / max(done, 1)
            eta = rate * (self.total - step)
            items = " ".join(f"{k} {v}" for k, v in postfix.items())
            print(f"step {step}/{self.total} {items} eta {_duration(eta)}", file=sys.stderr)

    def message(self, text: str) -> None:
        """A line on the terminal (above the progress bar)."""
        if not self.is_writer:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        for thing in (self._bar, self._tb, self._jsonl):
            if thing is not None:
                thing.close()
        self._bar = self._tb = self._jsonl = None


def _truncate_after(path: Path, step: int) -> None:
    """Drops records logged after `step` (a resumed run logs them again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # a line torn by the interruption
        if int(record.get("step", 0)) <= step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    tmp.replace(path)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
