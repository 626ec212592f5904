"""Token divergences: TRL/DistiLLM parity, hand-computed cases, gradients, numerics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from classkd_jax import losses as L

PAIR_FNS = {
    "forward_kl": L.forward_kl,
    "reverse_kl": L.reverse_kl,
    "generalized_jsd": L.generalized_jsd,
    "skew_forward_kl": L.skew_forward_kl,
    "skew_reverse_kl": L.skew_reverse_kl,
    "total_variation": L.total_variation,
}
PER_TOKEN = dict(L.DIVERGENCES)


def _random_logits(seed, shape, scale=3.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal(shape)).astype(np.float32)


@pytest.fixture(scope="module")
def batch():
    s = _random_logits(0, (3, 6, 17))
    t = _random_logits(1, (3, 6, 17))
    mask = np.ones((3, 6), np.float32)
    mask[0, 4:] = 0
    mask[1, :2] = 0
    mask[2, 1] = 0
    return s, t, mask


# --- TRL parity ----------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_generalized_jsd_matches_trl(batch, temperature):
    torch = pytest.importorskip("torch")
    gkd = pytest.importorskip("trl.experimental.gkd")
    s, t, mask = batch
    labels = torch.where(torch.tensor(mask) > 0, torch.tensor(1), torch.tensor(-100))
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        ref = gkd.GKDTrainer.generalized_jsd_loss(
            torch.tensor(s), torch.tensor(t), labels=labels, beta=beta, temperature=temperature
        ).item()
        ours = float(L.generalized_jsd(s, t, mask, beta=beta, temperature=temperature))
        np.testing.assert_allclose(ours, ref, rtol=1e-5, err_msg=f"beta={beta}")


def test_skew_kls_match_distillm_reference(batch):
    """DistiLLM's own formulas (transcribed in torch); its SKL omits the teacher entropy."""
    torch = pytest.importorskip("torch")
    s, t, mask = batch
    lam = 0.1
    ts, tt, tm = torch.tensor(s), torch.tensor(t), torch.tensor(mask).view(-1)
    p, q = torch.softmax(tt, -1), torch.softmax(ts, -1)
    skl_ce = -(p * torch.log(lam * p + (1 - lam) * q)).sum(-1).view(-1)
    teacher_negent = (p * torch.log_softmax(tt, -1)).sum(-1).view(-1)
    skl_ref = ((skl_ce + teacher_negent) * tm).sum() / tm.sum()
    mixed = (1 - lam) * p + lam * q
    srkl = (q * torch.log_softmax(ts, -1) - q * torch.log(mixed)).sum(-1).view(-1)
    srkl_ref = (srkl * tm).sum() / tm.sum()
    np.testing.assert_allclose(float(L.skew_forward_kl(s, t, mask)), skl_ref.item(), rtol=1e-5)
    np.testing.assert_allclose(float(L.skew_reverse_kl(s, t, mask)), srkl_ref.item(), rtol=1e-5)


# --- hand-computed cases ---------------------------------------------------------


def _kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)


def _mix(w, a, b):
    return [w * x + (1 - w) * y for x, y in zip(a, b, strict=True)]


