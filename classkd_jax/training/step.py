"""The jitted, sharded train step of every method: `step(state, frozen, batch, rng)`.

    step = build_train_step(config, models, mesh)
    state, metrics = step(state, {"teacher": teacher_params}, batch, rng)

`state` is a `RunState` (donated), `frozen` the teacher's params (never
donated), `batch` a dict of row-sharded arrays:
  'off': a packed prompt+response batch from the data pipeline (`tokens`,
         `positions`, `segment_ids`, `targets`, `loss_mask`, all `[B, T]`);
  'on':  the student's samples as the sampler returns them (`prompt_tokens`,
         `prompt_mask` `[B, P]`, `tokens`, `mask` `[B, N]`), turned into a
         scored batch inside the step (`scored_batch`): the same layout, the
         response mask shifted with the labels.
Which keys are present is the batch's structure, so each combination is its
own compiled program (GKD trains on either; ClassKD on 'off' plus, on
on-policy steps, 'on').

Inside one program: the teacher's forward on every batch the objective
reads, the student's forward and backward, and for ClassKD (and a sampling
baseline's `+mf`: `objectives.with_misfeedback`) the classmate's forward on
the samples (misfeedback, no gradient) and its own update from the teacher
on its batch (`objectives.classmate_batch`), taken only when its schedule and the gap
control allow (`lax.cond`; the forward that measures the gap runs every step).
With `classkd.estimator='sequence'` the student also scores its samples once
without gradient, for the per-sequence rewards and baseline of the
REINFORCE estimate (`_sequence_extras`, `classkd_jax.losses.reinforce`).
No model forms `[B, T, V]` logits on the chunked path (`loss.impl`). With
`grad_accum = A` the rows are split into A interleaved micro-batches (each
device keeps its rows) and gradients are summed over a `lax.scan`; every
part's loss is divided by its token count over the whole batch, so the
result equals the unsplit step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from classkd_jax import losses, sharding
from classkd_jax.data.cross_rows import CROSS_KEYS
from classkd_jax.models import ModelConfig, Transformer, lm_head
from classkd_jax.sampling import data_axes
from classkd_jax.training import cross_objectives, minillm, objectives
from classkd_jax.training import flops as flops_lib
from classkd_jax.training.cross_objectives import CrossTokenizer
from classkd_jax.training.minillm import ROLLOUT_KEYS
from classkd_jax.training.objectives import Part
from classkd_jax.training.state import RunState, TrainState

Batch = dict[str, jax.Array]
SCORED_KEYS = ("tokens", "positions", "segment_ids", "targets", "loss_mask")
SAMPLE_KEYS = ("prompt_tokens", "prompt_mask", "tokens", "mask")
# The cached teacher's per-token arrays [B, T, W] an off-policy batch carries
# with teacher.cache (`classkd_jax.teacher_cache.lookup`).
CACHE_KEYS = objectives.CACHE_EXTRAS


@dataclasses.dataclass(frozen=True)
class Role:
    """What a step needs to know of a model: its config and, when trained, its optimizer."""

    config: ModelConfig
    optimizer: optax.GradientTransformation | None = None
    schedule: optax.Schedule | None = None


@dataclasses.dataclass(frozen=True)
class Models:
    """The run's roles (teacher None for SFT; classmate None but for ClassKD)."""

    student: Role
    teacher: Role | None = None
    classmate: Role | None = None
    vocab_size: int | None = None  # the shared real vocabulary (len(tokenizer))
    cross: CrossTokenizer | None = None  # a teacher with another tokenizer (KD, GKD, ClassKD)


