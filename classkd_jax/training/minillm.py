"""MiniLLM's rollouts (Gu et al., 2024): teacher-mixed sampling, scoring, the PPO store.

One *phase* of `steps_per_phase = ppo_epochs * num_rollouts / batch_size`
optimizer steps starts with a rollout collection:
  1. `num_rollouts` completions of training prompts sampled from the
     teacher-mixed policy p~ = mix * p + (1 - mix) * q (the sampler's loop
     holds both KV caches; `minillm.teacher_mix`, 0.2);
  2. scored by one jitted program (`Scorer`) with the student as it is at
     that moment: per generated token, log q_old(y_t) and log p(y_t) from
     full forwards, the importance weight w_t = q(y_t) / p~(y_t) (exactly 1
     when mix = 0), and the reward r_t = clip((log p - log q_old) / 0.5, ±100)
     (`classkd_jax.losses.minillm_*`);
  3. kept on the host as one store of `[R, P_max + N]` rows (`RolloutStore`)
     and replayed for `ppo_epochs` epochs of shuffled minibatches of
     `data.batch_size` rows, one optimizer step each.
The advantages (discounted by gamma, length-normalised, whitened over the
minibatch as the reference does inside its loss) are computed in the train
step from the stored rewards. The store is part of every checkpoint, so a
run stopped mid-phase resumes on the same rollouts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from classkd_jax import losses
from classkd_jax.models import ModelConfig, softcap
from classkd_jax.training import host_state

ROLLOUT_KEYS = ("old_logprobs", "importance_weights", "rewards")
STORE_KEYS = ("tokens", "positions", "segment_ids", "targets", "loss_mask") + ROLLOUT_KEYS


def target_logprobs(
    hidden: jax.Array,
    head: jax.Array,
    vocab_major: bool,
    targets: jax.Array,
    *,
    vocab_size: int | None,
    temperature: float = 1.0,
    chunk: int = 128,
    final_softcap: float | None = None,
) -> jax.Array:
    """log softmax(softcap(h W) / temperature)[target] per position, a chunk of
    tokens at a time (no `[B, T, V]` logits): `[B, T, D]`, head, `[B, T]` ->
    `[B, T]` float32. `final_softcap`: the model's final-logit soft-cap (Gemma 2)."""
    b, t, d = hidden.shape
    n = b * t
    chunks = -(-n // chunk)
    h = jnp.pad(hidden.reshape(n, d), ((0, chunks * chunk - n), (0, 0))).reshape(chunks, chunk, d)
    y = jnp.pad(targets.reshape(n), (0, chunks * chunk - n)).reshape(chunks, chunk)

    def one(args):
        hc, yc = args
        logits = hc @ head.T if vocab_major else hc @ head
        logits = softcap(logits.astype(jnp.float32), final_softcap)
        if vocab_size is not None:
            logits = losses.shared_vocab_logits(logits, vocab_size)
        return losses.token_log_probs(logits, yc, temperature=temperature)

    return jax.lax.map(one, (h, y)).reshape(-1)[:n].reshape(b, t)


def advantages(batch: dict, m) -> jax.Array:
    """The minibatch's advantages `[B, T]` from its stored rewards (MiniLLM's
    `_get_advantages_and_returns`, whitened over the minibatch's scored tokens)."""
    return losses.minillm_advantages(
        batch["rewards"],
        batch["loss_mask"],
        gamma=float(m.gamma),
        length_norm=bool(m.length_norm),
        whiten=bool(m.whiten),
    )


def make_scorer(student: ModelConfig, teacher: ModelConfig, m, vocab_size, chunk, fwd):
    """`score(student_params, teacher_params, scored_batch) -> ROLLOUT_KEYS arrays`.

    `fwd(config, params, batch) -> ((hidden, head, vocab_major))` runs a model.
    """
    temperature, mix = float(m.temperature), float(m.teacher_mix)

    def score(student_params, teacher_params, batch):
        def logprobs(config, params):
            hidden, head, vocab_major = fwd(config, params, batch)
            return target_logprobs(
                hidden,
                head,
                vocab_major,
                batch["targets"],
                vocab_size=vocab_size,
                temperature=temperature,
                chunk=chunk,
                final_softcap=config.final_logit_softcap,
            )

        mask = batch["loss_mask"]
        logq = logprobs(student, student_params) * mask
        logp = logprobs(teacher, teacher_params) * mask
        weights = losses.minillm_importance_weights(logq, logp, teacher_mix=mix) * mask
        rewards = losses.minillm_rewards(
            logp, logq, reward_scaling=float(m.reward_scaling), reward_clip=float(m.reward_clip)
        )
        return {"old_logprobs": logq, "importance_weights": weights, "rewards": rewards * mask}

    return score


@dataclasses.dataclass(frozen=True)
class Phases:
    """The PPO schedule: which rollout rows step t trains on.

    Attributes:
      rollouts: R rollouts per phase; minibatch: rows per optimizer step;
      epochs: passes over the store per phase; seed: the run's seed.
    """

    rollouts: int
    minibatch: int
    epochs: int
    seed: int

    @property
    def per_epoch(self) -> int:
        return self.rollouts // self.minibatch

    @property
    def steps_per_phase(self) -> int:
        return self.epochs * self.per_epoch

    def phase(self, step: int) -> int:
        return step // self.steps_per_phase

    def rows(self, step: int) -> np.ndarray:
        """The store rows of 0-based `step`: a permutation per (phase, epoch)."""
        k = step % self.steps_per_phase
        epoch, j = divmod(k, self.per_epoch)
        perm = np.random.default_rng([self.seed, self.phase(step), epoch, 0x4D4C]).permutation(
            self.rollouts
        )
        return np.sort(perm[j * self.minibatch : (j + 1) * self.minibatch])


class RolloutStore:
    """The current phase's scored rollouts, host numpy `[R, W]` (every process holds all)."""

    def __init__(self, width: int):
        self.width = width
        self.phase: int | None = None
        self.arrays: dict[str, np.ndarray] = {}
        self._parts: list[dict[str, np.ndarray]] = []

    def begin(self, phase: int) -> None:
        self.phase, self.arrays, self._parts = phase, {}, []

    def add(self, scored: dict[str, np.ndarray]) -> None:
        """One scored chunk `[b, P + N]`, left-padded to the store's width (zeros:
        segment id 0, never scored; positions stay those the sampler gave)."""
        pad = self.width - scored["tokens"].shape[1]
        if pad < 0:
            raise ValueError(f"rollout width {scored['tokens'].shape[1]} > store {self.width}")
        self._parts.append(
            {k: np.pad(np.asarray(scored[k]), ((0, 0), (pad, 0))) for k in STORE_KEYS}
        )

    def finish(self) -> None:
        self.arrays = {k: np.concatenate([p[k] for p in self._parts]) for k in STORE_KEYS}
        self._parts = []

    def minibatch(self, rows: np.ndarray, widths: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
        """The store's `rows`, left-trimmed to the smallest of `widths` (prompt bucket
        + new tokens) that holds them: only never-scored left padding is cut, so the
        step runs at the width the rows need (one compile per width)."""
        out = {k: v[rows] for k, v in self.arrays.items()}
        real = out["segment_ids"].any(axis=0)
        need = self.width - int(np.argmax(real)) if real.any() else 1
        width = min([w for w in sorted(widths) if need <= w <= self.width] or [self.width])
        return {k: v[:, self.width - width :] for k, v in out.items()}

    def state(self) -> dict | None:
        if self.phase is None or not self.arrays:
            return None
        return {"phase": self.phase, "arrays": host_state.pack(self.arrays)}

    def restore(self, state: dict | None) -> None:
        if state is None:
            self.phase, self.arrays = None, {}
            return
        self.phase, self.arrays = int(state["phase"]), host_state.unpack(state["arrays"])
