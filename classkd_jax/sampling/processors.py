"""Logit processors for decoding: n-gram ban, temperature, top-k and top-p.

Pure functions over `[B, V]` float32 logits, applied in the order Hugging Face
`generate` applies them (`no_repeat_ngram_size` first, then temperature, top-k,
top-p), so greedy and sampled outputs can be compared with it. Removed tokens get
`-inf` (as in Hugging Face), which `log_softmax` and `jax.random.categorical`
treat as probability zero.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static decoding settings (hashable: one compiled program per value).

    Attributes:
      max_new_tokens: static length of the completion buffer; decoding stops
        earlier when every row has emitted an EOS id.
      greedy: argmax decoding; temperature, top_k and top_p are then ignored.
      temperature: divides the logits before sampling (> 0).
      top_k: keep the k most likely tokens (ties at the k-th value kept, as in
        Hugging Face); 0 disables.
      top_p: nucleus sampling: keep the smallest most-likely set whose mass
        reaches top_p; 1.0 disables.
      no_repeat_ngram_size: n > 0 bans any token that would repeat an n-gram of
        the row's prompt + completion so far (Hugging Face semantics).
      eos_ids: token ids that end a row (the EOS is kept in the completion).
      pad_id: id written after a row has ended.
      teacher_mix: MiniLLM's teacher-mixed sampling, alpha in [0, 1]: tokens are
        drawn from `alpha * p_teacher + (1 - alpha) * q_student`, each processed
        by the settings above and mixed in probability space. 0 disables.
      mix_vocab: with `teacher_mix > 0`, the real vocabulary both models share
        (`len(tokenizer)`): ids from it on are padding rows of the heads and
        are never drawn. 0 = every row of the narrower head.
    """

    max_new_tokens: int
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    no_repeat_ngram_size: int = 0
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    teacher_mix: float = 0.0
    mix_vocab: int = 0

    def __post_init__(self):
        if isinstance(self.eos_ids, int):
            object.__setattr__(self, "eos_ids", (self.eos_ids,))
        object.__setattr__(self, "eos_ids", tuple(int(e) for e in self.eos_ids))
        checks = [
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (
                self.no_repeat_ngram_size >= 0,
                f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}",
            ),
            (self.mix_vocab >= 0, f"mix_vocab must be >= 0 (0 = all), got {self.mix_vocab}"),
            (
                0.0 <= self.teacher_mix <= 1.0,
                f"teacher_mix must be in [0, 1], got {self.teacher_mix}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SamplingConfig: {message}")


def ban_ngrams(
    logits: jax.Array, tokens: jax.Array, valid: jax.Array, cur: jax.Array, n: int
) -> jax.Array:
    """Sets to -inf every token that would repeat an n-gram of the row.

    Hugging Face's `NoRepeatNGramLogitsProcessor`, over the real tokens only:
    the last n - 1 tokens before `cur` are compared with every earlier window
    of n - 1 real tokens, and the token that followed a matching window is
    banned. (Hugging Face also counts left-padding tokens; that only differs
    when a prompt or completion itself contains the pad id.)

    Args:
      logits: [B, V] float32 for the token going to slot `cur`.
      tokens: [B, S] int32 token buffer (left-padded prompt, then completion).
      valid: [B, S] bool, True where the slot holds a real token.
      cur: [] int32, the slot the next token goes to; slots >= cur are ignored.
      n: static n-gram size; 0 returns `logits` unchanged.

    Returns:
      [B, V] float32.
    """
    batch, length = tokens.shape
    if n <= 0 or n > length:
        return logits
    starts = length - n + 1  # windows [j, j + n) for j < starts
    last_start = cur - (n - 1)
    # A window counts when it ends before `cur` and is made of real tokens.
    hit = jnp.broadcast_to((jnp.arange(starts) + n <= cur) & (last_start >= 0), (batch, starts))
    for k in range(n):
        hit &= valid[:, k : k + starts]
    if n > 1:
        begin = jnp.clip(last_start, 0, length - (n - 1))
        last = jax.lax.dynamic_slice_in_dim(tokens, begin, n - 1, axis=1)  # [B, n-1]
        last_valid = jax.lax.dynamic_slice_in_dim(valid, begin, n - 1, axis=1)
        hit &= jnp.all(last_valid, axis=1, keepdims=True)
        for k in range(n - 1):
            hit &= tokens[:, k : k + starts] == last[:, k : k + 1]
    banned_ids = tokens[:, n - 1 :]  # [B, starts]: the token ending window j
    rows = jnp.arange(batch)[:, None]
    banned = jnp.zeros(logits.shape, bool).at[rows, banned_ids].max(hit)
    return jnp.where(banned, NEG_INF, logits)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keeps tokens whose logit is >= the k-th largest (ties kept).

    Args:
      logits: [B, V] float32.
      k: static; 0 or k >= V returns `logits` unchanged.
    """
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][:, -1:]
    return jnp.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus filter: keeps a token when the mass of the tokens ranked above it
    is < p (so the most likely token is always kept). This is Hugging Face's
    `TopPLogitsWarper` rule (drop where the ascending cumulative mass <= 1 - p)
    written from the top.

    Args:
      logits: [B, V] float32.
      p: static in (0, 1]; 1.0 returns `logits` unchanged.
    """
    if p >= 1.0:
        return logits
    sorted_logits = -jnp.sort(-logits, axis=-1)  # descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_above = jnp.cumsum(probs, axis=-1) - probs
    num_kept = jnp.maximum(jnp.sum(mass_above < p, axis=-1, keepdims=True), 1)
    threshold = jnp.take_along_axis(sorted_logits, num_kept - 1, axis=-1)
    return jnp.where(logits < threshold, NEG_INF, logits)