def scored_batch(batch: Batch) -> Batch:
    """A scored `[B, T]` batch: returned as is, or built from sampler output.

    From samples: tokens = prompt ++ completion `[B, P + N]`, segment ids mark
    real tokens (left padding and the pad after EOS are 0), positions count
    real tokens as the sampler did, and `loss_mask[t]` is 1 where token t + 1
    is generated (EOS included): a one-token completion is scored at exactly
    one position, the last prompt token.
    """
    if "loss_mask" in batch:  # scored rows (with MiniLLM's rollout values, if any)
        return {
            k: batch[k] for k in SCORED_KEYS + ROLLOUT_KEYS + CROSS_KEYS + CACHE_KEYS if k in batch
        }
    missing = [k for k in SAMPLE_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch has neither {SCORED_KEYS} nor the sampler's {SAMPLE_KEYS}")
    prompt_mask = batch["prompt_mask"].astype(bool)
    mask = batch["mask"].astype(bool)
    tokens = jnp.concatenate([batch["prompt_tokens"], batch["tokens"]], axis=1).astype(jnp.int32)
    valid = jnp.concatenate([prompt_mask, mask], axis=1)
    response = jnp.concatenate([jnp.zeros_like(prompt_mask), mask], axis=1)
    targets, loss_mask = losses.next_token_targets(tokens, response)
    positions = jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)
    return {
        "tokens": tokens,
        "positions": positions,
        "segment_ids": valid.astype(jnp.int32),
        "targets": targets,
        "loss_mask": loss_mask,
        # A teacher with another tokenizer: its rows of the same samples (`cross_samples`).
        **{k: batch[k] for k in CROSS_KEYS if k in batch},
    }


def hidden_states(
    config: ModelConfig, params: Any, batch: Batch, dropout_rng: jax.Array | None = None
) -> jax.Array:
    """Final hidden states `[B, T, D]` (the LM head's input; no logits formed).

    With `dropout_rng` (a trained role's training forward) the config's dropout
    applies, its masks drawn from that key; without it, or when every rate is
    0, the forward is deterministic (frozen models, scoring, validation).
    """
    train = dropout_rng is not None and config.has_dropout
    out = Transformer(config).apply(
        {"params": params},
        batch["tokens"],
        batch["positions"],
        batch["segment_ids"],
        compute_logits=False,
        deterministic=not train,
        rngs={"dropout": dropout_rng} if train else None,
    )
    return out.hidden


# fold_in ids of the step's dropout keys: one stream per trained role, then per
# batch name within a role's objective (then per micro-batch: its index).
_ROLE_KEYS = {"student": 0, "classmate": 1}
_BATCH_KEYS = {"off": 0, "on": 1, "lm": 2}


def dropout_key(rng: jax.Array | None, *ids: int) -> jax.Array | None:
    """`rng` folded with `ids` in turn (None stays None)."""
    if rng is None:
        return None
    for i in ids:
        rng = jax.random.fold_in(rng, i)
    return rng


def head(config: ModelConfig, params: Any) -> tuple[jax.Array, bool]:
    """The output embedding in compute dtype, as stored: `([V, D], True)` for a
    tied embedding (vocab-major, so no transposed copy is made), else the
    untied head `([D, V], False)`.

    Inside `sharding.activation_sharding` the head is gathered over 'fsdp' for
    use (its vocabulary stays split as stored): the logits contract D, which
    the stored layout shards, and without the gather XLA would reshard the
    batch-sharded hidden states along D instead, a full copy on every device.
    """
    if config.tie_word_embeddings:
        w = params["embed"]["embedding"].astype(config.compute_dtype)
        return nn.with_logical_constraint(w, ("vocab", None)), True
    w = lm_head(params, config).astype(config.compute_dtype)
    return nn.with_logical_constraint(w, (None, "vocab")), False


@dataclasses.dataclass(frozen=True)
class LossPath:
    """How the token losses are computed (static).

    Attributes:
      impl: 'dense' or 'chunked'.
      chunk_size: tokens per chunk (chunked).
      vocab_size: the shared real vocabulary.
      vocab_major: (role, bool) pairs: whether that role's head is passed as
        stored `[V, D]` (tied embeddings) rather than `[D, V]`.
      softcaps: (role, cap) pairs: the role's final-logit soft-cap (Gemma 2), if any.
      vocabs: (role, size) pairs: a role's own real vocabulary where its tokenizer
        is not the trained model's (a cross-tokenizer teacher).
    """

    impl: str
    chunk_size: int
    vocab_size: int | None
    vocab_major: tuple[tuple[str, bool], ...] = ()
    softcaps: tuple[tuple[str, float | None], ...] = ()
    vocabs: tuple[tuple[str, int], ...] = ()

    def vocab_sizes(self, others: tuple[str, ...]) -> tuple[int, ...] | None:
        """Per model of a part (the trained one, then `others`) its vocabulary, or
        None when they all share `vocab_size`."""
        own = dict(self.vocabs)
        if not any(r in own for r in others):
            return None
        return (self.vocab_size,) + tuple(own.get(r, self.vocab_size) for r in others)

    def layout(self, role: str) -> bool:
        return dict(self.vocab_major).get(role, False)

    def softcap(self, role: str) -> float | None:
        return dict(self.softcaps).get(role)


