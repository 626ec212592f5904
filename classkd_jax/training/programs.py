"""Every program a training run compiles, built abstractly for any mesh.

    plan = programs.plan(config, mesh)        # no weights, no data, no network
    for program in plan.programs:
        compiled = program.lower().compile()

The same builders as the trainer's (`StepBuilder`, `Sampler`, the
validator's dev-loss sums, MiniLLM's scorer, SeqKD's generation), fed
`jax.ShapeDtypeStruct`s with the run's shardings instead of arrays: the
states from `jax.eval_shape`, the batches from the config's shapes. Which
programs exist follows the config the way the run's choices do:

  train step   one per batch structure the method can draw (`rollout.BatchPlan`):
               each off-policy length bucket; with samples, each prompt bucket;
               with `data.lm_path`, the LM stream beside them
  sampler      the on-policy sampler per prompt bucket (teacher-mixed for MiniLLM,
               the teacher's for GKD's seq_kd)
  scorer       MiniLLM's rollout scoring per rollout width
  seqkd        the teacher's generation per prompt bucket of `complete_token_ids`
  greedy       validation's greedy sampler per prompt bucket
  dev_loss     validation's dev sums per length bucket

With `teacher.tokenizer` (a teacher with another tokenizer: KD, GKD, ClassKD)
each batch the teacher reads also holds its own rows and the chunk arrays
(`data.cross_rows.CROSS_KEYS`), so a train step exists per pair of (student,
teacher) row buckets, named `step off=T_s teacher=T_t` (samples: `P=P
teacher=T_t`); the teacher is built on its own vocabulary and validation
has no dev KD (as the trainer's).

With `teacher.cache` (KD, DistiLLM, ClassKD) the dataset rows also hold the
cached draws (`CACHE_KEYS`, `[B, T, W]`) and, as in the trainer, the teacher
is an argument only of the programs whose batches are new tokens (ClassKD's
on-policy steps, DistiLLM's samples): a cached KD step holds no teacher
matmul, and validation's dev KD reads the cache's dev draws.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from classkd_jax import sharding
from classkd_jax.cli import UserError
from classkd_jax.models import ModelConfig, abstract_params
from classkd_jax.sampling import Sampler, SamplingConfig, default_buckets
from classkd_jax.teacher_cache.builder import cache_temperature
from classkd_jax.training import checks, objectives, roles
from classkd_jax.training import flops as flops_lib
from classkd_jax.training.data import SCORED_KEYS, teacher_sample_buckets
from classkd_jax.training.run import build_models, cross_tokenizer
from classkd_jax.training.state import abstract_run_state, params_shardings, run_state_shardings
from classkd_jax.training.step import CACHE_KEYS, Models, StepBuilder
from classkd_jax.training.validation import _dev_sums


@dataclasses.dataclass(frozen=True)
class Program:
    """One compiled program of the run.

    Attributes:
      name: e.g. 'step off=512 on=256', 'sampler P=256'.
      kind: 'step' | 'sampler' | 'scorer' | 'seqkd' | 'greedy' | 'dev_loss'.
      lower: () -> `jax.stages.Lowered`, traced under the mesh's sharding rules.
      flops: counted FLOPs of one call (`training/flops.py`), whole batch.
      donates: whether it donates its first argument (the state: train steps).
      steps: samplers: decode steps per call (`max_new_tokens`); 0 otherwise.
      step_flops: samplers: counted FLOPs of one decode step (one token for
        every row), whole batch; 0 otherwise.
    """

    name: str
    kind: str
    lower: Callable[[], Any]
    flops: float
    donates: bool = False
    steps: int = 0
    step_flops: float = 0.0


@dataclasses.dataclass(frozen=True)
class Plan:
    """The run's models (`step.Models`), its mesh, its programs and its abstract
    `RunState` (sharded `ShapeDtypeStruct`s: what the steps donate)."""

    models: Models
    mesh: jax.sharding.Mesh
    programs: tuple[Program, ...]
    state: Any = None


def abstract(shapes: Any, shardings: Any) -> Any:
    """`ShapeDtypeStruct`s of `shapes` carrying `shardings` (same tree)."""
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )


def abstract_model_params(config: ModelConfig, mesh) -> Any:
    return abstract(nn.meta.unbox(abstract_params(config)), params_shardings(config, mesh))


def state_bytes(state: Any) -> int:
    """Bytes per device of the abstract `state` as the target lays it out (tiles
    padded): the arguments of a program that only passes it through."""
    shardings = jax.tree.map(lambda a: a.sharding, state)
    identity = jax.jit(lambda s: s, out_shardings=shardings, donate_argnums=0)
    return int(identity.lower(state).compile().memory_analysis().argument_size_in_bytes)


def _used(buckets, limit: int) -> tuple[int, ...]:
    """The buckets a batch can take when nothing is longer than `limit`."""
    buckets = sorted(int(b) for b in buckets)
    top = next((b for b in buckets if b >= limit), buckets[-1])
    return tuple(b for b in buckets if b <= top)


def _rows(shape: tuple[int, ...], dtype, rows) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=rows)


def _scored(batch: int, length: int, rows) -> dict:
    out = {k: _rows((batch, length), jnp.int32, rows) for k in SCORED_KEYS}
    out["loss_mask"] = _rows((batch, length), jnp.float32, rows)
    return out


def _samples(batch: int, prompt: int, new: int, rows) -> dict:
    return {
        "prompt_tokens": _rows((batch, prompt), jnp.int32, rows),
        "prompt_mask": _rows((batch, prompt), jnp.bool_, rows),
        "tokens": _rows((batch, new), jnp.int32, rows),
        "mask": _rows((batch, new), jnp.bool_, rows),
    }


def _cross(batch: int, length_s: int, length_t: int, rows) -> dict:
    """The `CROSS_KEYS` arrays a batch of `[B, T_s]` student rows carries for a teacher
    with another tokenizer (`cross_rows.row_arrays`): its rows `teacher_*` `[B, T_t]`
    (as `_scored`), `teacher_chunk` `[B, T_t]` int32, `student_chunk` and
    `teacher_index` `[B, T_s]` int32, `chunk_mask`, `first_mask` and `exact_mask`
    `[B, T_s]` float32."""
    out = {f"teacher_{k}": v for k, v in _scored(batch, length_t, rows).items()}
    out["teacher_chunk"] = _rows((batch, length_t), jnp.int32, rows)
    for key in ("student_chunk", "teacher_index"):
        out[key] = _rows((batch, length_s), jnp.int32, rows)
    for key in ("chunk_mask", "first_mask", "exact_mask"):
        out[key] = _rows((batch, length_s), jnp.float32, rows)
    return out


def _cache(batch: int, length: int, width: int, rows) -> dict:
    """The `CACHE_KEYS` arrays `[B, T, W]` a batch read from `teacher.cache` carries
    (`teacher_cache.Lookup.batch_arrays`): ids and counts int32, log-probs float32."""
    out = {k: _rows((batch, length, width), jnp.int32, rows) for k in CACHE_KEYS}
    out["cache_logp"] = _rows((batch, length, width), jnp.float32, rows)
    return out


def cache_width(config) -> int:
    """W of the run's `teacher.cache` arrays: the draws N (`teacher_cache.num_samples`),
    or k with `teacher_cache.loss='topk'`; 0 when the dataset rows' teacher is live."""
    if not objectives.uses_cache(config):
        return 0
    t = config.teacher_cache
    return int(t.top_k) if t.loss == "topk" else int(t.num_samples)


