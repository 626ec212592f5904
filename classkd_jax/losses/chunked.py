"""Fused, chunked token losses from hidden states and output embeddings.

A ClassKD step scores three models over a 50k-152k vocabulary; dense
``[B, T, V]`` float32 logits (and their gradients) of each are several GB. Here
the logits ``hidden @ head`` are formed for ``chunk_size`` tokens at a time
inside a ``lax.scan``, reduced to a per-token loss, and dropped, so neither the
forward nor the backward pass ever holds ``[B, T, V]``.

The gradient is fused into the forward scan with ``jax.custom_vjp`` (as in
Liger-Kernel's fused linear cross-entropy): per chunk we take the loss's
gradient w.r.t. the chunk's logits and immediately project it to the hidden
states (``dlogits @ head.T``) and accumulate the head gradient
(``hidden.T @ dlogits``). The backward pass then only scales these by the
incoming scalar cotangent. Compared with ``jax.checkpoint`` around each chunk,
this avoids recomputing every model's logits matmul in the backward pass,
which with three heads (two frozen) is 8 instead of 5 vocabulary matmuls.

Only models marked ``trainable`` get gradients; the others are wrapped in
``stop_gradient`` (frozen teacher, or the classmate inside the student's
misfeedback term), so differentiating w.r.t. them yields zeros by design.
Auxiliary per-token outputs are summed for logging and carry no gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from classkd_jax.losses.divergences import get_divergence, log_probs
from classkd_jax.losses.misfeedback import misfeedback_per_token
from classkd_jax.models.layers import softcap

Array = jax.Array
TokenFn = Callable[[tuple[Array, ...], Any], Array | tuple[Array, dict[str, Array]]]

__all__ = [
    "chunked_cross_entropy",
    "chunked_divergence",
    "chunked_token_loss",
    "shared_vocab_logits",
    "shared_vocab_size",
]


def shared_vocab_size(
    head_sizes: Sequence[int],
    *,
    vocab_size: int | Sequence[int] | None = None,
    tokenizer_ids: Sequence[Hashable] | None = None,
) -> int:
    """The real vocabulary shared by several (possibly padded) output heads.

    Args:
      head_sizes: each model's head width (padded vocabulary, e.g. 151936 and
        152064 for Qwen2.5 0.5B and 7B over the same 151665-token tokenizer).
      vocab_size: the tokenizer's real size (``len(tokenizer)``), or one per
        model; per-model sizes that differ mean different tokenizers (error).
        None: all heads must have the same width, which is then used.
      tokenizer_ids: optional identity of each model's tokenizer (name or
        hash); differing ids are an error.

    Returns:
      The number of leading vocabulary entries to score.
    """
    if tokenizer_ids is not None and len(set(tokenizer_ids)) > 1:
        raise ValueError(
            f"models use different tokenizers {list(tokenizer_ids)}; token-level "
            "divergences need one shared vocabulary"
        )
    if vocab_size is not None and not isinstance(vocab_size, int):
        sizes = [int(v) for v in vocab_size]
        if len(set(sizes)) > 1:
            raise ValueError(
                f"models state different real vocabulary sizes {sizes} (different "
                "tokenizers); token-level divergences need one shared vocabulary"
            )
        vocab_size = sizes[0]
    if vocab_size is None:
        if len(set(head_sizes)) > 1:
            raise ValueError(
                f"output heads have different widths {list(head_sizes)}; pass vocab_size= "
                "the tokenizer's real vocabulary size (len(tokenizer)) to score the shared part"
            )
        return int(head_sizes[0])
    if vocab_size <= 0 or vocab_size > min(head_sizes):
        raise ValueError(
            f"vocab_size={vocab_size} must be in [1, {min(head_sizes)}] (the narrowest head "
            f"of widths {list(head_sizes)})"
        )
    return int(vocab_size)


def per_model_vocab(
    widths: Sequence[int],
    vocab_size: int | Sequence[int] | None,
    tokenizer_ids: Sequence[Hashable] | None,
    vocab_sizes: Sequence[int] | None,
) -> tuple[int, ...]:
    """Each model's scored vocabulary: its own (`vocab_sizes`, checked against its
    head's width) or the one they share (:func:`shared_vocab_size`)."""
    if vocab_sizes is None:
        shared = shared_vocab_size(widths, vocab_size=vocab_size, tokenizer_ids=tokenizer_ids)
        return (shared,) * len(widths)
    sizes = tuple(int(v) for v in vocab_sizes)
    if len(sizes) != len(widths) or any(not 0 < v <= w for v, w in zip(sizes, widths, strict=True)):
        raise ValueError(f"vocab_sizes={sizes} must give each of the heads {list(widths)} a size")
    return sizes


