"""On-policy batches: what each step trains on, and the samples of it.

`BatchPlan.batch(step, state)` returns the step's batch dict (see
`classkd_jax.training.step`) and host-side timing. Which batches a step
gets is decided here, on the host, from `(seed, step)` alone (`draw`), so a
resumed run makes the same choices and, with `misfeedback.weight=0`, nothing
of the classmate enters the student's batches:

  sft, kd   'off': the next packed dataset batch
  gkd       'off': with probability gkd.lmbda the student's samples of the
            next prompts; else the teacher's samples (gkd.seq_kd) or the next
            dataset batch (TRL's per-batch draw)
  classkd   'off': the next dataset batch, and with probability classkd.lmbda
            'on': the student's samples of the next prompts

Samples come from the jitted `lax.while_loop` sampler
(`classkd_jax.sampling.Sampler`), with the student's current params, rows
sharded over the data axes; they stay on device.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import jax
import numpy as np

from classkd_jax.sampling import Sampler, SamplingConfig
from classkd_jax.training import flops as flops_lib
from classkd_jax.training import objectives
from classkd_jax.training.data import TrainData
from classkd_jax.training.state import RunState

STREAMS = ("gkd", "classkd", "sample_student", "sample_teacher", "step")


def stream_id(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def draw(seed: int, step: int, stream: str) -> float:
    """A uniform [0, 1) number that depends only on (seed, step, stream)."""
    return float(np.random.default_rng([seed, step, stream_id(stream)]).random())


def step_key(root: jax.Array, step: int, stream: str) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(root, stream_id(stream)), step)


class BatchPlan:
    """Builds each step's batch: dataset rows and, where the method asks, samples."""

    def __init__(self, config, data: TrainData, models, mesh, rows, tokenizer, root_key):
        self.config = config
        self.data = data
        self.models = models
        self.rows = rows
        self.root = root_key
        s = config.sampling
        self.sampling = SamplingConfig(
            max_new_tokens=int(s.max_new_tokens),
            temperature=float(s.temperature),
            top_k=int(s.top_k),
            top_p=float(s.top_p),
            eos_ids=models.student.config.eos_token_ids,
            pad_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        )
        self.student_sampler = Sampler(models.student.config, mesh=mesh)
        self.teacher_sampler = None
        if config.method == "gkd" and config.gkd.seq_kd:
            self.teacher_sampler = Sampler(models.teacher.config, mesh=mesh)

    def _sample(self, who: str, params, step: int) -> tuple[dict, dict]:
        tokens, mask = self.data.next_prompts(self.rows)
        sampler = self.student_sampler if who == "student" else self.teacher_sampler
        key = step_key(self.root, step, f"sample_{who}")
        jax.block_until_ready(params)  # time the sampling alone, not the step before it
        start = time.perf_counter()
        out = sampler(params, tokens, mask, key, self.sampling)
        jax.block_until_ready(out.tokens)
        seconds = time.perf_counter() - start
        batch = {
            "prompt_tokens": out.prompt_tokens,
            "prompt_mask": out.prompt_mask,
            "tokens": out.tokens,
            "mask": out.mask,
        }
        rows, prompt = tokens.shape
        model = self.models.student if who == "student" else self.models.teacher
        n_steps = int(out.num_steps)
        flops = flops_lib.sampling_flops(
            model.config, rows, prompt, self.sampling.max_new_tokens, n_steps
        )
        return batch, {"sampling_s": seconds, "flops": flops}

    def batch(self, step: int, state: RunState, frozen: dict) -> tuple[dict, dict]:
        """The batch of 0-based `step` and its host info ('sampling_s', 'flops')."""
        c, seed = self.config, int(self.config.seed)
        info = {"sampling_s": 0.0, "flops": 0.0}
        batch: dict[str, Any] = {}

        def sample(who, params):
            out, host = self._sample(who, params, step)
            info["sampling_s"] += host["sampling_s"]
            info["flops"] += host["flops"]
            return out

        if c.method == "gkd":
            if draw(seed, step, "gkd") < float(c.gkd.lmbda):
                batch["off"] = sample("student", state.student.params)
            elif c.gkd.seq_kd:
                batch["off"] = sample("teacher", frozen["teacher"])
            else:
                batch["off"] = self.data.next_off(self.rows)
        else:
            batch["off"] = self.data.next_off(self.rows)
            if c.method == "classkd" and draw(seed, step, "classkd") < float(c.classkd.lmbda):
                batch["on"] = sample("student", state.student.params)
        if c.method == "classkd":
            batch["control"] = objectives.control(c, step)
        return batch, info
