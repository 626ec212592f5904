"""On-policy sampling: a jitted `lax.while_loop` decoder with an explicit KV cache.

Public API:
  SamplingConfig: static settings (greedy / temperature / top-k / top-p /
    no_repeat_ngram_size / EOS ids / MiniLLM teacher mix).
  Sampler: jits and shards `sample_loop`; one compile per (config, bucket, batch).
  sample_loop: the traceable loop itself (prefill + while_loop).
  SampleOutput, SamplingState: the result and the loop carry.
  left_pad, bucket_length, default_buckets, check_left_padded: host-side prompt
    bucketing.
  ban_ngrams, top_k_filter, top_p_filter, warp: the logit processors; argmax and
    categorical: the greedy and the sampled pick.
  Decoder: a model in the form the loop runs it (unrolled, head laid out).
  complete_token_ids, generate_completions: batch completion of token-id or
    string prompts in input order (bucketed, sharded, seeded per batch);
    PromptTooLongError: a prompt that does not fit the context.
"""

from classkd_jax.sampling.completions import (
    PromptTooLongError,
    complete_token_ids,
    generate_completions,
)
from classkd_jax.sampling.loop import (
    Decoder,
    SampleOutput,
    SamplingState,
    prompt_positions,
    sample_loop,
)
from classkd_jax.sampling.processors import (
    SamplingConfig,
    argmax,
    ban_ngrams,
    categorical,
    top_k_filter,
    top_p_filter,
    warp,
)
from classkd_jax.sampling.sampler import (
    Sampler,
    bucket_length,
    check_left_padded,
    data_axes,
    default_buckets,
    left_pad,
)

__all__ = [
    "Decoder",
    "PromptTooLongError",
    "SampleOutput",
    "Sampler",
    "SamplingConfig",
    "SamplingState",
    "argmax",
    "ban_ngrams",
    "categorical",
    "bucket_length",
    "check_left_padded",
    "complete_token_ids",
    "data_axes",
    "default_buckets",
    "generate_completions",
    "left_pad",
    "prompt_positions",
    "sample_loop",
    "top_k_filter",
    "top_p_filter",
    "warp",
]