def shared_vocab_logits(logits: Array, vocab_size: int) -> Array:
    """Drop padded vocabulary entries: ``[..., V_pad]`` -> ``[..., vocab_size]`` (dense path)."""
    if vocab_size > logits.shape[-1]:
        raise ValueError(f"vocab_size={vocab_size} exceeds the logits' width {logits.shape[-1]}")
    return logits[..., :vocab_size]


def _to_chunks(x: Array, num_chunks: int, chunk: int) -> Array:
    """``[B, T, ...]`` -> ``[num_chunks, B, chunk, ...]`` along the length, zero-padded.

    Chunks cut the length, not the batch: a chunk keeps every row, so the
    batch axis stays sharded over the data axes and each device scans its own
    rows. (Cutting the flattened ``B * T`` tokens instead would scan along the
    sharded axis, and XLA would replicate the whole array on every device.)
    """
    pad = num_chunks * chunk - x.shape[1]
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((x.shape[0], num_chunks, chunk) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _flat(x: Array) -> Array:
    """A chunk ``[B, C, ...]`` -> ``[B * C, ...]`` tokens (rows stay the major axis)."""
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _constrain_rows(x: Array) -> Array:
    """Rows over the data axes, the rest replicated, inside `sharding.activation_sharding`."""
    names = ("batch",) + (None,) * (x.ndim - 1)
    return nn.with_logical_constraint(x, names)


def _constrain_head(w: Array, vocab_major: bool) -> Array:
    """The head gathered over 'fsdp' (FSDP: gather the weights, not the activations),
    its vocabulary split as the params are."""
    return nn.with_logical_constraint(w, ("vocab", None) if vocab_major else (None, "vocab"))


def _logits(h: Array, w: Array, vocab_major: bool) -> Array:
    """[C, D] x head -> [C, V_pad] float32; the head is [D, V] or, vocab-major, [V, D]."""
    contract = (((1,), (1,)), ((), ())) if vocab_major else (((1,), (0,)), ((), ()))
    return jax.lax.dot_general(h, w, contract, preferred_element_type=jnp.float32)


def _make_fused(
    token_fn: TokenFn,
    trainable: tuple[bool, ...],
    vocab: tuple[int, ...],
    head_dtypes,
    vocab_block: int,
    vocab_major: tuple[bool, ...],
    caps: tuple[float | None, ...],
):
    """custom_vjp (hs, heads, keep, extras) -> (loss_sum, aux_sums), chunk axis leading.

    `caps`: per model its final-logit soft-cap (or None), applied inside the
    differentiated `reduce`, so the gradients w.r.t. the raw `h @ W` logits
    that `_project_grads` projects include the cap's derivative.
    """
    train_idx = [i for i, t in enumerate(trainable) if t]

    def chunk_logits(hs, heads):
        return tuple(
            _logits(h, w, vm)[:, :v]
            for h, w, vm, v in zip(hs, heads, vocab_major, vocab, strict=True)
        )

    def reduce(logits, keep, ex):
        logits = tuple(softcap(lg, c) for lg, c in zip(logits, caps, strict=True))
        out = token_fn(logits, ex)
        per_token, aux = out if isinstance(out, tuple) else (out, {})
        if per_token.shape != keep.shape:
            raise ValueError(f"token_fn returned {per_token.shape}, expected {keep.shape}")
        total = jnp.sum(jnp.where(keep, per_token, 0.0))
        aux = {k: jax.lax.stop_gradient(jnp.sum(jnp.where(keep, v, 0.0))) for k, v in aux.items()}
        return total, aux

    def primal(hs, heads, keep, extras):
        def body(acc, xs):
            h_c, keep_c, ex_c = jax.tree.map(_flat, xs)
            out = reduce(chunk_logits(h_c, heads), keep_c, ex_c)
            return jax.tree.map(jnp.add, acc, out), None

        init = _zeros_like_output(reduce, chunk_logits, hs, heads, keep, extras)
        out, _ = jax.lax.scan(body, init, (hs, keep, extras))
        return out

    def fwd(hs, heads, keep, extras):
        def body(acc, xs):
            rows = xs[1].shape[0]
            h_c, keep_c, ex_c = jax.tree.map(_flat, xs)
            logits = chunk_logits(h_c, heads)

            def loss_of(trained):
                full = list(logits)
                for i, lg in zip(train_idx, trained, strict=True):
                    full[i] = lg
                return reduce(tuple(full), keep_c, ex_c)

            trained = tuple(logits[i] for i in train_idx)
            out, dlogits = jax.value_and_grad(loss_of, has_aux=True)(trained)
            (tot, aux), dheads = acc
            dhs, new_dheads = [], []
            for k, (i, dl) in enumerate(zip(train_idx, dlogits, strict=True)):
                dh, dw = _project_grads(
                    h_c[i], heads[i], dl, dheads[k], vocab_block, vocab_major[i]
                )
                dhs.append(dh.reshape((rows, -1) + dh.shape[1:]))  # back to [B, C, D]
                new_dheads.append(dw)
            new = ((tot + out[0], jax.tree.map(jnp.add, aux, out[1])), tuple(new_dheads))
            return new, tuple(dhs)

        init_out = _zeros_like_output(reduce, chunk_logits, hs, heads, keep, extras)
        init_dheads = tuple(jnp.zeros(heads[i].shape, jnp.float32) for i in train_idx)
        (out, dheads), dhs = jax.lax.scan(body, (init_out, init_dheads), (hs, keep, extras))
        return out, (dhs, dheads)

    def bwd(res, cotangent):
        dhs, dheads = res
        g = cotangent[0]  # aux sums carry no gradient
        hs_ct, heads_ct = [None] * len(trainable), [None] * len(trainable)
        for k, i in enumerate(train_idx):
            hs_ct[i] = (g * dhs[k]).astype(dhs[k].dtype)
            heads_ct[i] = (g * dheads[k]).astype(head_dtypes[i])
        return tuple(hs_ct), tuple(heads_ct), None, None

    fused = jax.custom_vjp(primal)
    fused.defvjp(fwd, bwd)
    return fused


def _project_grads(
    h: Array, w: Array, dlogits: Array, dw_acc: Array, block: int, vocab_major: bool = False
) -> tuple[Array, Array]:
    """dh = dlogits @ W[:V]^T and dW[:V] += h^T @ dlogits (V = real vocabulary).

    `w` is [D, V_pad] or, `vocab_major`, [V_pad, D] (a tied embedding as stored:
    no transposed copy of it is ever made); `dw_acc` has `w`'s layout. The head
    gradient is accumulated by vocabulary blocks with in-place updates of the
    f32 carry, so no head-sized temporary is made per chunk; `w` is never
    sliced (XLA would hoist loop-invariant slices of it into a full copy), and
    padded head columns keep a zero gradient.
    """
    vocab = dlogits.shape[1]
    axis = 0 if vocab_major else 1
    dl_full = jnp.pad(dlogits, ((0, 0), (0, w.shape[axis] - vocab))).astype(w.dtype)
    contract_vocab = (((1,), (axis,)), ((), ()))
    dh = jax.lax.dot_general(dl_full, w, contract_vocab, preferred_element_type=jnp.float32)
    contract_tokens = (((0,), (0,)), ((), ()))
    for start in range(0, vocab, block):
        stop = min(start + block, vocab)
        dl = jax.lax.slice_in_dim(dlogits, start, stop, axis=1).astype(h.dtype)
        pair = (dl, h) if vocab_major else (h, dl)
        part = jax.lax.dot_general(*pair, contract_tokens, preferred_element_type=jnp.float32)
        old = jax.lax.slice_in_dim(dw_acc, start, stop, axis=axis)
        dw_acc = jax.lax.dynamic_update_slice_in_dim(dw_acc, old + part, start, axis=axis)
    return dh.astype(h.dtype), dw_acc


def _zeros_like_output(reduce, chunk_logits, hs, heads, keep, extras):
    first = jax.tree.map(lambda x: _flat(x[0]), (hs, keep, extras))
    shape = jax.eval_shape(lambda h, k, e: reduce(chunk_logits(h, heads), k, e), *first)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape)