@pytest.mark.parametrize(
    ("p", "q"), [([0.5, 0.5], [0.25, 0.75]), ([0.2, 0.3, 0.5], [0.5, 0.25, 0.25])]
)
def test_hand_computed(p, q):
    s = jnp.log(jnp.array([[q]], jnp.float32))
    t = jnp.log(jnp.array([[p]], jnp.float32))
    c = s + 0.7  # a shift: same distribution as s
    m = jnp.ones((1, 1))
    expect = {
        "forward_kl": _kl(p, q),
        "reverse_kl": _kl(q, p),
        "generalized_jsd": 0.5 * _kl(p, _mix(0.5, p, q)) + 0.5 * _kl(q, _mix(0.5, p, q)),
        "skew_forward_kl": _kl(p, _mix(0.1, p, q)),
        "skew_reverse_kl": _kl(q, _mix(0.1, q, p)),
        "total_variation": 0.5 * sum(abs(x - y) for x, y in zip(p, q, strict=True)),
    }
    for name, fn in PAIR_FNS.items():
        np.testing.assert_allclose(float(fn(s, t, m)), expect[name], rtol=1e-5, err_msg=name)
    jsd9 = 0.9 * _kl(p, _mix(0.9, p, q)) + 0.1 * _kl(q, _mix(0.9, p, q))
    np.testing.assert_allclose(float(L.generalized_jsd(s, t, m, beta=0.9)), jsd9, rtol=1e-5)
    # Temperature 2 is the same as taking square roots of the probabilities and renormalising.
    p2 = [math.sqrt(x) / sum(math.sqrt(y) for y in p) for x in p]
    q2 = [math.sqrt(x) / sum(math.sqrt(y) for y in q) for x in q]
    got = float(L.forward_kl(s, t, m, temperature=2.0))
    np.testing.assert_allclose(got, _kl(p2, q2), rtol=1e-5)
    # Misfeedback variants: here the "classmate" is t (p), the student s (q).
    mf = {
        "raw": -_kl(q, p),
        "skew": -_kl(q, _mix(0.1, q, p)),
        "hinge": max(0.0, 1.0 - _kl(q, p)),
    }
    for variant, want in mf.items():
        got = float(L.misfeedback(s, t, m, variant=variant))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=variant)
    # The function's default is the write-up's formula; training uses the skewed form.
    np.testing.assert_allclose(float(L.misfeedback(s, t, m)), -_kl(q, p), rtol=1e-5)
    assert L.DEFAULT_MISFEEDBACK_VARIANT == "skew"
    target = jnp.array([[1]])
    sig = math.log1p(math.exp(-(math.log(q[1]) - math.log(p[1]))))
    got = float(L.misfeedback(s, t, m, variant="sigmoid", targets=target))
    np.testing.assert_allclose(got, sig, rtol=1e-5)
    # Identical distributions (shifted logits) give 0 for every divergence.
    for name, fn in PAIR_FNS.items():
        assert abs(float(fn(s, c, m))) < 1e-6, name


def test_mask_reduction_and_per_token(batch):
    s, t, mask = batch
    per = np.asarray(L.forward_kl_per_token(s, t))
    assert per.shape == mask.shape
    np.testing.assert_allclose(
        float(L.forward_kl(s, t, mask)), (per * mask).sum() / mask.sum(), rtol=1e-6
    )
    assert float(L.forward_kl(s, t, np.zeros_like(mask))) == 0.0  # empty mask: 0, not nan
    total, count = L.masked_sum_and_count(jnp.asarray(per), jnp.asarray(mask))
    assert float(count) == mask.sum()


def test_misfeedback_bounds(batch):
    s, t, mask = batch
    sharp = 30.0 * s  # a student far from the classmate
    skew = float(L.misfeedback(sharp, t, mask, variant="skew", alpha=0.1))
    assert math.log(0.1) - 1e-5 <= skew <= 0.0
    assert L.misfeedback_lower_bound("skew", alpha=0.1) == pytest.approx(math.log(0.1))
    assert float(L.misfeedback(sharp, t, mask, variant="raw")) < math.log(0.1)
    assert 0.0 <= float(L.misfeedback(sharp, t, mask, variant="hinge", margin=2.0)) <= 2.0


# --- gradients --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PER_TOKEN))
def test_gradients_numerically(name):
    s = jnp.asarray(_random_logits(2, (1, 2, 5), scale=1.0))
    t = jnp.asarray(_random_logits(3, (1, 2, 5), scale=1.0))
    fn = PER_TOKEN[name]
    check_grads(lambda a, b: fn(a, b).sum(), (s, t), order=1, modes=("rev",), atol=2e-2, rtol=2e-2)


def test_misfeedback_gradients_numerically():
    s = jnp.asarray(_random_logits(4, (1, 2, 5), scale=1.0))
    c = jnp.asarray(_random_logits(5, (1, 2, 5), scale=1.0))
    tgt = jnp.array([[1, 3]])
    for variant in L.MISFEEDBACK_VARIANTS:
        check_grads(
            lambda a, v=variant: L.misfeedback_per_token(a, c, variant=v, targets=tgt).sum(),
            (s,),
            order=1,
            modes=("rev",),
            atol=2e-2,
            rtol=2e-2,
        )


