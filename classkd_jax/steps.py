"""Pure train steps over `TrainState`: SFT and word-level (off-policy) KD.

    step = make_train_step(student_cfg, optimizer, loss="kd", teacher_cfg=teacher_cfg)
    state, metrics = step(state, teacher_params, batch)

`batch` is a prompt+response batch from `classkd_jax.data` (right-padded,
optionally packed): `tokens`, `segment_ids`, `positions`, `targets`,
`loss_mask`, all `[B, T]`; `loss_mask[t]` marks positions whose logits predict
a response token `targets[t] = tokens[t + 1]`.

Losses are returned as `(sum, count)` metrics so token means stay exact when
they are summed over steps or hosts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from classkd_jax import losses, sharding
from classkd_jax.models import ModelConfig, Transformer, abstract_params, init_params

Batch = dict[str, jax.Array]
LOSSES = ("sft", "kd")


@flax.struct.dataclass
class TrainState:
    """A trainable role's state: `step: [] int32`, `params`, `opt_state`."""

    step: jax.Array
    params: Any
    opt_state: Any


def make_optimizer(
    lr: float,
    steps: int,
    *,
    warmup_steps: int = 0,
    weight_decay: float = 0.01,
    clip: float = 1.0,
    b2: float = 0.999,
) -> optax.GradientTransformation:
    """AdamW with linear warm-up, cosine decay to 1% of `lr`, and global-norm clipping."""
    warmup = max(warmup_steps, 1)  # optax needs >= 1 warm-up and >= 1 decay step
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup, max(steps, warmup + 1), end_value=lr * 0.01
    )
    return optax.chain(
        optax.clip_by_global_norm(clip),
        optax.adamw(schedule, b2=b2, weight_decay=weight_decay),
    )


def _forward(config: ModelConfig, params: Any, batch: Batch) -> jax.Array:
    """Logits `[B, T, V]` float32 of a prompt+response batch."""
    out = Transformer(config).apply(
        {"params": params}, batch["tokens"], batch["positions"], batch["segment_ids"]
    )
    return out.logits


def _loss_fn(
    params, teacher_params, batch, *, config, teacher_config, loss, divergence, temperature
):
    mask = batch["loss_mask"]
    count = jnp.sum(mask)
    logits = _forward(config, params, batch)
    if loss == "sft":
        per_token = losses.cross_entropy_per_token(logits, batch["targets"])
    else:
        teacher_logits = jax.lax.stop_gradient(_forward(teacher_config, teacher_params, batch))
        per_token = losses.get_divergence(divergence)(
            logits, teacher_logits, temperature=temperature
        )
    loss_sum = jnp.sum(per_token * mask)
    return loss_sum / jnp.maximum(count, 1.0), (loss_sum, count)


def train_step(state: TrainState, teacher_params: Any, batch: Batch, *, optimizer, **loss_kw):
    """One optimizer step. Returns `(state, {'loss_sum', 'tokens', 'grad_norm'})`."""
    grad_fn = jax.value_and_grad(functools.partial(_loss_fn, **loss_kw), has_aux=True)
    (_, (loss_sum, count)), grads = grad_fn(state.params, teacher_params, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss_sum": loss_sum, "tokens": count, "grad_norm": optax.tree.norm(grads)}
    return TrainState(state.step + 1, params, opt_state), metrics


def state_shardings(config: ModelConfig, optimizer, mesh: Mesh) -> TrainState:
    """Shardings of a `TrainState`, derived from the params' logical axis names."""
    boxed = abstract_params(config)
    params_sh = sharding.param_shardings(boxed, mesh)
    abstract_opt = jax.eval_shape(optimizer.init, nn.meta.unbox(boxed))
    # Optimizer moments mirror their params; scalars (counts) replicate.
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_sh = optax.tree_map_params(
        optimizer,
        lambda _, s: s,
        abstract_opt,
        params_sh,
        transform_non_params=lambda _: replicated,
    )
    return TrainState(replicated, params_sh, opt_sh)


def init_state(config: ModelConfig, optimizer, rng: jax.Array, mesh: Mesh) -> TrainState:
    """A fresh state materialised directly in its shardings (no full copy on one device)."""

    def init(rng):
        params = init_params(config, rng)
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

    return jax.jit(init, out_shardings=state_shardings(config, optimizer, mesh))(rng)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of a batch over the data axes; the other dims replicate."""
    return sharding.logical_sharding(("batch", "length"), mesh)


def make_train_step(
    config: ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    loss: str = "kd",
    teacher_config: ModelConfig | None = None,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
) -> Callable[[TrainState, Any, Batch], tuple[TrainState, dict]]:
    """Jits `train_step` with its full sharding signature; the state is donated.

    Args:
      config: the trained model's config.
      optimizer: the optax transformation its state was built with.
      mesh: the device mesh.
      loss: 'sft' (cross-entropy on dataset responses) or 'kd' (word-level
        divergence to the frozen teacher on the same tokens).
      teacher_config: the teacher's config ('kd' only).
      divergence: a key of `classkd_jax.losses.DIVERGENCES` ('kd' only).
      temperature: loss temperature ('kd' only).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}; expected one of {LOSSES}")
    if loss == "kd" and teacher_config is None:
        raise ValueError("loss='kd' needs teacher_config")
    if loss == "kd":
        losses.get_divergence(divergence)  # fail at build time on an unknown name
    step = functools.partial(
        train_step,
        optimizer=optimizer,
        config=config,
        teacher_config=teacher_config,
        loss=loss,
        divergence=divergence,
        temperature=temperature,
    )
    state_sh = state_shardings(config, optimizer, mesh)
    teacher_sh = (
        sharding.param_shardings(abstract_params(teacher_config), mesh) if loss == "kd" else None
    )
    return jax.jit(
        step,
        in_shardings=(state_sh, teacher_sh, batch_sharding(mesh)),
        out_shardings=(state_sh, NamedSharding(mesh, PartitionSpec())),
        donate_argnums=(0,),
    )
