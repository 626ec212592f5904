"""The logit processors against transformers' own processors (no model needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    NoRepeatNGramLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from classkd_jax.sampling import (
    SamplingConfig,
    argmax,
    ban_ngrams,
    categorical,
    top_k_filter,
    top_p_filter,
    warp,
)

VOCAB = 6


def _hf(processors, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
    scores = torch.tensor(logits)
    for p in processors:
        scores = p(torch.tensor(ids, dtype=torch.long), scores)
    return scores.numpy()


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ban_ngrams_matches_transformers_on_ragged_left_padded_rows(n):
    rng = np.random.default_rng(n)
    batch, buf = 5, 14
    lengths = [1, 3, 7, 10, 10]  # real tokens before `cur`
    cur = 11
    tokens = rng.integers(0, VOCAB, (batch, buf)).astype(np.int32)  # garbage after cur too
    valid = np.zeros((batch, buf), bool)
    for b, length in enumerate(lengths):
        valid[b, cur - length : cur] = True
        tokens[b, : cur - length] = 0  # pad id 0 also occurs as a real token: skipped by mask
    tokens[4, cur - 10 : cur] = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]  # periodic: every n bans
    logits = rng.normal(size=(batch, VOCAB)).astype(np.float32)
    ours = np.asarray(ban_ngrams(jnp.asarray(logits), tokens, valid, jnp.int32(cur), n))
    for b, length in enumerate(lengths):
        row = tokens[b : b + 1, cur - length : cur]  # the unpadded row, as HF sees it alone
        want = _hf([NoRepeatNGramLogitsProcessor(n)], row, logits[b : b + 1])
        np.testing.assert_array_equal(ours[b : b + 1], want, err_msg=f"row {b} n={n}")
    assert np.isinf(ours).any(), "the test data should trigger some bans"


def test_ban_ngrams_off_and_longer_than_buffer():
    logits = jnp.zeros((1, VOCAB))
    tokens = jnp.zeros((1, 3), jnp.int32)
    valid = jnp.ones((1, 3), bool)
    assert (ban_ngrams(logits, tokens, valid, jnp.int32(3), 0) == 0).all()
    assert (ban_ngrams(logits, tokens, valid, jnp.int32(3), 4) == 0).all()


@pytest.mark.parametrize("k", [1, 3, VOCAB, 50])
def test_top_k_matches_transformers(k):
    logits = np.random.default_rng(0).normal(size=(4, VOCAB)).astype(np.float32)
    logits[0, :3] = 1.5  # a tie at the boundary: HF keeps every tied token
    ours = np.asarray(top_k_filter(jnp.asarray(logits), k))
    want = _hf([TopKLogitsWarper(k)], np.zeros((4, 1)), logits) if k < 50 else logits
    np.testing.assert_array_equal(ours, want)


@pytest.mark.parametrize("p", [0.01, 0.3, 0.7, 0.95, 1.0])
def test_top_p_matches_transformers(p):
    logits = np.random.default_rng(1).normal(size=(16, 40)).astype(np.float32) * 2
    ours = np.asarray(top_p_filter(jnp.asarray(logits), p))
    want = _hf([TopPLogitsWarper(p)], np.zeros((16, 1)), logits) if p < 1 else logits
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(want))
    np.testing.assert_array_equal(ours[~np.isinf(ours)], want[~np.isinf(want)])


def test_warp_chain_matches_transformers_order():
    logits = np.random.default_rng(2).normal(size=(8, 30)).astype(np.float32)
    cfg = SamplingConfig(max_new_tokens=1, temperature=0.7, top_k=10, top_p=0.8)
    hf = [TemperatureLogitsWarper(0.7), TopKLogitsWarper(10), TopPLogitsWarper(0.8)]
    want = _hf(hf, np.zeros((8, 1)), logits)
    ours = np.asarray(warp(jnp.asarray(logits), cfg))
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(want))
    np.testing.assert_allclose(ours[~np.isinf(ours)], want[~np.isinf(want)], rtol=1e-6)
    greedy = SamplingConfig(max_new_tokens=1, greedy=True, temperature=0.5, top_k=1)
    np.testing.assert_array_equal(np.asarray(warp(jnp.asarray(logits), greedy)), logits)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 1, "temperature": 0.0}, "temperature"),
        ({"max_new_tokens": 1, "top_k": -1}, "top_k"),
        ({"max_new_tokens": 1, "top_p": 0.0}, "top_p"),
        ({"max_new_tokens": 1, "no_repeat_ngram_size": -2}, "no_repeat_ngram_size"),
        ({"max_new_tokens": 1, "teacher_mix": 1.5}, "teacher_mix"),
    ],
)
def test_sampling_config_names_the_bad_value(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SamplingConfig(**kwargs)


def test_sampling_config_normalises_eos_and_is_hashable():
    a = SamplingConfig(max_new_tokens=4, eos_ids=[3, 5])
    b = SamplingConfig(max_new_tokens=4, eos_ids=(3, 5))
    assert a == b and hash(a) == hash(b) and a.eos_ids == (3, 5)
    assert SamplingConfig(max_new_tokens=4, eos_ids=7).eos_ids == (7,)


def test_argmax_is_the_first_index_of_the_maximum():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 50)).astype(np.float32)
    logits[1, [3, 17, 40]] = 9.0  # ties: the first wins, as jnp.argmax
    logits[2, :] = -np.inf
    logits[2, 7] = 0.0  # everything else banned
    logits[3, :] = 1.0  # all tied
    got = np.asarray(argmax(jnp.asarray(logits)))
    np.testing.assert_array_equal(got, np.argmax(logits, axis=-1))
    assert got[1] == 3 and got[2] == 7 and got[3] == 0 and got.dtype == np.int32


def test_categorical_draws_the_softmax_distribution_and_never_a_banned_token():
    from scipy import stats

    vocab = 1000  # four blocks of the two-level inverse CDF, the last one partial
    rng = np.random.default_rng(0)
    logits = (2 * rng.normal(size=vocab)).astype(np.float32)
    logits[rng.random(vocab) < 0.3] = -np.inf
    logits[999] = 1.0  # the very last token is live
    probs = np.exp(logits.astype(np.float64) - logits.max())
    probs /= probs.sum()
    draw = jax.jit(jax.vmap(lambda k: categorical(k, jnp.broadcast_to(logits, (500, vocab)))))
    draws = np.asarray(draw(jax.random.split(jax.random.key(0), 200))).ravel()
    counts = np.bincount(draws, minlength=vocab)
    assert counts[np.isinf(logits)].sum() == 0

    def pvalue(p):
        expected = p * counts.sum()
        keep = expected >= 5  # pool sparse cells, as a chi-square test needs
        obs = np.append(counts[keep], counts[~keep].sum())
        exp = np.append(expected[keep], expected[~keep].sum())
        return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue

    assert pvalue(probs) > 1e-3
    sharper = probs**1.1 / (probs**1.1).sum()  # what a slightly wrong sampler draws
    assert pvalue(sharper) < 1e-6
    # Deterministic per key; a one-hot row draws its token; an all -inf row draws 0.
    rows = np.full((3, vocab), -np.inf, np.float32)
    rows[0, 700] = 0.0
    rows[1] = logits
    got = categorical(jax.random.key(5), jnp.asarray(rows))
    assert got[0] == 700 and got[2] == 0 and got.dtype == jnp.int32
    np.testing.assert_array_equal(got, categorical(jax.random.key(5), jnp.asarray(rows)))