def objective(
    params: Any,
    config: ModelConfig,
    parts: tuple[Part, ...],
    inputs: Mapping[str, Any],
    path: LossPath,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A trained role's loss: the sum over parts of (token-loss sum / part count).

    Args:
      params: the trained role's params (differentiated).
      config: its model config.
      parts: its objective (`objectives.*_parts`).
      inputs: 'batches' {name: scored batch}, 'others' {(role, name): hidden},
        'heads' {role: [D, V]}, 'extras' {name: {key: [B, T]}}, 'counts'
        {name: [] float32, the whole batch's scored tokens}.
      path: dense or chunked.
      rng: the role's dropout key for this (micro-)batch; None: no dropout.
        Each batch's forward folds in its own id (`_BATCH_KEYS`).

    Returns:
      (loss, {aux name: sum over the scored tokens}).
    """
    own = {}
    total = jnp.zeros((), jnp.float32)
    aux_sums: dict[str, jax.Array] = {}
    own_head, own_layout = head(config, params)
    for part in parts:
        batch = inputs["batches"][part.batch]
        if part.batch not in own:
            key = dropout_key(rng, _BATCH_KEYS.get(part.batch, len(_BATCH_KEYS)))
            own[part.batch] = hidden_states(config, params, batch, key)
        hiddens = (own[part.batch],) + tuple(inputs["others"][(r, part.batch)] for r in part.others)
        heads = (own_head,) + tuple(inputs["heads"][r] for r in part.others)
        extras = {k: inputs["extras"][part.batch][k] for k in part.extras}
        loss_sum, _, aux = losses.token_loss(
            part.token_fn,
            hiddens,
            heads,
            batch["loss_mask"],
            extras,
            impl=path.impl,
            vocab_size=path.vocab_size,
            vocab_sizes=path.vocab_sizes(part.others),
            trainable=(True,) + (False,) * len(part.others),
            chunk_size=path.chunk_size,
            vocab_major=(own_layout,) + tuple(path.layout(r) for r in part.others),
            softcaps=(config.final_logit_softcap,) + tuple(path.softcap(r) for r in part.others),
        )
        total = total + loss_sum / jnp.maximum(inputs["counts"][part.batch], 1.0)
        aux_sums.update(aux)
    return total, aux_sums


def _split(tree: Any, num: int) -> Any:
    """Rows `[B, ...]` -> `[num, B / num, ...]`, micro-batch j = rows j, j + num, ...

    Interleaved, so every device's contiguous block of rows contributes to every
    micro-batch and nothing moves between devices.
    """

    def one(x):
        x = x.reshape((x.shape[0] // num, num) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(one, tree)


def value_and_grad_accumulated(
    loss_fn: Callable[[Any, Any], tuple[jax.Array, Any]], params: Any, inputs: Any, steps: int
):
    """`value_and_grad(loss_fn, has_aux=True)(params, inputs)`, summed over `steps`
    micro-batches of the row-leading leaves of `inputs` (`rows` subtree). An
    `inputs['rng']` (dropout) is folded with the micro-batch's index."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    rng = inputs.get("rng")
    if steps == 1:
        return grad_fn(params, {**inputs, "rng": dropout_key(rng, 0)})
    rows, shared = inputs["rows"], {k: v for k, v in inputs.items() if k != "rows"}
    micro = _split(rows, steps)

    def body(carry, xs):
        mb, j = xs
        out = grad_fn(params, {**shared, "rows": mb, "rng": dropout_key(rng, j)})
        return jax.tree.map(jnp.add, carry, out), None

    first = jax.tree.map(lambda x: x[0], micro)
    shape = jax.eval_shape(grad_fn, params, {**shared, "rows": first, "rng": dropout_key(rng, 0)})
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape)
    out, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(steps, dtype=jnp.int32)))
    return out


