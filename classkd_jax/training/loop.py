"""The training loop: steps, logging, validation, checkpoints, preemption.

    outcome = run_loop(run, state, start_step, meta)

At each step t (0-based; `done = t + 1` steps are then complete): build the
batch (`BatchPlan`, sampling where the method asks), run the jitted step,
keep its metrics on device; every `log_every` steps summarise and write
them; every `eval_every` steps validate (and keep the best by
`best_metric`); every `checkpoint_every` steps, at the end, and when a
SIGTERM or SIGINT arrived, save. A signal only sets a flag (`StopSignal`):
the step in flight finishes, the checkpoint is written, the loop returns
'stopped', and the same command resumes from there. Metrics are checked for
NaN/inf before every save, so the last checkpoint is always a good one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Any

import jax

from classkd_jax.cli import UserError
from classkd_jax.training.checkpoints import RunCheckpoints
from classkd_jax.training.data import TrainData
from classkd_jax.training.reporting import NonFiniteLoss, Reporter, Window
from classkd_jax.training.rollout import BatchPlan, step_key
from classkd_jax.training.state import RunState
from classkd_jax.training.validation import Validator


class StopSignal:
    """Turns SIGTERM / SIGINT into a request to stop after the current step.

    One process: a signal sets the flag (`check` then says so); a second one
    stops at once (KeyboardInterrupt). Several processes must all stop after
    the same step, so there SIGTERM is left to JAX's preemption notice
    (`jax.distributed` catches it, and the processes agree on a step through
    the coordination service: `check` asks once per step), and Ctrl-C raises
    that notice too, by sending this process SIGTERM. A second Ctrl-C still
    stops at once (and the others then fail fast: a process was lost).
    """

    def __init__(self, synchronized: bool = False):
        self.synchronized = synchronized
        self.received: int | None = None
        self._local: int | None = None
        self._calls = 0
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignal:
        if self.synchronized:
            try:
                self.check()  # every process makes this first call: the counts stay equal
            except RuntimeError as e:
                raise UserError(
                    f"several processes stop together through JAX's preemption service: {e}"
                ) from None
        signals = (signal.SIGINT,) if self.synchronized else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self._local is not None:
            self.uninstall()
            raise KeyboardInterrupt
        self._local = signum
        if self.synchronized:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier
        else:
            self.received = signum

    def check(self) -> bool:
        """Whether to stop after the step just taken; the same answer on every
        process. Call it exactly once per step on every process."""
        if self.synchronized and self.received is None:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(self._calls):
                self.received = self._local or signal.SIGTERM
            self._calls += 1
        return self.received is not None

    @property
    def requested(self) -> bool:
        """Whether a stop was decided (`check`) or, on one process, signalled."""
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


@dataclasses.dataclass
class Run:
    """Everything the loop uses, built by `classkd_jax.train`."""

    config: Any
    workdir: Path
    total_steps: int
    step_fn: Any
    frozen: dict
    plan: BatchPlan
    data: TrainData
    validator: Validator | None
    checkpoints: RunCheckpoints
    reporter: Reporter | None  # set by `run.make_reporter` once the start step is known
    stop: StopSignal
    root_key: jax.Array
    meta: dict  # the static part of every checkpoint's metadata (models, tokenizer)
    devices: int
    peak_tflops: float | None
    is_writer: bool


def _better(name: str, value: float, best: dict | None) -> bool:
    if best is None:
        return True
    return value > best["value"] if name == "dev_rougeL" else value < best["value"]


def _validate(run: Run, state: RunState, step: int, best: dict | None):
    """Validates; returns (pending, best): pending is `step` when stopped part-way."""
    result = run.validator.run(
        state.student.params,
        run.frozen.get("teacher"),
        step,
        run.workdir,
        run.is_writer,
        lambda: run.stop.requested,
    )
    if result is None:
        return step, best
    run.plan.after_validation(result)  # DistiLLM's adaptive schedule reads the dev loss
    record = {"step": step, **result, **run.plan.report()}
    run.reporter.log(record)
    name = run.config.best_metric
    if name in result and _better(name, result[name], best):
        best = {"metric": name, "value": float(result[name]), "step": step}
        run.checkpoints.save_best(step, state, {**run.meta, "best": best})
    return None, best


def _save(run: Run, window: Window, state: RunState, step: int, best, pending) -> None:
    window.check()  # never write a state whose step produced a NaN
    meta = {
        **run.meta,
        "data": run.data.state(),
        "best": best,
        "pending_eval": pending,
        "total_steps": run.total_steps,
        "plan": run.plan.state(),  # replay buffer, rollout store, phi
    }
    run.checkpoints.save(step, state, meta)


def _last_good(run: Run) -> str:
    step = run.checkpoints.latest_step()
    if step is None:
        return "no checkpoint was written yet"
    return f"the last good checkpoint is {run.checkpoints.directory / str(step)}"


def run_loop(run: Run, state: RunState, start: int, meta: dict) -> tuple[RunState, str]:
    """Trains from step `start` to `run.total_steps`; returns (state, 'done' | 'stopped')."""
    c = run.config
    best, pending = meta.get("best"), meta.get("pending_eval")
    window = Window()
    if pending is not None and run.validator is not None:
        pending, best = _validate(run, state, int(pending), best)
        if pending is not None:
            return state, "stopped"
    if run.validator is not None:
        teacher = run.frozen.get("teacher")
        run.plan.start(lambda: run.validator.dev_loss(state.student.params, teacher)["dev_loss"])
    outcome = "done"
    try:
        for step in range(start, run.total_steps):
            batch, host = run.plan.batch(step, state, run.frozen)
            state, metrics = run.step_fn(
                state, run.frozen, batch, step_key(run.root_key, step, "step")
            )
            done = step + 1
            window.add(done, metrics, host)
            run.reporter.step()
            if done % c.log_every == 0 or done == run.total_steps:
                record = window.summarize(done, devices=run.devices, peak_tflops=run.peak_tflops)
                run.reporter.log({**record, **run.plan.report()})
            evaluate = run.validator is not None and (
                done % c.eval_every == 0 or done == run.total_steps
            )
            if evaluate:
                window.check()
                pending, best = _validate(run, state, done, best)
            last = done == run.total_steps
            stopping = run.stop.check()
            if done % c.checkpoint_every == 0 or last or stopping:
                _save(run, window, state, done, best, pending)
            if stopping and (not last or pending is not None):
                outcome = "stopped"
                break
    except NonFiniteLoss as e:
        raise UserError(f"training stopped: {e}; {_last_good(run)}") from None
    return state, outcome


def exported_step(path: Path) -> int | None:
    """The step a `student_hf` export was made from (its marker file), or None."""
    marker = Path(path) / "EXPORTED_FROM.json"
    if not marker.is_file():
        return None
    return int(json.loads(marker.read_text())["step"])