def _control(config, replicated) -> dict:
    values = objectives.control(config, 0)
    return {
        k: jax.ShapeDtypeStruct((), np.asarray(v).dtype, sharding=replicated)
        for k, v in values.items()
    }


class _Builder:
    """Collects the programs of one config on one mesh."""

    def __init__(self, config, models: Models, mesh):
        self.c, self.models, self.mesh = config, models, mesh
        self.builder = StepBuilder(config, models, mesh)
        self.rows, self.replicated = self.builder.rows, self.builder.replicated
        self.programs: list[Program] = []
        self.state = None
        d = config.data
        self.lengths = _used(d.length_buckets, int(d.max_length))
        self.prompts = _used(d.prompt_buckets, int(d.max_prompt_length))
        self.batch = int(d.batch_size)
        self.sampling_batch = int(config.sampling.batch_size) or self.batch
        self.new = int(config.sampling.max_new_tokens)
        self.layout = str(config.sampling.decode_layout)
        key = jax.eval_shape(lambda: jax.random.key(0))
        self.key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=self.replicated)
        self.student = abstract_model_params(models.student.config, mesh)
        self.teacher = None
        if models.teacher is not None:
            self.teacher = abstract_model_params(models.teacher.config, mesh)
        # with teacher.cache the dataset rows carry the teacher's draws and, unless a
        # batch of new tokens needs it, the run loads no teacher (`checks.live_teacher`)
        self.cache_width = cache_width(config)
        self.live_teacher = self.teacher is not None and checks.live_teacher(config)

    # ----- train steps -----

    def steps(self) -> None:
        m = self.models
        student = (m.student.config, m.student.optimizer)
        classmate = None if m.classmate is None else (m.classmate.config, m.classmate.optimizer)
        state = abstract_run_state(self.mesh, student, classmate)
        frozen = {"teacher": self.teacher} if self.live_teacher else {}
        frozen_sh = jax.tree.map(lambda a: a.sharding, frozen)
        step = self.builder.jit(run_state_shardings(self.mesh, student, classmate), frozen_sh)
        self.state = state
        for name, batch in self._step_batches():
            jitted = step.jitted(batch)

            def lower(jitted=jitted, batch=batch):
                with sharding.activation_sharding(self.mesh):
                    return jitted.lower(state, frozen, batch, self.key)

            self.programs.append(Program(name, "step", lower, self._step_flops(batch), True))

    def _offs(self) -> list[tuple[str, dict]]:
        """(name, abstract batch) of the dataset rows per length bucket; with a teacher
        of another tokenizer per (student, teacher) bucket pair, ascending (its rows
        take `data.length_buckets` too, `data.build_cross`)."""
        if self.models.cross is None:
            w, b, rows = self.cache_width, self.batch, self.rows
            cache = lambda t: _cache(b, t, w, rows) if w else {}  # noqa: E731
            return [(f"off={t}", {**_scored(b, t, rows), **cache(t)}) for t in self.lengths]
        return [
            (
                f"off={s} teacher={t}",
                {**_scored(self.batch, s, self.rows), **_cross(self.batch, s, t, self.rows)},
            )
            for s in self.lengths
            for t in self.lengths
        ]

    def _sample_batches(self) -> list[tuple[str, dict]]:
        """(name, abstract batch) of the student's samples per prompt bucket; with a
        teacher of another tokenizer per (prompt, teacher row) bucket pair, ascending
        (the samples re-tokenised for it, `data.cross_samples`, in
        `data.teacher_sample_buckets`)."""
        b, new, rows = self.sampling_batch, self.new, self.rows
        if self.models.cross is None:
            return [(f"P={p}", _samples(b, p, new, rows)) for p in self.prompts]
        teacher = sorted(teacher_sample_buckets(self.c))
        return [
            (f"P={p} teacher={t}", {**_samples(b, p, new, rows), **_cross(b, p + new, t, rows)})
            for p in self.prompts
            for t in teacher
        ]

    def _step_batches(self):
        """(name, abstract batch) of every batch structure `BatchPlan` can build."""
        c, rows = self.c, self.rows
        offs, samples = self._offs(), self._sample_batches()
        out = []
        if c.method == "classkd":
            lmbda, control = float(c.classkd.lmbda), _control(c, self.replicated)
            for name, off in offs:
                if lmbda < 1:
                    out.append((f"step {name}", {"off": off, "control": control}))
                if lmbda > 0:
                    for sname, on in samples:
                        out.append(
                            (f"step {name} on {sname}", {"off": off, "on": on, "control": control})
                        )
        elif c.method == "gkd":
            if float(c.gkd.lmbda) < 1 and not c.gkd.seq_kd:
                out += [(f"step {n}", {"off": b}) for n, b in offs]
            if float(c.gkd.lmbda) > 0 or c.gkd.seq_kd:
                out += [(f"step samples {n}", {"off": b}) for n, b in samples]
        elif c.method == "distillm":
            out += [(f"step {n}", {"off": b}) for n, b in offs]
            out += [(f"step samples {n}", {"off": b}) for n, b in samples]
        elif c.method == "minillm":
            for p in self.prompts:
                out.append((f"step rollouts W={p + self.new}", {"on": self._rollout(p)}))
        else:  # sft, kd, seqkd
            out += [(f"step {n}", {"off": b}) for n, b in offs]
        if objectives.with_misfeedback(c):  # `+mf`: the schedule's scalars, every step
            control = _control(c, self.replicated)
            out = [(n, {**b, "control": control}) for n, b in out]
        if c.method in ("distillm", "minillm") and c.data.lm_path:
            d = c.data
            lm = _scored(
                int(d.lm_batch_size) or self.batch, int(d.lm_max_length) or int(d.max_length), rows
            )
            out = [(f"{n} +lm", {**b, "lm": lm}) for n, b in out]
        return out

    def _rollout(self, prompt: int) -> dict:
        """MiniLLM's scored rollouts of width prompt + new tokens (the scorer's output)."""
        samples = _samples(self.batch, prompt, self.new, self.rows)
        scorer = self._scorer_program()
        shapes = jax.eval_shape(scorer, self.student, self.teacher, samples)
        return jax.tree.map(lambda s: _rows(s.shape, s.dtype, self.rows), shapes)

    def _step_flops(self, batch) -> float:
        """The trainer's count (`StepBuilder._flops`): the student's forward and
        backward on each batch its parts read, each frozen forward once (a teacher
        with another tokenizer on its own rows `[B, T_t]`; with ALM also the
        teacher's, the student's and the classmate's scoring forwards), and for
        ClassKD the classmate's measuring forward and (counted as taken) update."""
        m, c = self.models, self.c
        shapes = {k: v["tokens"].shape for k, v in batch.items() if k != "control"}
        if "prompt_tokens" in batch.get("on", batch.get("off", {})):
            key = "on" if "on" in batch else "off"
            b, p = batch[key]["prompt_tokens"].shape
            shapes[key] = (b, p + batch[key]["tokens"].shape[1])
        parts = self.builder._student_parts({k: v for k, v in batch.items() if k != "control"})
        # a teacher with another tokenizer reads its own rows [B, T_t]
        teacher = {k: batch[k]["teacher_tokens"].shape for k in shapes} if m.cross else shapes
        total, frozen = 0.0, set()
        for part in parts:
            if part.batch not in frozen:
                total += 3 * flops_lib.forward_flops(m.student.config, *shapes[part.batch])
            frozen.add(part.batch)
        others = {(r, p.batch) for p in parts for r in p.others}
        for role, name in others:
            shape = teacher[name] if role == "teacher" else shapes[name]
            total += flops_lib.forward_flops(getattr(m, role).config, *shape)
        if m.cross is not None and m.cross.loss == "alm":  # the scoring forwards, per batch:
            for name, shape in shapes.items():  # the teacher's, the student's, the classmate's
                total += flops_lib.forward_flops(m.teacher.config, *teacher[name])
                total += flops_lib.forward_flops(m.student.config, *shape)
                if m.classmate is not None and name == "off":
                    total += flops_lib.forward_flops(m.classmate.config, *shape)
        if m.classmate is not None:
            shape = shapes[objectives.classmate_batch(c)]
            total += 3 * flops_lib.forward_flops(m.classmate.config, *shape)
        return total

    # ----- sampling -----

    def _sampling_config(self, new: int, **kw) -> SamplingConfig:
        s = self.c.sampling
        return SamplingConfig(
            max_new_tokens=new,
            temperature=float(s.temperature),
            top_k=int(s.top_k),
            top_p=float(s.top_p),
            eos_ids=self.models.student.config.eos_token_ids,
            pad_id=0,
            **kw,
        )

    def _sampler(self, kind, name, sampler, params, cfg, batch, prompts, teacher=None):
        batch = -(-batch // sampler.batch_shards) * sampler.batch_shards
        teacher_config = self.models.teacher.config if teacher is not None else None
        for p in prompts:
            tokens = _rows((batch, p), jnp.int32, self.rows)
            mask = _rows((batch, p), jnp.bool_, self.rows)
            valid = _rows((batch,), jnp.bool_, self.rows)
            jitted = sampler.jitted(cfg)

            def lower(jitted=jitted, tokens=tokens, mask=mask, valid=valid):
                with sharding.activation_sharding(self.mesh):
                    return jitted.lower(params, teacher, tokens, mask, valid, self.key)

            new = cfg.max_new_tokens
            flops = flops_lib.sampling_flops(sampler.config, batch, p, new, new)
            step = flops_lib.forward_flops(sampler.config, batch, 1, context=p + new)
            if teacher is not None:  # the teacher's cache runs beside the student's
                flops *= 2  # (an upper bound)
                step += flops_lib.forward_flops(teacher_config, batch, 1, context=p + new)
            self.programs.append(
                Program(f"{name} P={p}", kind, lower, flops, steps=new, step_flops=step)
            )

    def samplers(self) -> None:
        c, m = self.c, self.models
        if not checks.samples_prompts(c):
            return
        cfg = self._sampling_config(self.new)
        if c.method == "minillm" and float(c.minillm.teacher_mix) > 0:
            sampler = Sampler(
                m.student.config,
                mesh=self.mesh,
                teacher_config=m.teacher.config,
                decode_layout=self.layout,
            )
            mixed = dataclasses.replace(
                cfg, teacher_mix=float(c.minillm.teacher_mix), mix_vocab=int(m.vocab_size or 0)
            )
            self._sampler(
                "sampler",
                "sampler (teacher-mixed)",
                sampler,
                self.student,
                mixed,
                self.sampling_batch,
                self.prompts,
                self.teacher,
            )
        else:
            sampler = Sampler(m.student.config, mesh=self.mesh, decode_layout=self.layout)
            self._sampler(
                "sampler", "sampler", sampler, self.student, cfg, self.sampling_batch, self.prompts
            )
        if c.method == "gkd" and c.gkd.seq_kd:
            sampler = Sampler(m.teacher.config, mesh=self.mesh, decode_layout=self.layout)
            self._sampler(
                "sampler",
                "teacher sampler",
                sampler,
                self.teacher,
                cfg,
                self.sampling_batch,
                self.prompts,
            )

    def scorer(self) -> None:
        if self.c.method != "minillm":
            return
        program = self._scorer_program()
        for p in self.prompts:
            samples = _samples(self.sampling_batch, p, self.new, self.rows)

            def lower(samples=samples):
                with sharding.activation_sharding(self.mesh):
                    return program.lower(self.student, self.teacher, samples)

            rows, width = self.sampling_batch, p + self.new
            flops = sum(
                flops_lib.forward_flops(r.config, rows, width)
                for r in (self.models.student, self.models.teacher)
            )
            self.programs.append(Program(f"scorer W={width}", "scorer", lower, flops))

    def _scorer_program(self):
        student_sh = jax.tree.map(lambda a: a.sharding, self.student)
        teacher_sh = jax.tree.map(lambda a: a.sharding, self.teacher)
        return self.builder.scorer(student_sh, teacher_sh).jitted

    def seqkd(self) -> None:
        """The teacher's answers (`seqkd.teacher_dataset` -> `complete_token_ids`:
        default buckets up to the longest prompt, `seqkd.batch_size` rows)."""
        c, m = self.c, self.models
        if c.method != "seqkd":
            return
        limit = m.teacher.config.max_position_embeddings - self.new
        buckets = _used(default_buckets(limit), int(c.data.max_prompt_length))
        cfg = SamplingConfig(
            max_new_tokens=self.new,
            greedy=bool(c.seqkd.greedy),
            temperature=float(c.sampling.temperature),
            top_k=int(c.sampling.top_k),
            top_p=float(c.sampling.top_p),
            eos_ids=(m.teacher.config.eos_token_ids or (0,))[:1],
            pad_id=0,
        )
        sampler = Sampler(m.teacher.config, mesh=self.mesh, decode_layout=self.layout)
        self._sampler(
            "seqkd",
            "seqkd generation",
            sampler,
            self.teacher,
            cfg,
            int(c.seqkd.batch_size),
            buckets,
        )

    # ----- validation -----

    def validation(self) -> None:
        c, m = self.c, self.models
        if c.eval_every <= 0:
            return
        if int(c.eval.num_examples) > 0:
            new = int(c.eval.max_new_tokens)
            cfg = SamplingConfig(
                max_new_tokens=new, greedy=True, eos_ids=m.student.config.eos_token_ids, pad_id=0
            )
            sampler = Sampler(m.student.config, mesh=self.mesh, decode_layout=self.layout)
            self._sampler(
                "greedy", "greedy", sampler, self.student, cfg, int(c.eval.batch_size), self.prompts
            )
        # the dev KD's teacher: none with another tokenizer (it scores other tokens),
        # nor when the run does not load it (teacher.cache): then the cache's dev
        # draws stand in for it, when drawn at temperature 1 (`run.open_cache`)
        seen = m.teacher if m.cross is None and self.live_teacher else None
        teacher = None if seen is None else self.teacher
        teacher_cfg = None if seen is None else seen.config
        draws = 0
        if seen is None and self.cache_width and cache_temperature(c) == 1.0:
            draws = int(c.teacher_cache.num_samples)
        student_sh = jax.tree.map(lambda a: a.sharding, self.student)
        teacher_sh = None if teacher is None else jax.tree.map(lambda a: a.sharding, teacher)
        sums = jax.jit(
            _dev_sums(m.student.config, teacher_cfg, self.builder.path, draws),
            in_shardings=(student_sh, teacher_sh, self.rows),
            out_shardings=self.replicated,
        )
        rows = int(c.data.eval_batch_size)
        for t in self.lengths:
            batch = _scored(rows, t, self.rows)
            if draws:
                batch.update(_cache(rows, t, draws, self.rows))

            def lower(batch=batch):
                with sharding.activation_sharding(self.mesh):
                    return sums.lower(self.student, teacher, batch)

            flops = sum(
                flops_lib.forward_flops(r.config, rows, t)
                for r in (m.student, seen)
                if r is not None
            )
            self.programs.append(Program(f"dev_loss T={t}", "dev_loss", lower, flops))


def largest(programs: Sequence[Program]) -> tuple[Program, ...]:
    """Of each family of programs (names equal but for their bucket sizes), the
    one with the largest buckets: the programs that decide whether a run fits
    (memory grows with every bucket), for quick checks of large configs."""
    last = {re.sub(r"\d+", "N", p.name): p for p in programs}  # buckets come in ascending order
    keep = set(map(id, last.values()))
    return tuple(p for p in programs if id(p) in keep)


def _vocab(config, tokenizer, sources: dict, cross: bool) -> int:
    """The student's scored vocabulary, as the trainer's (`roles.scored_vocab` over the
    heads the step scores on its tokenizer: not a teacher with another tokenizer's,
    nor SeqKD's, gone before training); a hub tokenizer's size from its preset as is."""
    if isinstance(tokenizer, roles.ConfigVocab):
        return len(tokenizer)
    skip = "teacher" if cross or config.method == "seqkd" else None
    return roles.scored_vocab(
        tokenizer, [s.config.vocab_size for r, s in sources.items() if r != skip]
    )


def _cross_tokenizer(config, sources: dict, vocab: int, tokenizer, teacher_tokenizer):
    """`run.cross_tokenizer` as the trainer builds it; 'exact' pairs the two
    vocabularies' entries, so it needs the student's tokenizer itself too."""
    loss = config.cross_tokenizer.loss
    if isinstance(tokenizer, roles.ConfigVocab) and loss in ("exact", "projected"):
        hub = config.tokenizer or config.student.path
        raise UserError(
            f"cross_tokenizer.loss={loss!r} maps the two tokenizers' entries: compiling it "
            f"needs the student's tokenizer locally too ({hub} is a hub name); pass "
            "--config.tokenizer=DIR"
        )
    return cross_tokenizer(config, sources, vocab, tokenizer, teacher_tokenizer)


def plan(config, mesh) -> Plan:
    """The run's programs on `mesh` (see the module docstring). Roles whose `path`
    is a hub name take their preset's shapes; nothing is read from the network
    (a hub `teacher.tokenizer` comes from the Hugging Face cache, else one line)."""
    tokenizer, where = roles.resolve_tokenizer(config, offline=True)
    teacher_tok = roles.resolve_teacher_tokenizer(config, offline=True)
    context, why = checks.context_length(config)
    sources = roles.plan_roles(
        config, tokenizer, where, context, why, offline=True, teacher_tokenizer=teacher_tok
    )
    steps = int(config.steps) or 1000  # the schedules' horizon changes no shape
    vocab = _vocab(config, tokenizer, sources, teacher_tok is not None)
    cross = None
    if teacher_tok is not None and config.method != "seqkd":  # SeqKD reads answers as text
        cross = _cross_tokenizer(config, sources, vocab, tokenizer, teacher_tok[0])
    models = build_models(config, sources, steps, vocab, cross)
    b = _Builder(config, models, mesh)
    if config.method == "seqkd":  # the teacher answers before training, then leaves
        b.seqkd()
        student_only = {k: v for k, v in sources.items() if k != "teacher"}
        b.models = models = build_models(config, student_only, steps, vocab)
        b.builder = StepBuilder(config, models, mesh)
        b.teacher = None
    b.steps()
    b.samplers()
    b.scorer()
    b.validation()
    return Plan(models, mesh, tuple(b.programs), b.state)
