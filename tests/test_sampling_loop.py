"""The while-loop sampler against plain full forwards of the same model (no cache).

The references never use the KV cache or the loop: every check recomputes the
model's logits with one uncached forward over prompt + completion.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from classkd_jax.models import ModelConfig, Transformer, init_params, unstack_layers
from classkd_jax.sampling import (
    Decoder,
    Sampler,
    SamplingConfig,
    left_pad,
    prompt_positions,
    top_k_filter,
    top_p_filter,
)
from classkd_jax.sharding import make_mesh

VOCAB = 50
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15], [16, 17, 18, 19, 20]]


def _config(**kw) -> ModelConfig:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return ModelConfig(**{**base, **kw})


_init = jax.jit(init_params, static_argnums=0)


@pytest.fixture(scope="module")
def model():
    config = _config()
    return config, _init(config, jax.random.key(0))


@functools.partial(jax.jit, static_argnums=0)
def _forward(config, params, tokens, positions, segment_ids):
    return (
        Transformer(config)
        .apply({"params": params}, tokens, positions=positions, segment_ids=segment_ids)
        .logits
    )


def full_logits(config, params, tokens, valid) -> np.ndarray:
    """Uncached forward over left-padded rows: [B, S] -> [B, S, V] float32."""
    valid = jnp.asarray(valid)
    positions = prompt_positions(valid)
    return np.asarray(_forward(config, params, jnp.asarray(tokens), positions, valid.astype(int)))


def python_greedy(config, params, prompt, n, eos=(), width=16):
    """Greedy decoding by a Python loop of full forwards on the row RIGHT-padded to
    `width` (causal attention: trailing padding cannot change earlier logits)."""
    seq, logps = list(prompt), []
    positions = jnp.arange(width)[None]
    ones = jnp.ones((1, width), jnp.int32)
    for _ in range(n):
        row = jnp.asarray([seq + [0] * (width - len(seq))])
        logits = _forward(config, params, row, positions, ones)[0, len(seq) - 1]
        token = int(jnp.argmax(logits))
        seq.append(token)
        logps.append(float(jax.nn.log_softmax(logits)[token]))
        if token in eos:
            break
    return seq[len(prompt) :], logps


@pytest.fixture(scope="module")
def greedy_run(model):
    """One greedy run shared by several tests: 8 rows (4 real), bucket 8, an EOS
    chosen so that it fires early in some rows (derived from the reference)."""
    config, params = model
    free = [python_greedy(config, params, p, 6)[0] for p in PROMPTS]
    eos = free[0][2]  # fires at step 2 of row 0; the others may stop elsewhere or never
    assert any(eos not in row for row in free), "pick a token that does not end every row"
    sampler = Sampler(config)
    tokens, mask, row_valid = left_pad(PROMPTS, 8, pad_id=0, batch_size=8)
    cfg = SamplingConfig(max_new_tokens=6, greedy=True, eos_ids=(eos, 49), pad_id=0)
    out = sampler(params, tokens, mask, jax.random.key(0), cfg, row_valid=row_valid)
    return sampler, cfg, (tokens, mask, row_valid), out


def test_greedy_loop_equals_python_loop_with_early_eos(model, greedy_run):
    config, params = model
    _, cfg, _, out = greedy_run
    n = cfg.max_new_tokens
    longest = 0
    for b, prompt in enumerate(PROMPTS):
        want, want_logps = python_greedy(config, params, prompt, n, eos=cfg.eos_ids)
        k = len(want)
        longest = max(longest, k)
        np.testing.assert_array_equal(np.asarray(out.tokens[b, :k]), want, err_msg=f"row {b}")
        assert np.asarray(out.mask[b]).tolist() == [True] * k + [False] * (n - k)
        assert (np.asarray(out.tokens[b, k:]) == 0).all(), "rows that ended are padded"
        np.testing.assert_allclose(np.asarray(out.logprobs[b, :k]), want_logps, atol=2e-5)
        np.testing.assert_array_equal(out.logprobs[b], out.student_logprobs[b])
    assert any(not np.asarray(out.mask[b]).all() for b in range(len(PROMPTS))), "EOS fired"
    assert not np.asarray(out.mask[len(PROMPTS) :]).any(), "batch-padding rows stay empty"
    assert int(out.num_steps) == longest


def test_a_model_held_unrolled_samples_the_same_in_place(model, greedy_run):
    """A model held unrolled (`scan_layers=False`) is decoded from its own
    arrays, with no second copy of the layer weights, and samples the same."""
    config, params = model
    _, cfg, (tokens, mask, row_valid), out = greedy_run
    unrolled, flat = config.replace(scan_layers=False), unstack_layers(params, config)
    decoder = Decoder.of(unrolled, flat)
    assert decoder.params is flat and decoder.config == unrolled
    got = Sampler(unrolled)(flat, tokens, mask, jax.random.key(0), cfg, row_valid=row_valid)
    np.testing.assert_array_equal(got.tokens, out.tokens)
    np.testing.assert_array_equal(got.mask, out.mask)
    np.testing.assert_allclose(got.logprobs, out.logprobs, atol=1e-6)


def test_compile_counter_one_trace_per_bucket(model, greedy_run):
    _, params = model
    sampler, cfg, _, _ = greedy_run
    traces = sampler.num_traces
    assert traces == 1
    for i, prompts in enumerate([[[1, 2], [3, 4, 5]], [[7, 8, 9, 10, 11, 12, 13, 14], [12]]]):
        tokens, mask, valid = left_pad(prompts, 8, pad_id=0, batch_size=8)  # same bucket
        sampler(params, tokens, mask, jax.random.key(i), cfg, row_valid=valid)
    assert sampler.num_traces == 1, "new prompts of the same bucket must not recompile"
    assert sampler._program(cfg)._cache_size() == 1
    tokens, mask, valid = left_pad([[1] * 9], 16, pad_id=0, batch_size=8)
    sampler(params, tokens, mask, jax.random.key(9), cfg, row_valid=valid)
    assert sampler.num_traces == 2, "a new bucket compiles once more"


def _sample_and_reference(model, cfg, batch=32, seed=1):
    config, params = model
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    tokens, mask, _ = left_pad(prompts, 8, pad_id=0)
    out = Sampler(config)(params, tokens, mask, jax.random.key(seed), cfg)
    seq = np.concatenate([tokens, np.asarray(out.tokens)], axis=1)
    valid = np.concatenate([mask, np.asarray(out.mask)], axis=1)
    logits = full_logits(config, params, seq, valid)[:, 7:-1]  # predicts completion slots
    return out, logits


def test_filtered_sampling_stays_in_the_allowed_set(model):
    cfg = SamplingConfig(max_new_tokens=5, temperature=0.8, top_k=6, top_p=0.6, pad_id=0)
    out, logits = _sample_and_reference(model, cfg)
    flat = jnp.asarray(logits.reshape(-1, VOCAB)) / cfg.temperature
    allowed = top_p_filter(top_k_filter(flat, cfg.top_k), cfg.top_p)
    logp_ref = np.asarray(jax.nn.log_softmax(allowed)).reshape(logits.shape)
    toks = np.asarray(out.tokens)
    picked = np.take_along_axis(logp_ref, toks[..., None], axis=-1)[..., 0]
    assert np.isfinite(picked).all(), "a token outside the top-k / top-p set was emitted"
    np.testing.assert_allclose(np.asarray(out.logprobs), picked, atol=2e-5)
    kept = np.isfinite(logp_ref).sum(-1)
    assert kept.min() >= 1 and kept.max() < VOCAB, "the filter should be active"
    assert len(np.unique(toks)) > 3, "sampling, not a constant"


def test_sampling_follows_model_distribution():
    """Chi-square goodness of fit of the first two sampled tokens (a fixed key)."""
    config = _config(vocab_size=8, num_layers=1)
    params = dict(_init(config, jax.random.key(3)))
    prompt = np.array([[1, 2, 3]], np.int32)
    # [prompt, t1] for every t1: uncached forwards give the model's distributions.
    seq = np.concatenate([np.tile(prompt, (8, 1)), np.arange(8)[:, None]], axis=1)
    # Rescale the head so the first-step logits have std 1.5: far from uniform
    # (the test has power) yet not one-hot (every cell gets samples).
    first_logits = full_logits(config, params, seq, np.ones_like(seq, bool))[0, 2]
    params["lm_head"] = params["lm_head"] * (1.5 / first_logits.std())
    batch = 4000
    tokens = np.tile(prompt, (batch, 1))
    mask = np.ones_like(tokens, bool)
    cfg = SamplingConfig(max_new_tokens=2, pad_id=0)
    out = Sampler(config)(params, tokens, mask, jax.random.key(7), cfg)
    first, second = np.asarray(out.tokens[:, 0]), np.asarray(out.tokens[:, 1])
    logits = full_logits(config, params, seq, np.ones_like(seq, bool))
    p1 = np.asarray(jax.nn.softmax(logits[0, 2]), np.float64)
    p2 = np.asarray(jax.nn.softmax(logits[:, 3]), np.float64)  # [t1, t2]
    assert p1.max() < 0.9 and p1.min() < 0.05, "a non-trivial distribution to test"

    def p_value(observed, expected):
        keep = expected >= 5  # pool sparse cells, as a chi-square test needs
        obs = np.append(observed[keep], observed[~keep].sum())
        exp = np.append(expected[keep], expected[~keep].sum())
        obs, exp = obs[exp > 0], exp[exp > 0]
        return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue

    counts1 = np.bincount(first, minlength=8)
    joint = np.zeros((8, 8))
    np.add.at(joint, (first, second), 1)
    expected_joint = p1[:, None] * p2 * batch
    assert p_value(counts1, p1 * batch) > 1e-3
    assert p_value(joint.ravel(), expected_joint.ravel()) > 1e-3
    # The test has power: a sampler at temperature 0.7, or one that ignored the
    # first token when drawing the second, would be rejected.
    p1_cold = np.asarray(jax.nn.softmax(logits[0, 2] / 0.7), np.float64)
    assert p_value(counts1, p1_cold * batch) < 1e-6
    assert p_value(joint.ravel(), (p1[:, None] * p1[None, :] * batch).ravel()) < 1e-6
    np.testing.assert_allclose(
        np.asarray(out.logprobs[:, 0]), np.log(p1[first]), atol=1e-5, rtol=1e-5
    )


def test_teacher_mixed_sampling_records_both_policies(model):
    student_config, student = model
    teacher_config = _config(num_layers=1, hidden_size=48, head_dim=12)
    teacher = _init(teacher_config, jax.random.key(11))
    alpha = 0.3
    cfg = SamplingConfig(max_new_tokens=5, teacher_mix=alpha, pad_id=0)
    # On the mesh: both caches in one sharded loop (batch 4 over data x fsdp).
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sampler = Sampler(student_config, teacher_config=teacher_config, mesh=mesh)
    tokens, mask, _ = left_pad(PROMPTS, 8, pad_id=0)
    out = sampler(student, tokens, mask, jax.random.key(5), cfg, teacher_params=teacher)
    seq = np.concatenate([tokens, np.asarray(out.tokens)], axis=1)
    valid = np.concatenate([mask, np.asarray(out.mask)], axis=1)
    q = jax.nn.softmax(full_logits(student_config, student, seq, valid)[:, 7:-1])
    p = jax.nn.softmax(full_logits(teacher_config, teacher, seq, valid)[:, 7:-1])
    toks = np.asarray(out.tokens)[..., None]
    q_tok = np.take_along_axis(np.asarray(q), toks, -1)[..., 0]
    p_tok = np.take_along_axis(np.asarray(p), toks, -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.student_logprobs), np.log(q_tok), atol=2e-5)
    mixed = np.log(alpha * p_tok + (1 - alpha) * q_tok)
    np.testing.assert_allclose(np.asarray(out.logprobs), mixed, atol=2e-5)
    assert not np.allclose(out.logprobs, out.student_logprobs)
    with pytest.raises(ValueError, match="teacher_params"):
        sampler(student, tokens, mask, jax.random.key(5), cfg)


def test_sharded_greedy_equals_single_device(model, greedy_run):
    config, params = model
    _, cfg, (tokens, mask, row_valid), single = greedy_run
    assert jax.device_count() == 8
    # Batch over data x fsdp, params placed by the training rules (fsdp + tensor).
    sharded = Sampler(config, mesh=make_mesh(data=2, fsdp=2, tensor=2))
    out = sharded(params, tokens, mask, jax.random.key(0), cfg, row_valid=row_valid)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(single.tokens))
    np.testing.assert_array_equal(np.asarray(out.mask), np.asarray(single.mask))
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(single.logprobs), atol=1e-5)
    assert int(out.num_steps) == int(single.num_steps)
    assert out.tokens.sharding.spec[0] == ("data", "fsdp")
    assert len(out.tokens.sharding.device_set) == 8
    assert sharded._param_shardings["layers"]["mlp"]["down"]["kernel"].spec != (None,) * 3
    with pytest.raises(ValueError, match="multiple of the 4 shards"):
        sharded(params, tokens[:2], mask[:2], jax.random.key(0), cfg)


def test_bad_prompt_layout_is_named(model):
    config, params = model
    cfg = SamplingConfig(max_new_tokens=2, pad_id=0)
    cfg_long = SamplingConfig(max_new_tokens=61, pad_id=0)
    tokens = np.ones((2, 4), np.int32)
    right_padded = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    with pytest.raises(ValueError, match="row 0 is not left-padded"):
        Sampler(config)(params, tokens, right_padded, jax.random.key(0), cfg)
    with pytest.raises(ValueError, match="max_new_tokens=61 exceeds the model's context of 64"):
        Sampler(config)(params, tokens, np.ones((2, 4), bool), jax.random.key(0), cfg_long)
    with pytest.raises(ValueError, match=r"1 \.\. 4"):
        left_pad([[1, 2, 3, 4, 5]], 4, pad_id=0)
    with pytest.raises(ValueError, match=r"prompt of 9 tokens is longer"):
        from classkd_jax.sampling import bucket_length

        bucket_length(9, (4, 8))
