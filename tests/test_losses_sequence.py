"""Sequence objectives: shifts, CE, KD wrappers, ClassKD student loss, MiniLLM pieces."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classkd_jax import losses as L

V = 11


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((2, 6, V)).astype(np.float32) * 2
    t = rng.standard_normal((2, 6, V)).astype(np.float32) * 2
    c = rng.standard_normal((2, 6, V)).astype(np.float32) * 2
    tokens = rng.integers(0, V, (2, 6)).astype(np.int32)
    # row 0: prompt of 3, response of 2, one pad; row 1: prompt of 5, response of 1 token.
    response = np.array([[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]], np.int32)
    return s, t, c, tokens, response


def test_next_token_targets_shift(data):
    *_, tokens, response = data
    targets, mask = L.next_token_targets(jnp.asarray(tokens), jnp.asarray(response))
    np.testing.assert_array_equal(targets[:, :-1], tokens[:, 1:])
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 0]])
    assert float(mask[1].sum()) == 1.0  # a one-token response is scored exactly once


def test_cross_entropy_matches_torch(data):
    torch = pytest.importorskip("torch")
    s, _, _, tokens, response = data
    targets, mask = L.next_token_targets(jnp.asarray(tokens), jnp.asarray(response))
    labels = np.where(np.asarray(mask) > 0, np.asarray(targets), -100)
    ref = torch.nn.functional.cross_entropy(
        torch.tensor(s).reshape(-1, V), torch.tensor(labels).reshape(-1).long(), ignore_index=-100
    )
    np.testing.assert_allclose(float(L.cross_entropy(s, targets, mask)), ref.item(), rtol=1e-5)


def test_kd_wrappers_use_the_shifted_mask(data):
    s, t, _, tokens, response = data
    _, mask = L.next_token_targets(jnp.asarray(tokens), jnp.asarray(response))
    got = L.off_policy_kd(s, t, tokens, response)
    np.testing.assert_allclose(float(got), float(L.forward_kl(s, t, mask)), rtol=1e-6)
    got = L.on_policy_kd(s, t, tokens, response, divergence="generalized_jsd", beta=0.9)
    np.testing.assert_allclose(
        float(got), float(L.generalized_jsd(s, t, mask, beta=0.9)), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(L.on_policy_kd(s, t, tokens, response)), float(L.reverse_kl(s, t, mask)), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(L.classmate_loss(s, t, tokens, response, temperature=2.0)),
        float(L.forward_kl(s, t, mask, temperature=2.0)),
        rtol=1e-6,
    )


def test_classkd_student_loss(data):
    s, t, c, tokens, response = data
    _, mask = L.next_token_targets(jnp.asarray(tokens), jnp.asarray(response))

    def loss(student, classmate):
        return L.classkd_student_loss(
            student, t, classmate, tokens, response, misfeedback_weight=0.3
        )

    (val, parts), (g_s, g_c) = jax.value_and_grad(loss, (0, 1), has_aux=True)(s, c)
    kd = float(L.reverse_kl(s, t, mask))
    mf = float(L.misfeedback(s, c, mask, variant=L.DEFAULT_MISFEEDBACK_VARIANT))
    np.testing.assert_allclose(float(val), kd + 0.3 * mf, rtol=1e-6)
    np.testing.assert_allclose(float(parts["misfeedback"]), mf, rtol=1e-6)
    assert not np.any(np.asarray(g_c))  # the classmate is held fixed in this term
    assert np.any(np.asarray(g_s)[0, 2]) and not np.any(np.asarray(g_s)[0, 0])


def test_minillm_importance_weights_and_rewards():
    logq = jnp.log(jnp.array([[0.5, 0.1]]))
    logp = jnp.log(jnp.array([[0.25, 0.6]]))
    w = L.minillm_importance_weights(logq, logp, teacher_mix=0.2)
    np.testing.assert_allclose(w, [[0.5 / (0.2 * 0.25 + 0.8 * 0.5), 0.1 / (0.2 * 0.6 + 0.8 * 0.1)]])
    r = L.minillm_rewards(logp, logq, reward_scaling=0.5, reward_clip=2.0)
    np.testing.assert_allclose(r, [[2 * math.log(0.5), 2.0]], rtol=1e-6)  # 2 log 6 is clipped


def _advantages_reference(rewards, mask, gamma):
    """A direct transcription of the formula, loops and all."""
    b, t = rewards.shape
    adv = np.zeros((b, t))
    for i in range(b):
        for j in range(t):
            if not mask[i, j]:
                continue
            ret = sum(gamma ** (k - j) * rewards[i, k] * mask[i, k] for k in range(j, t))
            adv[i, j] = ret / mask[i, j:].sum()
    sel = adv[mask > 0]
    return np.where(mask > 0, (adv - sel.mean()) / np.sqrt(sel.var() + 1e-8), 0.0)


def test_minillm_advantages_match_the_formula():
    rng = np.random.default_rng(1)
    rewards = rng.standard_normal((3, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], np.float32)
    got = L.minillm_advantages(jnp.asarray(rewards), jnp.asarray(mask), gamma=0.95)
    np.testing.assert_allclose(got, _advantages_reference(rewards, mask, 0.95), atol=1e-5)


def test_minillm_loss_matches_reference_pg(data):
    torch = pytest.importorskip("torch")
    s, t, _, tokens, response = data
    targets, mask = L.next_token_targets(jnp.asarray(tokens), jnp.asarray(response))
    rng = np.random.default_rng(2)
    old = np.asarray(L.token_log_probs(s, targets)) + 0.3 * rng.standard_normal((2, 6))
    adv = rng.standard_normal((2, 6)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, (2, 6)).astype(np.float32)
    loss, parts = L.minillm_loss(s, t, targets, mask, old, adv, w, clip_ratio=0.2)
    # MiniLLM's _pg_loss, transcribed in torch.
    logprobs = torch.tensor(np.asarray(L.token_log_probs(s, targets)))
    m = torch.tensor(np.asarray(mask))
    ratio = torch.exp((logprobs - torch.tensor(old, dtype=torch.float32)) * m) * torch.tensor(w)
    a = torch.tensor(adv)
    pg = torch.max(-a * ratio, -a * torch.clamp(ratio, 0.8, 1.2))
    pg_ref = (pg * m).sum() / m.sum()
    np.testing.assert_allclose(float(parts["pg"]), pg_ref.item(), rtol=1e-5)
    np.testing.assert_allclose(float(parts["single_step"]), float(L.reverse_kl(s, t, mask)))
    np.testing.assert_allclose(float(loss), pg_ref.item() + float(parts["single_step"]), rtol=1e-5)


def test_minillm_pretrain_loss(data):
    s, t, _, tokens, response = data
    targets, mask = L.next_token_targets(jnp.asarray(tokens), jnp.asarray(response))
    got = L.minillm_pretrain_loss(s, t, targets, mask, kd_ratio=0.5)
    want = 0.5 * L.cross_entropy(s, targets, mask) + 0.5 * L.forward_kl(s, t, mask)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    np.testing.assert_allclose(
        float(L.minillm_pretrain_loss(s, None, targets, mask)),
        float(L.cross_entropy(s, targets, mask)),
    )
