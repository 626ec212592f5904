"""One entry point for a masked per-token loss over several models: dense or fused-chunked.

    total, count, aux = token_loss(token_fn, hiddens, heads, mask, extras,
                                   impl="chunked", chunk_size=1024, vocab_size=V)

Train steps write their objective once, as a `token_fn` over per-model logits
rows, and choose the path by config: 'dense' forms each model's `[B, T, V]`
logits (fine for small vocabularies), 'chunked' never does
(:func:`classkd_jax.losses.chunked_token_loss`). Both give the same values and
gradients (tests/test_losses_chunked.py, tests/test_train_steps.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from classkd_jax.losses.chunked import TokenFn, chunked_token_loss, per_model_vocab
from classkd_jax.models.layers import softcap

Array = jax.Array
IMPLS = ("dense", "chunked")

__all__ = ["IMPLS", "dense_token_loss", "token_loss"]


def dense_token_loss(
    token_fn: TokenFn,
    hiddens: Sequence[Array],
    heads: Sequence[Array],
    mask: Array,
    extras: Any = None,
    *,
    vocab_size: int | None = None,
    trainable: Sequence[bool] | None = None,
    vocab_major: Sequence[bool] | None = None,
    softcaps: Sequence[float | None] | None = None,
    vocab_sizes: Sequence[int] | None = None,
) -> tuple[Array, Array, dict[str, Array]]:
    """:func:`chunked_token_loss` computed on full logits (same arguments and results).

    Each model's logits `hidden @ head` (compute dtype, float32 accumulation,
    soft-capped by `softcaps[i]` where given, real vocabulary) are formed whole,
    `token_fn` runs on the `[B * T, V]` rows, and autodiff does the rest;
    frozen models (`trainable` False) are under `stop_gradient`.
    """
    hiddens, heads = tuple(hiddens), tuple(heads)
    trainable = tuple(trainable) if trainable is not None else (True,) + (False,) * (len(heads) - 1)
    vocab_major = tuple(vocab_major) if vocab_major is not None else (False,) * len(heads)
    caps = tuple(softcaps) if softcaps is not None else (None,) * len(heads)
    widths = [w.shape[0 if vm else 1] for w, vm in zip(heads, vocab_major, strict=True)]
    vocab = per_model_vocab(widths, vocab_size, None, vocab_sizes)
    rows = mask.size

    def logits(h, w, train, vm, cap, v):
        spec = "btd,vd->btv" if vm else "btd,dv->btv"
        out = jnp.einsum(spec, h.astype(w.dtype), w, preferred_element_type=jnp.float32)
        out = softcap(out[..., :v].reshape(rows, v), cap)
        return out if train else jax.lax.stop_gradient(out)

    all_logits = tuple(
        logits(*args)
        for args in zip(hiddens, heads, trainable, vocab_major, caps, vocab, strict=True)
    )
    flat = jax.tree.map(
        lambda x: jax.lax.stop_gradient(jnp.asarray(x).reshape((rows,) + jnp.shape(x)[2:])),
        extras,
    )
    out = token_fn(all_logits, flat)
    per_token, aux = out if isinstance(out, tuple) else (out, {})
    keep = mask.reshape(rows) != 0
    total = jnp.sum(jnp.where(keep, per_token, 0.0))
    aux = {k: jax.lax.stop_gradient(jnp.sum(jnp.where(keep, v, 0.0))) for k, v in aux.items()}
    return total, jnp.sum(keep, dtype=jnp.float32), aux


def token_loss(
    token_fn: TokenFn,
    hiddens: Sequence[Array],
    heads: Sequence[Array],
    mask: Array,
    extras: Any = None,
    *,
    impl: str = "chunked",
    vocab_size: int | None = None,
    trainable: Sequence[bool] | None = None,
    chunk_size: int = 128,
    vocab_major: Sequence[bool] | None = None,
    softcaps: Sequence[float | None] | None = None,
    vocab_sizes: Sequence[int] | None = None,
) -> tuple[Array, Array, dict[str, Array]]:
    """Masked sum of `token_fn` over the models' logits, by the path `impl`.

    Args:
      token_fn: `(logits, extras_rows) -> per_token` or `(per_token, aux)`;
        `logits` is a tuple of `[N, V]` float32 (one per model, real vocabulary),
        `extras_rows` the matching `[N, ...]` rows of `extras`.
      hiddens: per model `[B, T, D_i]` final hidden states.
      heads: per model `[D_i, V_i]` output embeddings in compute dtype, or
        `[V_i, D_i]` where `vocab_major` says so (a tied embedding as stored).
      mask: `[B, T]` 0/1 scored positions.
      extras: pytree of `[B, T, ...]` per-token inputs (targets, weights).
      impl: 'dense' or 'chunked'.
      vocab_size: the shared real vocabulary (`len(tokenizer)`).
      trainable: per model whether it gets gradients (default: the first only).
      chunk_size: tokens per chunk on the chunked path.
      vocab_major: per model whether its head is `[V, D]` (default: none).
      softcaps: per model its final-logit soft-cap or None (default: none).
      vocab_sizes: per model its own real vocabulary (different tokenizers);
        replaces `vocab_size`.

    Returns:
      `(loss_sum, count, aux_sums)` float32 scalars (see `chunked_token_loss`).
    """
    if impl == "dense":
        return dense_token_loss(
            token_fn,
            hiddens,
            heads,
            mask,
            extras,
            vocab_size=vocab_size,
            trainable=trainable,
            vocab_major=vocab_major,
            softcaps=softcaps,
            vocab_sizes=vocab_sizes,
        )
    if impl == "chunked":
        return chunked_token_loss(
            token_fn,
            hiddens,
            heads,
            mask,
            extras,
            vocab_size=vocab_size,
            chunk_size=chunk_size,
            trainable=trainable,
            vocab_major=vocab_major,
            softcaps=softcaps,
            vocab_sizes=vocab_sizes,
        )
    raise ValueError(f"loss impl={impl!r}; expected one of {IMPLS}")
