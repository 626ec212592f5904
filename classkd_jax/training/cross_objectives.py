"""Word-level KD from a teacher with another tokenizer: the student's parts and extras.

The step's 'off' batch then holds the teacher's rows and the chunk arrays of
`classkd_jax.data.cross_rows` beside the student's. By `cross_tokenizer.loss`:
  'alm':   the teacher's realised-token log-probs (its rows, its head, no
           gradient) and the student's (one extra forward without gradient)
           give each chunk's binarised KL and its derivative g_k w.r.t. the
           student's chunk log-likelihood (`losses.cross_tokenizer.alm_chunk_terms`).
           The part is the surrogate  value_t + g_k(t) (log q_t - sg(log q_t)),
           token-separable, so it runs through the chunked token loss, and its
           gradient is exactly the chunk loss's;
  'exact': the teacher's hidden state at the column predicting a chunk's first
           teacher token is gathered to the student's matching column (hidden
           states `[B, T_s, D_t]`, never logits); the part is the exact-match KL
           on one-token-each-side chunks (`exact_mask`);
  'projected': the same gather; at every chunk's first token (`first_mask`)
           KL(P || q), P the teacher's distribution carried onto the student's
           vocabulary by `projection` (`data.vocab_map.first_token_map`);
  'uld':   the same gather, ULD at every chunk's first token (`first_mask`).
Each is normalised to a mean over its chunks (or pairs) through per-token
weights scaled by `count / n`, as the step divides every part by the
batch's scored-token count. `kd.ce_weight` mixes in the student's CE as in KD.
GKD takes the same loss (in place of its JSD) on its dataset batches and on
the student's samples, re-tokenised for the teacher (`data.cross_samples`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from classkd_jax import losses
from classkd_jax.losses import cross_tokenizer as xt
from classkd_jax.training.objectives import Part

LOSSES = ("alm", "exact", "projected", "uld")
# The batch keys cross-tokenizer rows add (`classkd_jax.data.cross_rows.CROSS_KEYS`).
TEACHER_VIEW = {
    "tokens": "teacher_tokens",
    "positions": "teacher_positions",
    "segment_ids": "teacher_segment_ids",
    "targets": "teacher_targets",
    "loss_mask": "teacher_loss_mask",
}


@dataclasses.dataclass(frozen=True, eq=False)  # eq/hash by identity: it holds arrays
class CrossTokenizer:
    """What the step needs of a teacher with another tokenizer (static).

    Attributes:
      loss: one of `LOSSES`.
      teacher_vocab: the teacher tokenizer's real vocabulary (scored head columns).
      student_ids, teacher_ids: `[M] int32` vocabulary entries spelled alike
        (`data.vocab_map.shared_vocabulary`), for 'exact'.
      binarization_temp: ALM's tau (`cross_tokenizer.binarization_temp`).
      projection: `[V_t] int32` teacher id -> student id, for 'projected'.
      inner_ce: the dataset rows' columns that `exact`, `projected` or `uld`
        leave unscored (inside a chunk) train on the dataset token (KD; ClassKD's
        off-policy term and its classmate) (`cross_tokenizer.inner_ce`).
    """

    loss: str
    teacher_vocab: int
    student_ids: np.ndarray
    teacher_ids: np.ndarray
    binarization_temp: float = 1.0
    projection: np.ndarray | None = None
    inner_ce: bool = False


def teacher_batch(batch: dict) -> dict:
    """The teacher's scored rows out of a cross-tokenizer batch."""
    return {k: batch[v] for k, v in TEACHER_VIEW.items()}


def gather_teacher(hidden: jax.Array, index: jax.Array) -> jax.Array:
    """`[B, T_t, D]` teacher hidden states at `index` `[B, T_s]` -> `[B, T_s, D]`."""
    return jnp.take_along_axis(hidden, index[..., None].astype(jnp.int32), axis=1)


def pair_weight(batch: dict, loss: str, inner_ce: bool = False) -> dict:
    """The pair loss's per-column weights `[B, T_s]` float32: 'xt_weight', the mask
    of the scored pairs times `count / n_pairs` (a pair mean); with `inner_ce`,
    the pair mask itself and 'xt_fill', the scored columns no pair covers (a mean
    over every column of the pair loss there and the CE elsewhere)."""
    mask = batch["exact_mask" if loss == "exact" else "first_mask"].astype(jnp.float32)
    scored = (batch["loss_mask"] != 0).astype(jnp.float32)
    if inner_ce:
        return {"xt_weight": mask, "xt_fill": scored * (1.0 - mask)}
    count = jnp.sum(scored)
    return {"xt_weight": mask * count / jnp.maximum(jnp.sum(mask), 1.0)}


