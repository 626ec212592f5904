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
  seqkd     'off': the next packed batch of the teacher-generated set
  distillm  'off': fresh student samples (pushed into the replay buffer), a
            replay batch, or the next dataset batch, as the adaptive
            schedule draws (`classkd_jax.training.distillm`)
  minillm   'on': a minibatch of the phase's scored teacher-mixed rollouts
            (collected at each phase's first step, `classkd_jax.training.minillm`)
  distillm and minillm with `data.lm_path` also get 'lm': the next packed
  plain-text batch.
  classkd, and gkd / distillm / minillm with misfeedback.weight > 0, also get
  'control': the schedule's scalars (`objectives.control`; the misfeedback
  weight is 0 on a step that does not train on the student's samples).

Samples come from the jitted `lax.while_loop` sampler
(`classkd_jax.sampling.Sampler`), with the student's current params, rows
sharded over the data axes; they stay on device (DistiLLM's buffer and
MiniLLM's store keep a host copy). What the plan holds between steps (the
buffer, the store, phi) is `state()` / `restore()`, part of every checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from typing import Any

import jax
import numpy as np

from classkd_jax import sharding
from classkd_jax.data import to_global
from classkd_jax.distributed import agreed
from classkd_jax.sampling import Sampler, SamplingConfig
from classkd_jax.training import checks, host_state, objectives
from classkd_jax.training import flops as flops_lib
from classkd_jax.training.data import TrainData
from classkd_jax.training.distillm import AdaptiveSchedule
from classkd_jax.training.minillm import Phases, RolloutStore
from classkd_jax.training.replay import ReplayBuffer
from classkd_jax.training.state import RunState

DISTILLM_KINDS = ("sample", "replay", "data")  # AdaptiveSchedule.choose's answers
STREAMS = ("gkd", "classkd", "distillm", "replay", "sample_student", "sample_teacher", "step")


def stream_id(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def draw(seed: int, step: int, stream: str) -> float:
    """A uniform [0, 1) number that depends only on (seed, step, stream)."""
    return float(np.random.default_rng([seed, step, stream_id(stream)]).random())


def step_key(root: jax.Array, step: int, stream: str) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(root, stream_id(stream)), step)


class BatchPlan:
    """Builds each step's batch: dataset rows and, where the method asks, samples."""

    def __init__(
        self,
        config,
        data: TrainData,
        models,
        mesh,
        rows,
        tokenizer,
        root_key,
        *,
        total_steps: int,
        scorer=None,
    ):
        self.config = config
        self.total_steps = int(total_steps)
        self.sampling_batch = int(config.sampling.batch_size) or int(config.data.batch_size)
        self.data = data
        self.models = models
        self.rows = rows
        self.root = root_key
        self.scorer = scorer  # MiniLLM: StepBuilder.scorer(...)
        s = config.sampling
        self.sampling = SamplingConfig(
            max_new_tokens=int(s.max_new_tokens),
            temperature=float(s.temperature),
            top_k=int(s.top_k),
            top_p=float(s.top_p),
            eos_ids=models.student.config.eos_token_ids,
            pad_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        )
        layout = str(s.decode_layout)
        self.student_sampler = Sampler(models.student.config, mesh=mesh, decode_layout=layout)
        self.teacher_sampler = None
        if config.method == "gkd" and config.gkd.seq_kd:
            self.teacher_sampler = Sampler(models.teacher.config, mesh=mesh, decode_layout=layout)
        self.schedule = self.buffer = self.store = self.phases = None
        prompt_width = max(int(b) for b in config.data.prompt_buckets)
        if config.method == "distillm":
            d = config.distillm
            self.schedule = AdaptiveSchedule(
                float(d.init_phi), float(d.loss_threshold), float(d.phi_step), bool(d.adaptive)
            )
            capacity = checks.replay_capacity(config)
            self.buffer = ReplayBuffer(capacity, prompt_width, int(s.max_new_tokens))
            self.kinds = {"sample": 0, "replay": 0, "data": 0}
        if config.method == "gkd" and config.gkd.replay:  # DistiLLM's mixed-jsd schedule
            capacity = checks.replay_capacity(config)
            self.buffer = ReplayBuffer(capacity, prompt_width, int(s.max_new_tokens))
        if config.method == "minillm":
            m = config.minillm
            self.mixed_sampling = dataclasses.replace(
                self.sampling,
                teacher_mix=float(m.teacher_mix),
                mix_vocab=int(models.vocab_size or 0),
            )
            if float(m.teacher_mix) > 0:
                self.student_sampler = Sampler(
                    models.student.config,
                    mesh=mesh,
                    teacher_config=models.teacher.config,
                    decode_layout=layout,
                )
            self.phases = Phases(
                int(m.num_rollouts),
                int(config.data.batch_size),
                int(m.ppo_epochs),
                int(config.seed),
            )
            self.store = RolloutStore(prompt_width + int(s.max_new_tokens))

    def _sample(self, who: str, params, step: int, teacher=None, index: int = 0):
        cross = who == "student" and self.data.cross_samples is not None
        if cross:  # a teacher with another tokenizer: which examples the prompts are
            tokens, mask, entries = self.data.next_prompts_indexed(self.rows)
        else:
            tokens, mask = self.data.next_prompts(self.rows)
        sampler = self.student_sampler if who == "student" else self.teacher_sampler
        key = step_key(self.root, step, f"sample_{who}")
        if index:  # several sampling calls in one step (MiniLLM's rollouts)
            key = jax.random.fold_in(key, index)
        jax.block_until_ready(params)  # time the sampling alone, not the step before it
        start = time.perf_counter()
        if teacher is not None:
            out = sampler(params, tokens, mask, key, self.mixed_sampling, teacher_params=teacher)
        else:
            out = sampler(params, tokens, mask, key, self.sampling)
        jax.block_until_ready(out.tokens)
        batch = {
            "prompt_tokens": out.prompt_tokens,
            "prompt_mask": out.prompt_mask,
            "tokens": out.tokens,
            "mask": out.mask,
        }
        if cross:  # decoded, re-tokenised and aligned on the host (counted as sampling)
            batch = self.data.add_teacher_to_samples(batch, entries, self.rows)
        seconds = time.perf_counter() - start
        rows, prompt = tokens.shape
        model = self.models.student if who == "student" else self.models.teacher
        n_steps = int(out.num_steps)
        flops = flops_lib.sampling_flops(
            model.config, rows, prompt, self.sampling.max_new_tokens, n_steps
        )
        if teacher is not None:  # the teacher's cache runs beside the student's
            flops += flops_lib.sampling_flops(
                self.models.teacher.config, rows, prompt, self.sampling.max_new_tokens, n_steps
            )
        return batch, {"sampling_s": seconds, "flops": flops}

    # ----- DistiLLM -----

    def _distillm(self, step: int, state: RunState, sample) -> tuple[dict, str]:
        c = self.config
        u = draw(int(c.seed), step, "distillm")
        kind = self.schedule.choose(
            u, step, self.total_steps, len(self.buffer), self.buffer.capacity
        )
        kind = DISTILLM_KINDS[agreed(DISTILLM_KINDS.index(kind))]
        if kind == "sample":
            out = sample("student", state.student.params)
            self.buffer.push(sharding.fetch(out))
            return out, kind
        if kind == "replay":
            return self._replay(step), kind
        return self.data.next_off(self.rows), kind

    def _replay(self, step: int) -> dict:
        """A uniform batch of distinct rows from the replay buffer (seeded by the step)."""
        c = self.config
        rng = np.random.default_rng([int(c.seed), step, stream_id("replay")])
        rows = self.buffer.sample(rng, int(c.data.batch_size), c.data.prompt_buckets)
        pi, pc = jax.process_index(), jax.process_count()
        local = {k: host_state.local_rows(v, pi, pc) for k, v in rows.items()}
        return to_global(local, self.rows)

    def start(self, dev_loss) -> None:
        """Before the first step (DistiLLM): the reference dev loss, `dev_loss()`."""
        if self.schedule is not None and self.schedule.adaptive and self.schedule.reference is None:
            self.schedule.start(dev_loss())

    def after_validation(self, result: dict) -> None:
        if self.schedule is not None and "dev_loss" in result:
            self.schedule.observe(float(result["dev_loss"]))

    # ----- MiniLLM -----

    def _collect(self, step: int, state: RunState, frozen: dict, info: dict) -> None:
        """The phase's rollouts: sampled (teacher-mixed), scored, stored on the host."""
        m = self.config.minillm
        teacher = frozen["teacher"] if float(m.teacher_mix) > 0 else None
        calls = int(m.num_rollouts) // self.sampling_batch
        self.store.begin(self.phases.phase(step))
        for i in range(calls):
            out, host = self._sample("student", state.student.params, step, teacher, index=i)
            start = time.perf_counter()
            scored = sharding.fetch(self.scorer(state.student.params, frozen["teacher"], out))
            info["sampling_s"] += host["sampling_s"] + time.perf_counter() - start
            rows, width = scored["tokens"].shape
            info["flops"] += (
                host["flops"]
                + flops_lib.forward_flops(self.models.student.config, rows, width)
                + flops_lib.forward_flops(self.models.teacher.config, rows, width)
            )
            self.store.add(scored)
        self.store.finish()

    def _minillm(self, step: int, state: RunState, frozen: dict, info: dict) -> dict:
        if self.store.phase != self.phases.phase(step):
            self._collect(step, state, frozen, info)
        new = int(self.config.sampling.max_new_tokens)
        widths = tuple(int(b) + new for b in self.config.data.prompt_buckets)
        rows = self.store.minibatch(self.phases.rows(step), widths)
        pi, pc = jax.process_index(), jax.process_count()
        return to_global({k: host_state.local_rows(v, pi, pc) for k, v in rows.items()}, self.rows)

    def report(self) -> dict:
        """Scalars of the plan's own state for the logs (DistiLLM's phi and buffer,
        the cumulative count of each kind of batch; MiniLLM's phase)."""
        out: dict = {}
        if self.schedule is not None:
            out["distillm_phi"] = self.schedule.phi
            out["replay_buffer_rows"] = len(self.buffer)
            for kind, count in sorted(self.kinds.items()):
                out[f"distillm_{kind}_steps"] = count
        elif self.buffer is not None:
            out["replay_buffer_rows"] = len(self.buffer)
        if self.store is not None and self.store.phase is not None:
            out["minillm_phase"] = self.store.phase
        return out

    # ----- what the plan holds between steps -----

    def state(self) -> dict:
        out = {}
        if self.schedule is not None:
            out["distillm"] = {
                **self.schedule.state(),
                "kinds": dict(self.kinds),
                "buffer": self.buffer.state(),
            }
        elif self.buffer is not None:  # GKD with DistiLLM's replay
            out["gkd"] = {"buffer": self.buffer.state()}
        if self.store is not None:
            out["minillm"] = self.store.state()
        return out

    def restore(self, state: dict) -> None:
        if self.schedule is not None:
            self.schedule.restore(state["distillm"])
            self.buffer.restore(state["distillm"]["buffer"])
            self.kinds = dict(state["distillm"]["kinds"])
        elif self.buffer is not None:
            self.buffer.restore(state["gkd"]["buffer"])
        if self.store is not None:
            self.store.restore(state.get("minillm"))

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

        student_samples = True  # whether the step trains on the student's samples
        if c.method == "minillm":
            batch["on"] = self._minillm(step, state, frozen, info)
        elif c.method == "distillm":
            batch["off"], kind = self._distillm(step, state, sample)
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            student_samples = kind != "data"
        elif c.method == "gkd":
            student_samples = agreed(draw(seed, step, "gkd") < float(c.gkd.lmbda))
            if student_samples:
                batch["off"] = sample("student", state.student.params)
                if self.buffer is not None:  # DistiLLM's mixed-jsd: push, then replay
                    self.buffer.push(sharding.fetch(batch["off"]))
                    batch["off"] = self._replay(step)
            elif c.gkd.seq_kd:
                batch["off"] = sample("teacher", frozen["teacher"])
            else:
                batch["off"] = self.data.next_off(self.rows)
        else:
            batch["off"] = self.data.next_off(self.rows)
            on_policy = c.method == "classkd" and (
                agreed(draw(seed, step, "classkd") < float(c.classkd.lmbda))
            )
            if on_policy:
                batch["on"] = sample("student", state.student.params)
        if objectives.has_classmate(c):
            batch["control"] = objectives.control(c, step, student_samples)
        if self.data.lm is not None:
            batch["lm"] = self.data.next_lm(self.rows)
        return batch, info