def argmax(x: jax.Array) -> jax.Array:
    """`jnp.argmax(x, axis=-1)` (the first index of the maximum) as a max and a
    min reduction: [B, V] -> [B] int32. On CPU this is about twice as fast as
    XLA's variadic (value, index) reduction, and it is the greedy step of every
    decode. A row of NaNs gives V - 1."""
    vocab = x.shape[-1]
    top = jnp.max(x, axis=-1, keepdims=True)
    ids = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(x == top, ids, vocab - 1), axis=-1)


CDF_BLOCK = 256  # vocabulary block of `categorical`'s two-level inverse CDF


def categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
    """Draws one token per row from softmax(`logits`): [B, V] -> [B] int32.

    The same distribution as `jax.random.categorical`, drawn by inverse CDF in
    two levels (a block of `CDF_BLOCK` tokens by the blocks' masses, then a
    token inside it), so it takes two uniforms per row where the Gumbel trick
    takes V uniforms and 2V logarithms: on CPU that is ~10 ms a step for
    16 x 32k. The two levels keep every float32 cumulative sum short (at most
    max(V / CDF_BLOCK, CDF_BLOCK) terms), so rounding moves the boundaries by
    a relative ~1e-5 of a block's mass at worst. A token with probability 0
    (-inf logit) is never drawn; a row of -inf draws token 0.
    """
    batch, vocab = logits.shape
    blocks = -(-vocab // CDF_BLOCK)
    padded = jnp.pad(logits, ((0, 0), (0, blocks * CDF_BLOCK - vocab)), constant_values=NEG_INF)
    top = jnp.max(padded, axis=-1, keepdims=True)
    probs = jnp.exp(padded - jnp.where(jnp.isfinite(top), top, 0.0))  # unnormalised
    probs = probs.reshape(batch, blocks, CDF_BLOCK)
    block_key, token_key = jax.random.split(key)

    def draw(key, weights):  # weights [B, N] >= 0 -> [B] index of a nonzero weight
        # Whole rows on every device that holds a share of the vocabulary (a sampler
        # on a mesh; a no-op without logical rules): B x N floats, N <= V / 256.
        weights = nn.with_logical_constraint(weights, ("batch", None))
        cdf = jnp.cumsum(weights, axis=-1)
        u = nn.with_logical_constraint(jax.random.uniform(key, (batch, 1)), ("batch", None))
        u = u * cdf[:, -1:]
        index = jnp.sum(cdf <= u, axis=-1)
        # Rounding can put u at the very top: fall back to the last nonzero weight.
        ids = jax.lax.broadcasted_iota(jnp.int32, weights.shape, 1)
        last = jnp.max(jnp.where(weights > 0, ids, 0), axis=-1)
        return jnp.minimum(index, last).astype(jnp.int32)

    block = draw(block_key, probs.sum(axis=-1))
    # The chosen block by a masked sum, not a gather: over a vocabulary split across
    # devices that reduces [B, CDF_BLOCK], where a gather moves all of `probs`.
    chosen = jax.lax.broadcasted_iota(jnp.int32, (batch, blocks, 1), 1) == block[:, None, None]
    inside = jnp.sum(jnp.where(chosen, probs, 0.0), axis=1)
    return block * CDF_BLOCK + draw(token_key, inside)


def warp(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Temperature, then top-k, then top-p (Hugging Face's order); identity when
    greedy. logits: [B, V] float32 -> [B, V] float32."""
    if cfg.greedy:
        return logits
    if cfg.temperature != 1.0:
        logits = logits / cfg.temperature
    logits = top_k_filter(logits, cfg.top_k)
    return top_p_filter(logits, cfg.top_p)