def alm_extras(
    batch: dict, student_logp: jax.Array, teacher_logp: jax.Array, binarization_temp: float = 1.0
) -> dict:
    """ALM's per-token extras of the student's columns: 'alm_value' (each chunk's
    binarised KL, on its first column) and 'alm_grad' (g_k on every column of chunk
    k), both times `count / n_chunks`, plus 'alm_n' (the chunk count, for logging).

    Args:
      batch: the cross-tokenizer 'off' batch (`student_chunk`, `teacher_chunk`,
        `chunk_mask`, `first_mask`, `loss_mask`).
      student_logp: `[B, T_s]` log q of the student's targets (no gradient).
      teacher_logp: `[B, T_t]` log p of the teacher's targets.
      binarization_temp: ALM's tau (`losses.cross_tokenizer.alm_chunk_terms`).
    """
    loss, grad, _, _ = xt.alm_chunk_terms(
        student_logp,
        teacher_logp,
        batch["student_chunk"],
        batch["teacher_chunk"],
        batch["chunk_mask"],
        binarization_temp,
    )
    count = jnp.sum(batch["loss_mask"] != 0, dtype=jnp.float32)
    n = jnp.maximum(jnp.sum(batch["chunk_mask"]), 1.0)
    scale = count / n
    ids = batch["student_chunk"]
    safe = jnp.maximum(ids, 0)
    per_col_grad = jnp.where(ids >= 0, jnp.take_along_axis(grad, safe, axis=1), 0.0)
    per_col_loss = jnp.take_along_axis(loss, safe, axis=1)
    first = batch["first_mask"].astype(jnp.float32)
    return {
        "alm_value": jax.lax.stop_gradient(first * per_col_loss * scale),
        "alm_grad": jax.lax.stop_gradient(per_col_grad * scale),
    }


def temperature(config) -> float:
    """The method's loss temperature (`kd.temperature`, `gkd.temperature`,
    `classkd.temperature`)."""
    section = config.method if config.method in ("gkd", "classkd") else "kd"
    return float(config[section].temperature)


def kd_parts(config, cross: CrossTokenizer) -> tuple[Part, ...]:
    """The student's objective against a teacher of another tokenizer: KD's, or GKD's
    on whichever 'off' batch the step gets (dataset rows or the student's samples)."""
    if config.method == "classkd":
        raise ValueError("classkd: use classkd_parts")
    t = temperature(config)
    ce_w = float(config.kd.ce_weight) if config.method == "kd" else 0.0
    name = f"xt_{cross.loss}"

    def mix(value, q, ex):
        if ce_w == 0:
            return value, {name: value}
        ce = losses.cross_entropy_per_token(q, ex["targets"])
        return (1 - ce_w) * value + ce_w * ce, {name: value, "ce": ce}

    if cross.loss == "alm":

        def alm_fn(logits, ex):
            logq = losses.token_log_probs(logits[0], ex["targets"], temperature=t)
            value = ex["alm_value"] + ex["alm_grad"] * (logq - jax.lax.stop_gradient(logq))
            return mix(value, logits[0], ex)

        return (Part("off", (), alm_fn, ("targets", "alm_value", "alm_grad")),)
    div = _divergence(cross, t)

    def pair_fn(logits, ex):
        q, p = logits
        value = ex["xt_weight"] * div(q, p)
        if cross.inner_ce:  # the dataset token where no pair scores the column
            value = value + ex["xt_fill"] * losses.cross_entropy_per_token(q, ex["targets"])
        return mix(value, q, ex)

    extras = ("xt_weight", "targets") if ce_w or cross.inner_ce else ("xt_weight",)
    extras += ("xt_fill",) if cross.inner_ce else ()
    return (Part("off", ("teacher",), pair_fn, extras),)