def _apply(state: TrainState, grads: Any, role: Role) -> tuple[TrainState, dict]:
    lr = role.schedule(state.step)
    updates, opt_state = role.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"grad_norm": optax.tree.norm(grads), "lr": jnp.asarray(lr, jnp.float32)}
    return TrainState(state.step + 1, params, opt_state), metrics


def _role_loss(config, parts, path):
    """loss_fn(params, inputs) over inputs = {'rows': per-row arrays, 'heads',
    'counts', 'rng': the micro-batch's dropout key or None}."""

    def loss_fn(params, inputs):
        rows = inputs["rows"]
        full = {
            "batches": rows["batches"],
            "others": rows["others"],
            "extras": rows["extras"],
            "heads": inputs["heads"],
            "counts": inputs["counts"],
        }
        return objective(params, config, parts, full, path, inputs.get("rng"))

    return loss_fn


class StepBuilder:
    """Builds the jitted step of `config.method` for a mesh (one per run)."""

    def __init__(self, config, models: Models, mesh: Mesh):
        self.config = config
        self.models = models
        self.mesh = mesh
        impl = config.loss.impl
        if impl == "auto":
            vocab = models.vocab_size or models.student.config.vocab_size
            impl = "chunked" if vocab > int(config.loss.dense_max_vocab) else "dense"
        layouts = tuple(
            (role, getattr(models, role).config.tie_word_embeddings)
            for role in ("teacher", "classmate")
            if getattr(models, role) is not None
        )
        caps = tuple(
            (role, getattr(models, role).config.final_logit_softcap)
            for role in ("teacher", "classmate")
            if getattr(models, role) is not None
        )
        vocabs = (("teacher", models.cross.teacher_vocab),) if models.cross else ()
        self.path = LossPath(
            impl, int(config.loss.chunk_size), models.vocab_size, layouts, caps, vocabs
        )
        self.grad_accum = int(config.grad_accum)
        self.rows = NamedSharding(mesh, P(data_axes(mesh) or None))
        self.replicated = NamedSharding(mesh, P())

    # ----- pieces shared by the methods -----

    def _frozen_inputs(self, frozen, state: RunState, batches, parts):
        """Hidden states and heads of the frozen models the parts read, each model's
        forward computed once per batch (the teacher's on 'off' also serves the
        classmate's loss and the gap)."""
        others, heads = {}, {}
        sources = {"teacher": (self.models.teacher, lambda: frozen["teacher"])}
        if state.classmate is not None:
            sources["classmate"] = (
                self.models.classmate,
                lambda: jax.lax.stop_gradient(state.classmate.params),
            )
        for part in parts:
            for role in part.others:
                key = (role, part.batch)
                if key in others:
                    continue
                model, params = sources[role]
                p = params()
                batch = batches[part.batch]
                if role == "teacher" and self.models.cross is not None:
                    h = hidden_states(model.config, p, cross_objectives.teacher_batch(batch))
                    h = cross_objectives.gather_teacher(h, batch["teacher_index"])
                else:
                    h = hidden_states(model.config, p, batch)
                others[key] = jax.lax.stop_gradient(h)
                heads.setdefault(role, jax.lax.stop_gradient(head(model.config, p)[0]))
        return others, heads

    def _extras(self, batches, weight):
        """Per-token extras of each batch: targets, the misfeedback weight and, on
        MiniLLM's rollouts, the stored log-probs, weights and the advantages
        (computed here, over the whole minibatch, before any micro-batch split)."""
        out = {}
        for name, batch in batches.items():
            ex = {
                "targets": batch["targets"],
                "weight": jnp.broadcast_to(weight, batch["loss_mask"].shape).astype(jnp.float32),
            }
            ex.update({k: batch[k] for k in CACHE_KEYS if k in batch})
            if "rewards" in batch:
                ex.update({k: batch[k] for k in ROLLOUT_KEYS})
                ex["advantages"] = minillm.advantages(batch, self.config.minillm)
            if self.models.cross is not None and self.models.cross.loss != "alm":
                cross = self.models.cross
                fill = cross.inner_ce and name == "off"  # dataset rows (KD, ClassKD)
                ex.update(cross_objectives.pair_weight(batch, cross.loss, fill))
            out[name] = ex
        return out

    def _alm(self) -> bool:
        return self.models.cross is not None and self.models.cross.loss == "alm"

    def _logprobs(self, config: ModelConfig, params, rows, vocab: int | None) -> jax.Array:
        """`[B, T]` log-probs of `rows`' targets under a model, deterministic, no gradient,
        a chunk of tokens at a time (no `[B, T, V]`)."""
        params = jax.lax.stop_gradient(params)
        w, vm = head(config, params)
        return minillm.target_logprobs(
            hidden_states(config, params, rows),
            w,
            vm,
            rows["targets"],
            vocab_size=vocab,
            temperature=cross_objectives.temperature(self.config),
            chunk=self.path.chunk_size,
            final_softcap=config.final_logit_softcap,
        )

    def _teacher_logprobs(self, frozen, batches) -> dict[str, jax.Array]:
        """ALM: per batch the teacher's realised-token log-probs on its own rows (one
        teacher forward per batch, shared by the student's and the classmate's terms)."""
        cfg, vocab = self.models.teacher.config, self.models.cross.teacher_vocab
        return {
            name: self._logprobs(cfg, frozen["teacher"], cross_objectives.teacher_batch(b), vocab)
            for name, b in batches.items()
        }

    def _alm_extras(self, config: ModelConfig, params, batch, teacher_logp):
        """ALM's per-token extras (`cross_objectives.alm_extras`) of a trained model
        (`config`, `params`) on the whole batch, from its scoring forward and the
        teacher's log-probs `teacher_logp` `[B, T_t]`."""
        logq = self._logprobs(config, params, batch, self.path.vocab_size)
        tau = self.models.cross.binarization_temp
        return cross_objectives.alm_extras(batch, logq, teacher_logp, tau)

    def _sequence_estimator(self, batches) -> bool:
        return (
            self.config.method == "classkd"
            and self.config.classkd.estimator == "sequence"
            and "on" in batches
        )

    def _sequence_extras(self, state: RunState, batch, others, heads):
        """The sequence estimator's per-token advantages and length normalisation
        (`losses.sequence_weights`) on the whole on-policy batch, before any
        micro-batch split, so the baseline is the global batch's mean.

        The sequence sums need every token's log q(y_t) before the loss pass, so
        the student runs one extra forward here (deterministic, no gradient).
        """
        k, m = self.config.classkd, self.config.misfeedback
        temperature, targets = float(k.temperature), batch["targets"]

        def logprobs(hidden, w, vocab_major, cap):
            return minillm.target_logprobs(
                jax.lax.stop_gradient(hidden),
                w,
                vocab_major,
                targets,
                vocab_size=self.path.vocab_size,
                temperature=temperature,
                chunk=self.path.chunk_size,
                final_softcap=cap,
            )

        cfg = self.models.student.config
        params = jax.lax.stop_gradient(state.student.params)
        w, vm = head(cfg, params)
        logq = logprobs(hidden_states(cfg, params, batch), w, vm, cfg.final_logit_softcap)

        def frozen(role):
            h = others[(role, "on")]
            return logprobs(h, heads[role], self.path.layout(role), self.path.softcap(role))

        ratios = {"kd_adv": logq - frozen("teacher")}
        if ("classmate", "on") in others:
            ratios["mis_adv"] = losses.misfeedback_sample_log_ratio(
                logq, frozen("classmate"), variant=m.variant, alpha=float(m.alpha)
            )
        return losses.sequence_weights(ratios, batch["loss_mask"])

    def _update(self, ts, role, parts, batches, others, heads, extras, counts, rng=None):
        """One role's accumulated gradients and optimizer update (`rng`: its
        dropout key for this step, None: no dropout)."""
        names = sorted({p.batch for p in parts})
        inputs = {
            "rows": {
                "batches": {k: batches[k] for k in names},
                "others": {k: v for k, v in others.items() if k[1] in names},
                "extras": {k: extras[k] for k in names},
            },
            "heads": heads,
            "counts": counts,
            "rng": rng if role.config.has_dropout else None,
        }
        loss_fn = _role_loss(role.config, parts, self.path)
        (loss, aux), grads = value_and_grad_accumulated(loss_fn, ts.params, inputs, self.grad_accum)
        new_ts, opt_metrics = _apply(ts, grads, role)
        return new_ts, loss, aux, opt_metrics

    @staticmethod
    def _counts(batches):
        return {k: jnp.sum(b["loss_mask"] != 0, dtype=jnp.float32) for k, b in batches.items()}

    @staticmethod
    def _token_metrics(batches, counts):
        real = sum(jnp.sum(b["segment_ids"] != 0, dtype=jnp.float32) for b in batches.values())
        out = {"train_tokens": real}
        for name, count in sorted(counts.items()):
            out[f"scored_tokens_{name}"] = count
        return out

    # ----- the steps -----

    def student_step(self, state: RunState, frozen, batch, rng):
        """One optimizer step of every method: the student's objective for
        `config.method` on the batch's parts and, for ClassKD, the classmate's
        measurement, gap control and gated update (`_classmate`).

        `rng` is the step's key (`step_key(root, step, 'step')`, so a resumed
        run draws the same): the trained roles' dropout masks come from it
        (`dropout_key`); sampling happened before the step."""
        control = batch.get("control", {})
        batches = {k: scored_batch(v) for k, v in batch.items() if k != "control"}
        parts = self._student_parts(batches)
        counts = self._counts(batches)
        others, heads = self._frozen_inputs(frozen, state, batches, parts)
        weight = control.get("misfeedback_weight", jnp.zeros((), jnp.float32))
        extras = self._extras(batches, weight)
        if self._sequence_estimator(batches):
            extras["on"].update(self._sequence_extras(state, batches["on"], others, heads))
        teacher_logp = self._teacher_logprobs(frozen, batches) if self._alm() else {}
        for name, logp in teacher_logp.items():
            cfg, params = self.models.student.config, state.student.params
            extras[name].update(self._alm_extras(cfg, params, batches[name], logp))
        student, loss, aux, opt = self._update(
            state.student,
            self.models.student,
            parts,
            batches,
            others,
            heads,
            extras,
            counts,
            dropout_key(rng, _ROLE_KEYS["student"]),
        )
        metrics = {"loss": loss, **self._named_means(aux, parts, counts)}
        metrics.update({f"student_{k}": v for k, v in opt.items()})
        metrics.update(self._token_metrics(batches, counts))
        if objectives.has_classmate(self.config):
            metrics["misfeedback_weight"] = weight
        new = state.replace(step=state.step + 1, student=student)
        metrics["flops"] = self._flops(batches, parts, others)
        if state.classmate is not None:
            cm_rng = dropout_key(rng, _ROLE_KEYS["classmate"])
            new, cm_metrics = self._classmate(
                new, state, batches, others, heads, aux, control, cm_rng, teacher_logp
            )
            metrics.update(cm_metrics)
            shape = batches[objectives.classmate_batch(self.config)]["tokens"].shape
            cm_fwd = flops_lib.forward_flops(self.models.classmate.config, *shape)
            metrics["flops"] += cm_fwd + 2 * cm_fwd * cm_metrics["classmate_updated"]
        return new, metrics

    def _flops(self, batches, parts, others) -> jax.Array:
        """Counted FLOPs of the student's forward + backward and the frozen forwards."""
        total = 0.0
        for name in {p.batch for p in parts}:
            total += 3 * flops_lib.forward_flops(
                self.models.student.config, *batches[name]["tokens"].shape
            )
        for role, name in others:
            model = self.models.teacher if role == "teacher" else self.models.classmate
            key = "teacher_tokens" if role == "teacher" and self.models.cross else "tokens"
            total += flops_lib.forward_flops(model.config, *batches[name][key].shape)
        if self._alm():  # per batch the teacher's and the trained roles' scoring forwards
            t_cfg, s_cfg = self.models.teacher.config, self.models.student.config
            for name, b in batches.items():
                total += flops_lib.forward_flops(t_cfg, *b["teacher_tokens"].shape)
                total += flops_lib.forward_flops(s_cfg, *b["tokens"].shape)
                if self.models.classmate is not None and name == "off":
                    total += flops_lib.forward_flops(
                        self.models.classmate.config, *b["tokens"].shape
                    )
        if self._sequence_estimator(batches):  # its scoring forward (`_sequence_extras`)
            shape = batches["on"]["tokens"].shape
            total += flops_lib.forward_flops(self.models.student.config, *shape)
        return jnp.asarray(total, jnp.float32)

    def _student_parts(self, batches):
        method = self.config.method
        expected = {
            "classkd": ({"off"}, {"off", "on"}),
            "minillm": ({"on"}, {"on", "lm"}),
            "distillm": ({"off"}, {"off", "lm"}),
        }.get(method, ({"off"},))
        if set(batches) not in [set(e) for e in expected]:
            raise ValueError(
                f"method {method!r} trains on the batches {' or '.join(map(str, expected))}, "
                f"got {sorted(batches)}"
            )
        on_policy = method == "classkd" and "on" in batches
        if self.models.cross is not None and method == "classkd":
            return cross_objectives.classkd_parts(
                self.config, self.models.cross, on_policy=on_policy
            )
        if self.models.cross is not None:
            return cross_objectives.kd_parts(self.config, self.models.cross)
        cached = CACHE_KEYS[0] in batches.get("off", {})  # dataset rows with the teacher cache
        return objectives.student_parts(
            self.config, on_policy=on_policy, lm="lm" in batches, cached=cached
        )

    def _named_means(self, aux, parts, counts):
        out = {}
        for part in parts:
            count = jnp.maximum(counts[part.batch], 1.0)
            for name in _aux_names(part):
                out[name] = aux[name] / count
        return out

    def _classmate(
        self, new: RunState, old: RunState, batches, others, heads, aux, control, rng, t_logp
    ):
        """The classmate's measured KL, gap control and (maybe) update, on its batch
        (`objectives.classmate_batch`: 'off', or MiniLLM's 'on' rollouts).

        With dropout, both branches run the classmate's training forward on the
        same key (`rng`), so the gap compares training-mode KLs of both roles
        whether or not the classmate updates.

        `control['classmate_update']` is its schedule's decision for this step
        (start, interval, stop: `objectives.control`), `control['min_gap']` the
        gap it must keep (negative: off); both are inputs, so a sweep over them
        reuses one compiled program. `t_logp`: ALM's teacher log-probs per batch.
        """
        cfg = self.config.classmate
        role = self.models.classmate
        if self.models.cross is not None:
            parts = cross_objectives.classmate_parts(self.config, self.models.cross)
        else:
            parts = objectives.classmate_parts(self.config)
        name = objectives.classmate_batch(self.config)
        off = {name: batches[name]}
        counts = self._counts(off)
        reads = {r for p in parts for r in p.others}  # the teacher, but not for ALM
        cm_others = {(r, name): others[(r, name)] for r in reads}
        cm_heads = {r: heads[r] for r in reads}
        extras = self._extras(off, 0.0)
        if self._alm():  # the classmate's own chunk terms against the teacher
            cm_params = old.classmate.params
            extras[name].update(self._alm_extras(role.config, cm_params, off[name], t_logp[name]))
        ema_s, ema_c = old.gap.averages(float(cfg.gap_ema))
        min_gap = control["min_gap"]
        allowed = control["classmate_update"] & ((min_gap < 0) | ((ema_c - ema_s) >= min_gap))

        def update(ts):
            new_ts, loss, cm_aux, opt = self._update(
                ts, role, parts, off, cm_others, cm_heads, extras, counts, rng
            )
            return new_ts, loss, cm_aux, opt["grad_norm"]

        def measure(ts):
            inputs = {
                "batches": off,
                "others": cm_others,
                "heads": cm_heads,
                "extras": extras,
                "counts": counts,
            }
            key = dropout_key(rng, 0) if role.config.has_dropout else None  # as _update's
            loss, cm_aux = objective(ts.params, role.config, parts, inputs, self.path, key)
            return ts, loss, cm_aux, jnp.zeros((), jnp.float32)

        lr = role.schedule(old.classmate.step)
        classmate, loss, cm_aux, grad_norm = jax.lax.cond(allowed, update, measure, old.classmate)
        count = jnp.maximum(counts[name], 1.0)
        student_kl = aux["student_fkl"] / count
        classmate_kl = cm_aux["classmate_fkl"] / count
        gap = old.gap.update(student_kl, classmate_kl, float(cfg.gap_ema))
        avg_s, avg_c = gap.averages(float(cfg.gap_ema))
        metrics = {
            "classmate_loss": loss,
            "classmate_kd": cm_aux["classmate_kd"] / count,
            "classmate_fkl": classmate_kl,
            "classmate_grad_norm": grad_norm,
            "classmate_lr": jnp.asarray(lr, jnp.float32),
            "classmate_updated": allowed.astype(jnp.float32),
            "gap": avg_c - avg_s,
            "gap_step": classmate_kl - student_kl,
        }
        return new.replace(classmate=classmate, gap=gap), metrics

    # ----- MiniLLM's rollout scoring -----

    def scorer(self, student_shardings, teacher_shardings) -> Callable:
        """`score(student_params, teacher_params, samples) -> scored rows + ROLLOUT_KEYS`,
        jitted and sharded like the step (rows over the data axes)."""
        m = self.config.minillm
        student, teacher = self.models.student.config, self.models.teacher.config

        def fwd(config, params, batch):
            w, vocab_major = head(config, params)
            return hidden_states(config, params, batch), w, vocab_major

        score = minillm.make_scorer(
            student, teacher, m, self.models.vocab_size, self.path.chunk_size, fwd
        )

        def program(student_params, teacher_params, samples):
            batch = scored_batch(samples)
            return {**batch, **score(student_params, teacher_params, batch)}

        return sharding.mesh_jit(
            program,
            self.mesh,
            in_shardings=(student_shardings, teacher_shardings, self.rows),
            out_shardings=self.rows,
        )

    # ----- jit -----

    def jit(self, state_shardings: RunState, frozen_shardings: Any) -> Callable:
        """The step jitted with its full sharding signature; the state is donated.

        One `jax.jit` per batch structure (its top-level keys), each with explicit
        in/out `NamedSharding`s: batch rows over the data axes, 'control' scalars
        replicated. The returned callable traces under the mesh and the logical
        rules, so the models' activation constraints apply; `step.jitted(batch)`
        is the `jax.jit` object for a batch (for `.lower(...)` and memory analysis).
        """
        programs: dict[tuple[str, ...], Any] = {}
        fn = functools.partial(StepBuilder.student_step, self)

        def program(batch):
            keys = tuple(sorted(batch))
            if keys not in programs:
                batch_sh = {k: self.replicated if k == "control" else self.rows for k in keys}
                programs[keys] = sharding.mesh_jit(
                    fn,
                    self.mesh,
                    in_shardings=(state_shardings, frozen_shardings, batch_sh, self.replicated),
                    out_shardings=(state_shardings, self.replicated),
                    donate_argnums=(0,),
                )
            return programs[keys]

        def step(state, frozen, batch, rng):
            return program(batch)(state, frozen, batch, rng)

        step.jitted = lambda batch: program(batch).jitted
        return step


def _aux_names(part: Part) -> tuple[str, ...]:
    """The aux keys a part's token_fn returns (read off an abstract call)."""
    n_models = 1 + len(part.others)
    rows = jax.ShapeDtypeStruct((2, 8), jnp.float32)
    ex = {k: _abstract_extra(k) for k in part.extras}
    out = jax.eval_shape(part.token_fn, (rows,) * n_models, ex)
    aux = out[1] if isinstance(out, tuple) else {}
    return tuple(aux)


def _abstract_extra(key: str) -> jax.ShapeDtypeStruct:
    """An extra's per-token shape and dtype, for `_aux_names`' abstract call."""
    if key in CACHE_KEYS:  # [tokens, W]
        dtype = jnp.float32 if key == "cache_logp" else jnp.int32
        return jax.ShapeDtypeStruct((2, 4), dtype)
    return jax.ShapeDtypeStruct((2,), jnp.int32 if key == "targets" else jnp.float32)