def chunked_token_loss(
    token_fn: TokenFn,
    hiddens: Sequence[Array],
    heads: Sequence[Array],
    mask: Array,
    extras: Any = None,
    *,
    vocab_size: int | Sequence[int] | None = None,
    tokenizer_ids: Sequence[Hashable] | None = None,
    chunk_size: int = 128,
    trainable: Sequence[bool] | None = None,
    vocab_block: int = 16384,
    vocab_major: Sequence[bool] | None = None,
    softcaps: Sequence[float | None] | None = None,
    vocab_sizes: Sequence[int] | None = None,
) -> tuple[Array, Array, dict[str, Array]]:
    """Masked sum of a per-token loss over several models' logits, chunk by chunk.

    Computes ``sum_{b,t: mask} token_fn((h_0 @ W_0, h_1 @ W_1, ...), extras)[b, t]``
    without materialising any ``[B, T, V]`` array, forward or backward (each
    ``h_i @ W_i`` soft-capped by ``softcaps[i]`` where given).

    Args:
      token_fn: ``(logits, extras_chunk) -> per_token`` or ``(per_token, aux)``,
        where ``logits`` is a tuple of ``[C, V]`` float32 (one per model, real
        vocabulary only), ``extras_chunk`` the matching ``[C, ...]`` slices of
        ``extras``, ``per_token`` is ``[C]`` and ``aux`` a dict of ``[C]`` values
        to sum for logging. Must be token-separable (row c depends on row c only).
      hiddens: per model ``[B, T, D_i]`` final hidden states (the LM head input).
      heads: per model ``[D_i, V_i]`` output embeddings (``models.lm_head``), or
        ``[V_i, D_i]`` where ``vocab_major`` says so (a tied input embedding as
        stored, so no transposed copy of it exists in the step).
      mask: ``[B, T]`` 0/1 scored positions (already shifted to next-token targets).
      extras: pytree of ``[B, T, ...]`` arrays (targets, advantages), no gradient.
      vocab_size: shared real vocabulary (see :func:`shared_vocab_size`).
      tokenizer_ids: optional per-model tokenizer identities, checked equal.
      chunk_size: tokens per chunk over the whole batch: each chunk is
        ``max(1, chunk_size // B)`` positions of every row (the batch axis stays
        sharded). Extra memory is one f32 accumulator per trainable head plus
        a few ``[chunk, V]`` f32 buffers; at Qwen2.5 size
        128 gives 10x less peak memory than dense at 0.9x its time
        (benchmarks/README.md).
      trainable: per model whether it receives gradients; default: the first only.
      vocab_block: vocabulary columns per gradient-projection matmul (bounds the
        ``[D, block]`` temporaries of the head-gradient accumulation).
      vocab_major: per model whether its head is ``[V, D]``; default all ``[D, V]``.
      softcaps: per model its final-logit soft-cap (``ModelConfig.final_logit_softcap``,
        Gemma 2) or None; default none.
      vocab_sizes: per model its own real vocabulary, for models with different
        tokenizers (cross-tokenizer losses, whose ``token_fn`` takes logits of
        different widths); replaces ``vocab_size`` and ``tokenizer_ids``.

    Returns:
      ``(loss_sum, count, aux_sums)``: scalar float32 masked sum, number of masked
      positions (float32), and a dict of scalar masked sums of ``aux``.
    """
    hiddens, heads = tuple(hiddens), tuple(heads)
    if len(hiddens) != len(heads) or not hiddens:
        raise ValueError(f"got {len(hiddens)} hidden-state arrays and {len(heads)} heads")
    trainable = tuple(trainable) if trainable is not None else (True,) + (False,) * (len(heads) - 1)
    if len(trainable) != len(heads):
        raise ValueError(f"trainable has {len(trainable)} entries for {len(heads)} models")
    vocab_major = tuple(vocab_major) if vocab_major is not None else (False,) * len(heads)
    if len(vocab_major) != len(heads):
        raise ValueError(f"vocab_major has {len(vocab_major)} entries for {len(heads)} models")
    caps = tuple(softcaps) if softcaps is not None else (None,) * len(heads)
    if len(caps) != len(heads):
        raise ValueError(f"softcaps has {len(caps)} entries for {len(heads)} models")
    if mask.ndim != 2:
        raise ValueError(f"mask must be [B, T], got shape {mask.shape}")
    batch, length = mask.shape
    for i, (h, w, vm) in enumerate(zip(hiddens, heads, vocab_major, strict=True)):
        if h.shape[:2] != (batch, length) or h.ndim != 3:
            raise ValueError(f"hiddens[{i}] has shape {h.shape}, expected [{batch}, {length}, D]")
        d_axis = 1 if vm else 0
        if w.ndim != 2 or w.shape[d_axis] != h.shape[2]:
            want = f"[V, {h.shape[2]}]" if vm else f"[{h.shape[2]}, V]"
            raise ValueError(f"heads[{i}] has shape {w.shape}, expected {want}")
    widths = [w.shape[0 if vm else 1] for w, vm in zip(heads, vocab_major, strict=True)]
    vocab = per_model_vocab(widths, vocab_size, tokenizer_ids, vocab_sizes)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    # `chunk_size` tokens per chunk over the whole batch: `chunk` positions of every row.
    chunk = max(1, min(length, chunk_size // batch))
    num_chunks = math.ceil(length / chunk)

    def to_chunks(x):
        return _to_chunks(_constrain_rows(x), num_chunks, chunk)

    def freeze(x, train):
        return x if train else jax.lax.stop_gradient(x)

    hs = tuple(to_chunks(freeze(h, t)) for h, t in zip(hiddens, trainable, strict=True))
    ws = tuple(
        _constrain_head(freeze(w, t), vm)
        for w, t, vm in zip(heads, trainable, vocab_major, strict=True)
    )
    keep = to_chunks(mask != 0)
    ex = jax.tree.map(lambda x: to_chunks(jax.lax.stop_gradient(jnp.asarray(x))), extras)
    dtypes = [w.dtype for w in ws]
    fused = _make_fused(token_fn, trainable, vocab, dtypes, vocab_block, vocab_major, caps)
    total, aux = fused(hs, ws, keep, ex)
    return total, jnp.sum(mask != 0, dtype=jnp.float32), aux


def chunked_divergence(
    name: str,
    student_hidden: Array,
    student_head: Array,
    other_hidden: Array,
    other_head: Array,
    mask: Array,
    *,
    vocab_size: int | Sequence[int] | None = None,
    tokenizer_ids: Sequence[Hashable] | None = None,
    chunk_size: int = 128,
    vocab_block: int = 16384,
    targets: Array | None = None,
    **kwargs: Any,
) -> Array:
    """Masked token mean of a divergence, equal to the dense function on the logits.

    ``chunked_divergence("forward_kl", hs, Ws, ht, Wt, mask, temperature=2.0)`` ==
    ``forward_kl(hs @ Ws, ht @ Wt, mask, temperature=2.0)`` (real vocabulary), with
    gradients for the student only.

    Args:
      name: a key of ``DIVERGENCES`` or ``"misfeedback"`` (other = classmate).
      student_hidden: ``[B, T, D_s]``; student_head: ``[D_s, V_s]``.
      other_hidden: ``[B, T, D_o]``; other_head: ``[D_o, V_o]`` (teacher or classmate).
      mask: ``[B, T]`` 0/1.
      vocab_size, tokenizer_ids, chunk_size, vocab_block: see :func:`chunked_token_loss`.
      targets: ``[B, T]`` int sampled next tokens, for misfeedback ``"sigmoid"``.
      **kwargs: the divergence's keyword arguments (temperature, beta, alpha, ...).

    Returns:
      Scalar float32.
    """
    per_token_fn = misfeedback_per_token if name == "misfeedback" else get_divergence(name)

    def token_fn(logits, ex):
        extra = {"targets": ex} if ex is not None else {}
        return per_token_fn(logits[0], logits[1], **kwargs, **extra)

    total, count, _ = chunked_token_loss(
        token_fn,
        (student_hidden, other_hidden),
        (student_head, other_head),
        mask,
        targets,
        vocab_size=vocab_size,
        tokenizer_ids=tokenizer_ids,
        chunk_size=chunk_size,
        vocab_block=vocab_block,
    )
    return total / jnp.maximum(count, 1.0)


def chunked_cross_entropy(
    hidden: Array,
    head: Array,
    targets: Array,
    mask: Array,
    *,
    vocab_size: int | None = None,
    chunk_size: int = 128,
    vocab_block: int = 16384,
    temperature: float = 1.0,
) -> Array:
    """Masked mean of -log softmax(hidden @ head)[targets], chunked (SFT, LM losses).

    Args:
      hidden: ``[B, T, D]``; head: ``[D, V]``; targets: ``[B, T]`` int next tokens;
      mask: ``[B, T]`` 0/1; vocab_size: real vocabulary (targets must be below it).

    Returns:
      Scalar float32.
    """

    def token_fn(logits, tgt):
        logp = log_probs(logits[0], temperature)
        return -jnp.take_along_axis(logp, tgt[:, None].astype(jnp.int32), axis=-1)[:, 0]

    total, count, _ = chunked_token_loss(
        token_fn,
        (hidden,),
        (head,),
        mask,
        targets,
        vocab_size=vocab_size,
        chunk_size=chunk_size,
        vocab_block=vocab_block,
    )
    return total / jnp.maximum(count, 1.0)
