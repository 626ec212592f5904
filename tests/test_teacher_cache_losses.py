"""The cached losses against the dense ones (float32, exact references), and the
sampled estimator's unbiasedness against top-k's bias."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classkd_jax import losses
from classkd_jax.losses import cached
from classkd_jax.teacher_cache import compute

V = 32


def _logits(seed, rows=6, scale=2.0):
    return scale * jax.random.normal(jax.random.key(seed), (rows, V), jnp.float32)


def _exact(p_logits, temperature):
    """Every id stored with its exact teacher probability as the weight."""
    logp = jax.nn.log_softmax(p_logits / temperature)
    ids = jnp.broadcast_to(jnp.arange(V, dtype=jnp.int32), logp.shape)
    return ids, jnp.exp(logp), logp


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_exact_weights_equal_the_dense_forward_kl(temperature):
    q, p = _logits(0), _logits(1)
    ids, w, logp = _exact(p, temperature)

    def from_cache(q):
        return jnp.sum(cached.sampled_kl_per_token(q, ids, w, logp, temperature=temperature))

    def dense(q):
        return jnp.sum(losses.forward_kl_per_token(q, p, temperature=temperature))

    np.testing.assert_allclose(from_cache(q), dense(q), rtol=1e-6)  # sums over 6 rows
    np.testing.assert_allclose(jax.grad(from_cache)(q), jax.grad(dense)(q), atol=1e-6, rtol=0)


def test_exact_weights_equal_the_dense_skew_kl():
    q, p = _logits(2), _logits(3)
    ids, w, logp = _exact(p, 1.0)

    def from_cache(q):
        return jnp.sum(cached.sampled_skew_kl_per_token(q, ids, w, logp, alpha=0.1))

    def dense(q):
        return jnp.sum(losses.skew_forward_kl_per_token(q, p, alpha=0.1))

    np.testing.assert_allclose(from_cache(q), dense(q), rtol=1e-6)  # sums over 6 rows
    np.testing.assert_allclose(jax.grad(from_cache)(q), jax.grad(dense)(q), atol=1e-6, rtol=0)


def test_topk_with_k_equal_v_is_the_dense_loss_and_a_lower_bound_below():
    q, p = _logits(4), _logits(5)
    logp = jax.nn.log_softmax(p)
    top_logp, top_ids = jax.lax.top_k(logp, V)

    def topk(q, k):  # per row [rows]
        return cached.topk_residual_kl_per_token(q, top_ids[:, :k], top_logp[:, :k])

    def dense(q):
        return losses.forward_kl_per_token(q, p)

    np.testing.assert_allclose(topk(q, V), dense(q), atol=1e-6, rtol=1e-6)  # sum orders differ
    grad_topk = jax.grad(lambda q: jnp.sum(topk(q, V)))(q)
    np.testing.assert_allclose(grad_topk, jax.grad(lambda q: jnp.sum(dense(q)))(q), atol=1e-6)
    rows = cached.topk_residual_kl_per_token(q, top_ids[:, :4], top_logp[:, :4])
    assert np.all(rows <= losses.forward_kl_per_token(q, p) + 1e-6)  # the log-sum inequality


def test_unique_counts_keep_every_draw():
    draws = jnp.array([[3, 1, 3, 3, 7, 1], [5, 5, 5, 5, 5, 5]], jnp.int32)
    ids, counts = compute.unique_counts(draws)
    np.testing.assert_array_equal(ids, [[3, 1, 7, 0, 0, 0], [5, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(counts, [[3, 2, 1, 0, 0, 0], [6, 0, 0, 0, 0, 0]])


SEEDS = 256


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _sampled_grads(q, p, num_samples, mode, temperature):
    """The cached-loss gradient wrt the student's logits, mean over SEEDS draws."""
    rows = q.shape[0]
    keys = jax.random.split(jax.random.key(7 + num_samples), SEEDS * rows)
    tiled = jnp.tile(p, (SEEDS, 1))
    stats = compute.position_stats(
        tiled,
        jnp.zeros(SEEDS * rows, jnp.int32),
        keys,
        temperature=temperature,
        num_samples=num_samples,
    )
    w = cached.weights(stats["counts"], stats["logp"], num_samples, mode)

    def loss(q):
        qq = jnp.tile(q, (SEEDS, 1))
        per = cached.sampled_kl_per_token(
            qq, stats["ids"], w, stats["logp"], temperature=temperature
        )
        return jnp.sum(per) / SEEDS

    return jax.grad(loss)(q)


@pytest.mark.parametrize("mode", cached.WEIGHT_MODES)
def test_sampled_gradient_converges_to_dense_while_topk_keeps_its_bias(mode):
    temperature = 1.0
    q, p = _logits(8, rows=4), _logits(9, rows=4)
    dense = jax.grad(lambda q: jnp.sum(losses.forward_kl_per_token(q, p)))(q)
    errors = {}
    for n in (4, 64):
        g = _sampled_grads(q, p, n, mode, temperature)
        errors[n] = float(jnp.linalg.norm(g - dense))
    # 16x the draws: the error of an unbiased mean falls ~4x (1 / sqrt(N * seeds)).
    assert errors[64] < 0.45 * errors[4], errors
    if mode == "counts":  # its variance is known: E|g - dense|^2 = sum p (1 - p) / (N S T^2)
        probs = jax.nn.softmax(p / temperature)
        for n, err in errors.items():
            expected = float(jnp.sum(probs * (1 - probs))) / (n * SEEDS * temperature**2)
            assert 0.25 < err**2 / expected < 4.0, (n, err**2, expected)
    # Top-k (+ residual) at k = 4 has no randomness: its error is a bias, the
    # same at any number of seeds, and well above the sampled cache's at N = 64.
    logp = jax.nn.log_softmax(p)
    top_logp, top_ids = jax.lax.top_k(logp, 4)
    topk = jax.grad(lambda q: jnp.sum(cached.topk_residual_kl_per_token(q, top_ids, top_logp)))(q)
    bias = float(jnp.linalg.norm(topk - dense))
    assert bias > 3 * errors[64], (bias, errors)


def test_horvitz_thompson_weights_are_exact_on_a_sure_id():
    counts = jnp.array([[16, 0]], jnp.int32)
    logp = jnp.array([[0.0, -jnp.inf]], jnp.float32)
    np.testing.assert_allclose(cached.weights(counts, logp, 16, "horvitz_thompson"), [[1.0, 0.0]])
    with pytest.raises(ValueError, match="weight mode"):
        cached.weights(counts, logp, 16, "nope")
