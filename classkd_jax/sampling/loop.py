"""The decoding loop: prefill, then one `lax.while_loop` over decode steps.

Layout (gemma's sampler loop): prompts are LEFT-padded to a static bucket
length P, so every row writes its next token to the same slot and the KV cache
shares one write index. The token buffer holds `P + N` slots (N =
`max_new_tokens`, static); the number of decode steps is dynamic: the loop stops
when every row has emitted an EOS id or N tokens exist. Positions follow Hugging
Face (`max(cumsum(mask) - 1, 0)` for the prompt, then counting on), so outputs
match `transformers` `generate` on left-padded batches.

Everything here is traced inside one jitted program (see `sampler.py`): no host
round trip per token. The models run as a `Decoder`: unrolled
(`scan_layers=False`), with params unstacked, laid out for decoding (the
sampler's decode layout, `classkd_jax.sharding.decode_rules`) and the head laid
out once, before the loop, so each decode step reads every layer's weights and
KV cache in place and moves no weights between devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from classkd_jax.models import (
    KVCache,
    ModelConfig,
    Transformer,
    init_cache,
    lm_head,
    repeat_kv_heads,
    softcap,
    unstack_layers,
)
from classkd_jax.sampling.processors import (
    NEG_INF,
    SamplingConfig,
    argmax,
    ban_ngrams,
    categorical,
    warp,
)


@struct.dataclass
class SampleOutput:
    """What the sampler returns (N = max_new_tokens, P = prompt bucket).

    Attributes:
      tokens: [B, N] int32 completion tokens; `pad_id` after a row ended.
      mask: [B, N] bool response mask: True for generated tokens, the EOS
        included.
      logprobs: [B, N] float32 log-probability of each token under the policy
        it was drawn from (after the n-gram ban, temperature, top-k and top-p;
        the teacher mixture when `teacher_mix > 0`; for greedy decoding the
        log-softmax of the n-gram-banned logits). 0 where `mask` is False.
      student_logprobs: [B, N] float32 the same under the student's own
        processed distribution (equal to `logprobs` without teacher mixing);
        MiniLLM's importance weight is `exp(student_logprobs - logprobs)`.
      prompt_tokens: [B, P] int32 the left-padded prompts.
      prompt_mask: [B, P] bool.
      num_steps: [] int32 decode steps taken (<= N; fewer after an early stop).
    """

    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    student_logprobs: jax.Array
    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    num_steps: jax.Array


@struct.dataclass
class SamplingState:
    """The while-loop carry.

    Attributes:
      step: [] int32 index in the completion of the token sampled next.
      tokens: [B, P + N] int32 prompt (left-padded) then completion.
      valid: [B, P + N] bool, True for real tokens.
      prompt_lengths: [B] int32 real prompt tokens per row.
      done: [B] bool, the row has emitted an EOS (or is a batch-padding row).
      logprobs, student_logprobs: [B, N] float32 (see `SampleOutput`).
      logits: [B, V] float32 student logits for the token at `step`.
      teacher_logits: [B, V] float32 or None.
      cache: the student's KVCache; teacher_cache: the teacher's or None.
    """

    step: jax.Array
    tokens: jax.Array
    valid: jax.Array
    prompt_lengths: jax.Array
    done: jax.Array
    logprobs: jax.Array
    student_logprobs: jax.Array
    logits: jax.Array
    teacher_logits: jax.Array | None
    cache: KVCache
    teacher_cache: KVCache | None


def prompt_positions(mask: jax.Array) -> jax.Array:
    """Hugging Face's positions for a left-padded prompt.

    mask: [B, P] bool -> [B, P] int32, `max(cumsum(mask) - 1, 0)`.
    """
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


# `(unrolled model config, repeat=True) -> (the config it decodes as (KV heads
# repeated up to the KV shards, see `models.repeat_kv_heads`; as given with
# repeat=False), shardings of that config's unrolled params, of its [V, D] head)`.
DecodeLayout = Callable[..., tuple[ModelConfig, object, object]]


@dataclasses.dataclass(frozen=True)
class Decoder:
    """A model in the form the loop runs it (built while tracing, never stored).

    Attributes:
      config: the model's config with `scan_layers=False`.
      params: unrolled params ('layers_0' ..): each layer's weights are their own
        arrays, which a loop body reads in place (a scanned stack would slice
        the stacked weights, i.e. copy them, on every step).
      head: [V, D] the output embedding in compute dtype, vocabulary-major: the
        fast operand layout for a [B, D] x [D, V] product on CPU (a tied
        embedding already is; an untied head is transposed once per call).

    The price: while a sampling call runs, the layer weights (and an untied
    head) exist twice, the caller's arrays and this unrolled copy in the decode
    layout. In the default tensor-parallel layout the copy is a `1/n` shard per
    device (n = the non-data devices) plus whatever does not divide (KV
    projections with fewer heads than shards, norms); it is a temporary of the
    sampling program, gone when the call returns.
    """

    config: ModelConfig
    params: dict
    head: jax.Array

    @classmethod
    def of(cls, config: ModelConfig, params, layout: DecodeLayout | None = None) -> Decoder:
        """Unstacks scanned params, moves them into the decode layout and lays out
        the head (traceable; once per call, before the loop).

        Args:
          config: the model's config (scanned or not).
          params: its params (scanned or unrolled), in any layout.
          layout: a `DecodeLayout`; None keeps the params where they are (one
            device, or the caller's layout).
        """
        unrolled = config.replace(scan_layers=False)
        params = unstack_layers(params, config)
        if layout is not None:
            decoded, param_shardings, head_sharding = layout(unrolled)
            if decoded.num_kv_heads != unrolled.num_kv_heads:
                # In the decode layout with its own KV heads first (the K/V projections
                # then whole), repeated there, then split: each step a resharding
                # XLA's partitioner does directly, never through a full replication.
                params = jax.lax.with_sharding_constraint(params, layout(unrolled, False)[1])
                params = repeat_kv_heads(params, unrolled, decoded.num_kv_heads)
            params = jax.lax.with_sharding_constraint(params, param_shardings)
            unrolled = decoded
        head = lm_head(params, config).T.astype(config.compute_dtype)
        if layout is not None:
            head = jax.lax.with_sharding_constraint(head, head_sharding)
        return cls(unrolled, params, head)

    def narrowed(self, width: int, layout: DecodeLayout | None = None) -> Decoder:
        """This decoder with its head cut to the first `width` vocabulary rows
        (once per call, before the loop): the shared vocabulary of two models
        whose heads differ only in padding rows."""
        if width == self.head.shape[0]:
            return self
        head = self.head[:width]
        if layout is not None:
            head = jax.lax.with_sharding_constraint(
                head, layout(self.config.replace(vocab_size=width))[2]
            )
        return dataclasses.replace(self, head=head)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[B, D] final hidden states -> [B, V] float32 logits (compute dtype,
        float32 accumulation, final soft-cap: the arithmetic of the model's own head)."""
        hidden = hidden.astype(self.config.compute_dtype)
        logits = jnp.einsum("bd,vd->bv", hidden, self.head, preferred_element_type=jnp.float32)
        logits = softcap(logits, self.config.final_logit_softcap)  # Gemma 2
        return nn.with_logical_constraint(logits, ("batch", "vocab"))

    def prefill(
        self, tokens: jax.Array, mask: jax.Array, cache_len: int
    ) -> tuple[jax.Array, KVCache]:
        """Runs the prompt through the model, filling a fresh cache.

        Args:
          tokens: [B, P] int32 left-padded prompts; mask: [B, P] bool.
          cache_len: static number of cache slots (P + N).

        Returns:
          ([B, V] float32 logits for the first new token, the filled KVCache).
        """
        cache = init_cache(self.config, tokens.shape[0], cache_len)
        out = Transformer(self.config).apply(
            {"params": self.params},
            tokens,
            positions=prompt_positions(mask),
            segment_ids=mask.astype(jnp.int32),
            cache=cache,
            compute_logits=False,
        )
        # Left padding puts every row's last prompt token at P - 1; only its
        # logits are needed, so the [B, P, V] logits are never built.
        return self.logits(out.hidden[:, -1, :]), out.cache

    def step(
        self, token: jax.Array, position: jax.Array, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        """One cached forward step. token, position: [B] int32 -> ([B, V] f32, cache)."""
        out = Transformer(self.config).apply(
            {"params": self.params},
            token[:, None],
            positions=position[:, None],
            segment_ids=jnp.ones_like(token)[:, None],
            cache=cache,
            compute_logits=False,
        )
        return self.logits(out.hidden[:, -1, :]), out.cache


def _choose(state: SamplingState, cfg: SamplingConfig, prompt_len: int, rng: jax.Array):
    """Picks the token for slot `prompt_len + step` from the carried logits.

    Returns:
      (token [B] int32, logprob [B] float32, student_logprob [B] float32).
    """
    cur = prompt_len + state.step
    n = cfg.no_repeat_ngram_size
    process = lambda logits: warp(ban_ngrams(logits, state.tokens, state.valid, cur, n), cfg)
    mixed = state.teacher_logits is not None
    real = lambda logits: logits
    if mixed and cfg.mix_vocab and cfg.mix_vocab < state.logits.shape[-1]:
        # Padding rows of the heads are no tokens: neither model may draw them.
        ids = jnp.arange(state.logits.shape[-1])
        real = lambda logits: jnp.where(ids < cfg.mix_vocab, logits, NEG_INF)
    student = process(real(state.logits))
    student_logp = jax.nn.log_softmax(student, axis=-1)
    if not mixed:
        policy_logp = student_logp
    else:
        teacher = process(real(state.teacher_logits))
        teacher_logp = jax.nn.log_softmax(teacher, axis=-1)
        # Mixing in probability space (MiniLLM): log(a p + (1 - a) q).
        alpha = cfg.teacher_mix
        policy_logp = jnp.logaddexp(jnp.log(alpha) + teacher_logp, jnp.log1p(-alpha) + student_logp)
    if cfg.greedy:
        token = argmax(policy_logp)
    else:
        key = jax.random.fold_in(rng, state.step)
        token = categorical(key, policy_logp)
    token = token.astype(jnp.int32)
    # A masked sum, not a gather: over a vocabulary split across devices it reduces
    # [B] values, where XLA's gather would all-reduce the whole [B, V] array.
    chosen = jnp.arange(policy_logp.shape[-1]) == token[:, None]
    pick = lambda logp: jnp.sum(jnp.where(chosen, logp, 0.0), axis=-1)
    return token, pick(policy_logp), pick(student_logp)


def _record(state: SamplingState, cfg: SamplingConfig, prompt_len: int, chosen) -> SamplingState:
    """Writes the chosen token (pad for rows already done) and advances `step`."""
    token, logp, student_logp = chosen
    live = ~state.done
    token = jnp.where(live, token, cfg.pad_id)
    slot = prompt_len + state.step
    put = lambda buf, col: jax.lax.dynamic_update_slice_in_dim(buf, col[:, None], slot, axis=1)
    put_n = lambda buf, col: jax.lax.dynamic_update_slice_in_dim(
        buf, col[:, None], state.step, axis=1
    )
    is_eos = jnp.isin(token, jnp.asarray(cfg.eos_ids, jnp.int32)) if cfg.eos_ids else False
    return state.replace(
        step=state.step + 1,
        tokens=put(state.tokens, token),
        valid=put(state.valid, live),
        done=state.done | (live & is_eos),
        logprobs=put_n(state.logprobs, jnp.where(live, logp, 0.0)),
        student_logprobs=put_n(state.student_logprobs, jnp.where(live, student_logp, 0.0)),
    )


def sample_loop(
    config: ModelConfig,
    params,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    cfg: SamplingConfig,
    row_valid: jax.Array | None = None,
    teacher_config: ModelConfig | None = None,
    teacher_params=None,
    cache_sharding: Callable[[ModelConfig, int, int], KVCache] | None = None,
    layout: DecodeLayout | None = None,
) -> SampleOutput:
    """Samples completions for a batch of left-padded prompts (traceable).

    Args:
      config, params: the student (the sampling policy).
      prompt_tokens: [B, P] int32 prompts, LEFT-padded; every row needs at
        least one real token.
      prompt_mask: [B, P] bool, True for real tokens.
      rng: a PRNG key; step s uses `fold_in(rng, s)`. Unused when greedy.
      cfg: static `SamplingConfig`.
      row_valid: [B] bool, False for batch-padding rows (they start done, so
        they never delay the early stop). Default: all True.
      teacher_config, teacher_params: the teacher, needed iff
        `cfg.teacher_mix > 0`.
      cache_sharding: optional `(config, batch, slots) -> KVCache` of
        shardings; the caches in the loop carry are constrained to it.
      layout: optional `DecodeLayout`: where the decoded models' weights live
        during the loop (moved there once, before it; see `Decoder.of`).

    Teacher-mixed sampling runs over the vocabulary both heads have: the wider
    head is cut to the narrower once, before the loop, and ids from
    `cfg.mix_vocab` on (the tokenizer's padding rows) get probability zero in
    both models, so no padding id is ever drawn; `student_logprobs` are then
    the student's over the same real tokens.

    Returns:
      A `SampleOutput`.
    """
    batch, prompt_len = prompt_tokens.shape
    n_new = cfg.max_new_tokens
    mixed = cfg.teacher_mix > 0
    if mixed != (teacher_params is not None):
        raise ValueError(
            f"teacher_mix={cfg.teacher_mix} needs teacher params iff > 0; "
            f"got teacher_params={'set' if teacher_params is not None else None}"
        )
    student = Decoder.of(config, params, layout)
    teacher = None
    if mixed:
        width = min(config.vocab_size, teacher_config.vocab_size)
        if not 0 <= cfg.mix_vocab <= width:
            raise ValueError(
                f"mix_vocab={cfg.mix_vocab} must be in [0, {width}] (the narrower head: "
                f"teacher vocab_size={teacher_config.vocab_size}, student "
                f"vocab_size={config.vocab_size})"
            )
        teacher = Decoder.of(teacher_config, teacher_params, layout)
        student, teacher = student.narrowed(width, layout), teacher.narrowed(width, layout)
    prompt_mask = prompt_mask.astype(bool)
    if row_valid is None:
        row_valid = jnp.ones((batch,), bool)
    cache_len = prompt_len + n_new

    def constrain(model_config, cache):
        if cache_sharding is None:
            return cache
        return jax.lax.with_sharding_constraint(
            cache, cache_sharding(model_config, batch, cache_len)
        )

    logits, cache = student.prefill(prompt_tokens, prompt_mask, cache_len)
    cache = constrain(student.config, cache)
    teacher_logits = teacher_cache = None
    if mixed:
        teacher_logits, teacher_cache = teacher.prefill(prompt_tokens, prompt_mask, cache_len)
        teacher_cache = constrain(teacher.config, teacher_cache)
    pad_cols = ((0, 0), (0, n_new))
    state = SamplingState(
        step=jnp.zeros((), jnp.int32),
        tokens=jnp.pad(prompt_tokens.astype(jnp.int32), pad_cols, constant_values=cfg.pad_id),
        valid=jnp.pad(prompt_mask, pad_cols),
        prompt_lengths=jnp.sum(prompt_mask, axis=1, dtype=jnp.int32),
        done=~row_valid.astype(bool),
        logprobs=jnp.zeros((batch, n_new), jnp.float32),
        student_logprobs=jnp.zeros((batch, n_new), jnp.float32),
        logits=logits,
        teacher_logits=teacher_logits,
        cache=cache,
        teacher_cache=teacher_cache,
    )
    state = _record(state, cfg, prompt_len, _choose(state, cfg, prompt_len, rng))

    def cond(s: SamplingState):
        return (s.step < n_new) & ~jnp.all(s.done)

    def body(s: SamplingState) -> SamplingState:
        prev = jax.lax.dynamic_index_in_dim(s.tokens, prompt_len + s.step - 1, 1, keepdims=False)
        position = s.prompt_lengths + s.step - 1
        logits, cache = student.step(prev, position, s.cache)
        s = s.replace(logits=logits, cache=constrain(student.config, cache))
        if mixed:
            t_logits, t_cache = teacher.step(prev, position, s.teacher_cache)
            t_cache = constrain(teacher.config, t_cache)
            s = s.replace(teacher_logits=t_logits, teacher_cache=t_cache)
        return _record(s, cfg, prompt_len, _choose(s, cfg, prompt_len, rng))

    state = jax.lax.while_loop(cond, body, state)
    return SampleOutput(
        tokens=state.tokens[:, prompt_len:],
        mask=state.valid[:, prompt_len:],
        logprobs=state.logprobs,
        student_logprobs=state.student_logprobs,
        prompt_tokens=prompt_tokens.astype(jnp.int32),
        prompt_mask=prompt_mask,
        num_steps=state.step,
    )