# --- numerics ------------------------------------------------------------------------


@jax.jit
def _all_values_and_grads(s, t, mask):
    out = {}
    for name, fn in PAIR_FNS.items():
        out[name] = jax.value_and_grad(fn, argnums=(0, 1))(s, t, mask)
    tgt = jnp.ones(mask.shape, jnp.int32)  # a sampled token is never a -inf entry
    for v in L.MISFEEDBACK_VARIANTS:
        f = lambda a, b, v=v: L.misfeedback(a, b, mask, variant=v, targets=tgt)
        out[f"misfeedback_{v}"] = jax.value_and_grad(f, argnums=(0, 1))(s, t)
    return out


def _assert_finite(out):
    for name, (val, grads) in out.items():
        assert np.isfinite(float(val)), name
        for g in grads:
            assert np.all(np.isfinite(np.asarray(g, np.float32))), name


def test_bf16_teacher_against_fp32_student_is_nonnegative(batch):
    s, t, mask = batch
    t16 = jnp.asarray(t, jnp.bfloat16)
    s32 = t16.astype(jnp.float32)  # the same values: every divergence must be 0, not negative
    out = _all_values_and_grads(s32, t16, mask)
    _assert_finite(out)
    for name in PAIR_FNS:
        assert abs(float(out[name][0])) < 1e-6, name
    out = _all_values_and_grads(jnp.asarray(s, jnp.bfloat16), t16, mask)
    _assert_finite(out)
    for name in PAIR_FNS:
        assert float(out[name][0]) >= 0.0, name


def test_large_and_masked_logits_stay_finite(batch):
    s, t, mask = batch
    out = _all_values_and_grads(jnp.asarray(s) * 1e4, jnp.asarray(t) * 1e4, mask)
    _assert_finite(out)
    vocab_mask = np.zeros(s.shape[-1], bool)
    vocab_mask[[0, 5, 16]] = True  # padded / disallowed entries, -inf in every model
    s_inf = jnp.where(vocab_mask, -jnp.inf, s)
    t_inf = jnp.where(vocab_mask, -jnp.inf, t)
    out = _all_values_and_grads(s_inf, t_inf, mask)
    _assert_finite(out)
    # -inf entries are the same as dropping them from the vocabulary.
    keep = ~vocab_mask
    for name, fn in PAIR_FNS.items():
        np.testing.assert_allclose(
            float(out[name][0]), float(fn(s[..., keep], t[..., keep], mask)), rtol=1e-5
        )
        assert not np.any(np.asarray(out[name][1][0])[..., vocab_mask]), name


def test_errors_name_the_bad_value(batch):
    s, t, mask = batch
    with pytest.raises(ValueError, match="beta"):
        L.generalized_jsd(s, t, mask, beta=1.5)
    with pytest.raises(ValueError, match="alpha"):
        L.skew_forward_kl(s, t, mask, alpha=0.0)
    with pytest.raises(ValueError, match="temperature"):
        L.forward_kl(s, t, mask, temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        L.forward_kl(s, t[..., :5], mask)
    with pytest.raises(ValueError, match="unknown divergence"):
        L.get_divergence("kl")
    with pytest.raises(ValueError, match="targets"):
        L.misfeedback(s, t, mask, variant="sigmoid")
    with pytest.raises(ValueError, match="variant"):
        L.misfeedback(s, t, mask, variant="dpo")


def test_skew_stop_grad_mixture_changes_only_the_gradient(batch):
    s, t, mask = batch
    for fn in (L.skew_forward_kl, L.skew_reverse_kl):
        v1, g1 = jax.value_and_grad(fn)(s, t, mask)
        v2, g2 = jax.value_and_grad(lambda a, f=fn: f(a, t, mask, stop_grad_mixture=True))(s)
        np.testing.assert_allclose(float(v1), float(v2), rtol=1e-6)
        assert not np.allclose(g1, g2)
    # SKL with a detached mixture: d/dq of KL(p || a p + (1 - a) sg(q)) is 0.
    g = jax.grad(lambda a: L.skew_forward_kl(a, t, mask, stop_grad_mixture=True))(s)
    assert not np.any(np.asarray(g))
