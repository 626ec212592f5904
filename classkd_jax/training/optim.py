"""Optimizers from a trainable role's config block: AdamW, warm-up + decay, clipping.

    optimizer, schedule = make_optimizer(config.student, total_steps=config.steps)

The block's keys (`configs/_base.py`, `_optimizer`): `lr`, `schedule`
('cosine' | 'linear' | 'constant' after the warm-up), `warmup_steps`,
`final_lr_ratio`, `weight_decay`, `b1`, `b2`, `eps`, `clip`. Weight decay
applies to matrices only (embeddings, kernels), not to norm scales and
biases, as in Hugging Face's Trainer and the MiniLLM / DistiLLM recipes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(block: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the role's optimizer step (0-based).

    Linear warm-up from 0 over `warmup_steps`, then `schedule` down to
    `lr * final_lr_ratio` at `total_steps` ('constant' stays at `lr`).
    """
    lr, warmup = float(block["lr"]), int(block["warmup_steps"])
    end = lr * float(block["final_lr_ratio"])
    decay_steps = max(int(total_steps) - warmup, 1)
    kind = block["schedule"]
    if kind == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
    elif kind == "linear":
        decay = optax.linear_schedule(lr, end, decay_steps)
    elif kind == "constant":
        decay = optax.constant_schedule(lr)
    else:
        raise ValueError(f"schedule={kind!r}; expected one of {SCHEDULES}")
    if warmup <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def _decay_mask(params: Any) -> Any:
    """True for matrices (ndim >= 2; stacked layers add a leading axis, so >= 2
    is checked on the per-layer shape by name: norms and biases are 'scale'/'bias')."""

    def decays(path, leaf):
        name = getattr(path[-1], "key", "")
        return name not in ("scale", "bias") and leaf.ndim >= 2

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(
    block: Mapping[str, Any], total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with clipping and the block's schedule; returns (optimizer, schedule)."""
    schedule = learning_rate_schedule(block, total_steps)
    parts = []
    if float(block["clip"]) > 0:
        parts.append(optax.clip_by_global_norm(float(block["clip"])))
    parts.append(
        optax.adamw(
            schedule,
            b1=float(block["b1"]),
            b2=float(block["b2"]),
            eps=float(block["eps"]),
            weight_decay=float(block["weight_decay"]),
            mask=_decay_mask,
        )
    )
    return optax.chain(*parts), schedule