def _divergence(cross: CrossTokenizer, t: float):
    """The pair loss (exact, projected or ULD) of a trained model's and the teacher's
    logits rows."""
    if cross.loss == "exact":
        s_ids, t_ids = jnp.asarray(cross.student_ids), jnp.asarray(cross.teacher_ids)
        return lambda q, p: xt.exact_match_kl_per_token(q, p, s_ids, t_ids, temperature=t)
    if cross.loss == "projected":
        projection = jnp.asarray(cross.projection)
        return lambda q, p: xt.projected_kl_per_token(q, p, projection, temperature=t)
    return lambda q, p: xt.uld_per_token(q, p, temperature=t)


def _teacher_term(cross: CrossTokenizer, t: float, fill: bool = False):
    """`(term(logits, ex) -> [N], others, extras)`: the cross-tokenizer loss of the
    trained model (logits[0]) against the teacher, as a per-token surrogate; the
    teacher's logits are logits[1] when `others` holds it (exact, projected, ULD).
    `fill`: plus the dataset token's CE on the columns no pair scores (`inner_ce`,
    dataset rows only)."""
    if cross.loss == "alm":

        def alm(logits, ex):
            logq = losses.token_log_probs(logits[0], ex["targets"], temperature=t)
            return ex["alm_value"] + ex["alm_grad"] * (logq - jax.lax.stop_gradient(logq))

        return alm, (), ("targets", "alm_value", "alm_grad")
    div = _divergence(cross, t)
    if not fill:
        return (
            (lambda logits, ex: ex["xt_weight"] * div(logits[0], logits[1])),
            ("teacher",),
            ("xt_weight",),
        )

    def filled(logits, ex):
        ce = losses.cross_entropy_per_token(logits[0], ex["targets"])
        return ex["xt_weight"] * div(logits[0], logits[1]) + ex["xt_fill"] * ce

    return filled, ("teacher",), ("xt_weight", "xt_fill", "targets")


def classkd_parts(config, cross: CrossTokenizer, *, on_policy: bool) -> tuple[Part, ...]:
    """ClassKD's student parts with a teacher of another tokenizer: the cross loss X in
    place of D_off and D_on; the misfeedback M(q, c) unchanged (the classmate shares
    the student's tokenizer). `student_fkl`, the student's side of the gap control,
    is X itself, as the classmate's side is (`classmate_parts`)."""
    k, m = config.classkd, config.misfeedback
    t = temperature(config)
    off_term, off_others, off_extras = _teacher_term(cross, t, fill=cross.inner_ce)
    term, others, extras = _teacher_term(cross, t)  # on the student's samples: no CE
    off_w, on_w = float(k.off_policy_weight), float(k.on_policy_weight)

    def off_fn(logits, ex):
        x = off_term(logits, ex)
        return off_w * x, {"off_kd": x, "student_fkl": x}

    parts = [Part("off", off_others, off_fn, off_extras)]
    if not on_policy:
        return tuple(parts)
    with_mis = float(m.weight) != 0
    mis_kw = dict(
        temperature=t,
        variant=m.variant,
        alpha=float(m.alpha),
        margin=float(m.margin),
        beta=float(m.beta),
    )

    def on_fn(logits, ex):
        x = term(logits, ex)
        if not with_mis:
            return on_w * x, {"on_kd": x}
        targets = ex["targets"] if m.variant == "sigmoid" else None
        mis = losses.misfeedback_per_token(logits[0], logits[-1], targets=targets, **mis_kw)
        return on_w * x + ex["weight"] * mis, {"on_kd": x, "misfeedback": mis}

    on_others = others + (("classmate",) if with_mis else ())
    on_extras = extras + (("weight",) if with_mis else ())
    if with_mis and m.variant == "sigmoid" and "targets" not in on_extras:
        on_extras += ("targets",)
    parts.append(Part("on", on_others, on_fn, on_extras))
    return tuple(parts)


def classmate_parts(config, cross: CrossTokenizer) -> tuple[Part, ...]:
    """The classmate's loss X(p, c) on 'off' (its ALM extras are its own; with
    `inner_ce`, the dataset token's CE on the columns no pair scores, as the
    student's off-policy term)."""
    term, others, extras = _teacher_term(cross, temperature(config), fill=cross.inner_ce)

    def token_fn(logits, ex):
        x = term(logits, ex)
        return x, {"classmate_kd": x, "classmate_fkl": x}

    return (Part("off", others, token_fn, extras),)
