"""The fused chunked path equals the dense one (values and gradients) and stays lean."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classkd_jax import losses as L

B, T, D, V = 2, 7, 8, 19  # 14 tokens in chunks of 4: the last chunk is padded
PAD_S, PAD_T = 5, 2  # padded head widths over the same real vocabulary


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)

    def normal(*shape, scale=1.0):
        return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)

    hs, ht, hc = normal(B, T, D), normal(B, T, D + 4), normal(B, T, D)  # teacher may be wider
    ws = normal(D, V + PAD_S, scale=0.7)
    wt = normal(D + 4, V + PAD_T, scale=0.7)
    wc = normal(D, V, scale=0.7)
    mask = jnp.ones((B, T)).at[0, 5:].set(0).at[1, 0].set(0)
    targets = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    return hs, ws, ht, wt, hc, wc, mask, targets


def _dense_logits(h, w):
    return L.shared_vocab_logits(h @ w, V)


CASES = [
    ("forward_kl", {"temperature": 2.0}),
    ("reverse_kl", {}),
    ("generalized_jsd", {"beta": 0.1}),
    ("skew_forward_kl", {"alpha": 0.1}),
    ("skew_reverse_kl", {"alpha": 0.2, "temperature": 0.7}),
    ("total_variation", {}),
]


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_chunked_equals_dense(arrays, name, kwargs):
    hs, ws, ht, wt, _, _, mask, _ = arrays
    dense_fn = L.get_divergence(name)

    def dense(h, w):
        per = dense_fn(_dense_logits(h, w), _dense_logits(ht, wt), **kwargs)
        return L.masked_mean(per, mask)

    def chunked(h, w):
        return L.chunked_divergence(
            name, h, w, ht, wt, mask, vocab_size=V, chunk_size=4, vocab_block=8, **kwargs
        )

    v_d, g_d = jax.value_and_grad(dense, (0, 1))(hs, ws)
    v_c, g_c = jax.jit(jax.value_and_grad(chunked, (0, 1)))(hs, ws)
    assert _rel_err(v_c, v_d) <= 1e-5
    for gc, gd in zip(g_c, g_d, strict=True):
        assert _rel_err(gc, gd) <= 1e-5
    assert not np.any(np.asarray(g_c[1])[:, V:])  # padded vocabulary gets no gradient


def test_three_models_with_aux_and_extras(arrays):
    """A ClassKD-shaped step: KD to the teacher + misfeedback from the classmate."""
    hs, ws, ht, wt, hc, wc, mask, targets = arrays

    def token_fn(logits, tgt):
        s, t, c = logits
        kd = L.forward_kl_per_token(s, t)
        mf = L.misfeedback_per_token(s, c, variant="sigmoid", targets=tgt)
        return kd + 0.5 * mf, {"kd": kd, "mf": mf}

    def chunked(h, w):
        total, count, aux = L.chunked_token_loss(
            token_fn, (h, ht, hc), (w, wt, wc), mask, targets, vocab_size=V, chunk_size=4
        )
        return total / count, aux

    def dense(h, w):
        s, t, c = _dense_logits(h, w), _dense_logits(ht, wt), _dense_logits(hc, wc)
        kd = L.forward_kl(s, t, mask)
        mf = L.misfeedback(s, c, mask, variant="sigmoid", targets=targets)
        return kd + 0.5 * mf, (kd, mf)

    (v_c, aux), g_c = jax.value_and_grad(chunked, (0, 1), has_aux=True)(hs, ws)
    (v_d, (kd, mf)), g_d = jax.value_and_grad(dense, (0, 1), has_aux=True)(hs, ws)
    assert _rel_err(v_c, v_d) <= 1e-5
    np.testing.assert_allclose(aux["kd"] / mask.sum(), kd, rtol=1e-5)
    np.testing.assert_allclose(aux["mf"] / mask.sum(), mf, rtol=1e-5)
    for gc, gd in zip(g_c, g_d, strict=True):
        assert _rel_err(gc, gd) <= 1e-5
    # Frozen models (teacher, classmate) get no gradient through the chunked path.
    g_frozen = jax.grad(lambda w: chunked(hs, ws)[0] + 0 * jnp.sum(w))(wt)
    assert not np.any(np.asarray(g_frozen))


@pytest.mark.parametrize("impl", ["chunked", "dense"])
def test_vocab_major_heads_give_the_same_values_and_gradients(arrays, impl):
    """A tied head passed as stored ([V, D], no transposed copy) equals the [D, V]
    one: values, hidden-state and head gradients (the latter in [V, D] layout),
    padded widths and several vocabulary blocks included."""
    hs, ws, ht, wt, hc, wc, mask, targets = arrays

    def token_fn(logits, tgt):
        s, t, c = logits
        ce = L.cross_entropy_per_token(s, tgt)
        return L.forward_kl_per_token(s, t) + 0.3 * ce, {"ce": ce}

    def loss(h, w, layouts, heads_t, heads_c):
        total, count, aux = L.token_loss(
            token_fn,
            (h, ht, hc),
            (w, heads_t, heads_c),
            mask,
            targets,
            impl=impl,
            vocab_size=V,
            chunk_size=4,
            vocab_major=layouts,
        )
        return total / count, aux

    (v_a, aux_a), (gh_a, gw_a) = jax.value_and_grad(loss, (0, 1), has_aux=True)(
        hs, ws, (False, False, False), wt, wc
    )
    (v_b, aux_b), (gh_b, gw_b) = jax.value_and_grad(loss, (0, 1), has_aux=True)(
        hs, ws.T, (True, False, True), wt, wc.T
    )
    assert _rel_err(v_b, v_a) <= 1e-6 and _rel_err(aux_b["ce"], aux_a["ce"]) <= 1e-6
    assert _rel_err(gh_b, gh_a) <= 1e-6 and _rel_err(gw_b.T, gw_a) <= 1e-6
    assert not np.any(np.asarray(gw_b[V:]))  # padded rows of the head keep a zero gradient


def test_final_logit_softcaps_give_the_reference_values_and_gradients(arrays):
    """Gemma 2's final soft-cap, per model: chunked (the cap's derivative inside the
    fused gradient) and dense both equal autodiff of the loss on capped dense logits."""
    hs, ws, ht, wt, _, _, mask, targets = arrays
    caps = (1.5, 2.0)  # far below the logits' range (~5): the caps bind

    def token_fn(logits, tgt):
        s, t = logits
        return L.forward_kl_per_token(s, t) + 0.3 * L.cross_entropy_per_token(s, tgt)

    def reference(h, w):
        cap = lambda x, c: c * jnp.tanh(x / c)
        s, t = cap(_dense_logits(h, w), caps[0]), cap(_dense_logits(ht, wt), caps[1])
        per = token_fn((s.reshape(-1, V), t.reshape(-1, V)), targets.reshape(-1))
        return L.masked_mean(per.reshape(B, T), mask)

    def ours(h, w, impl):
        total, count, _ = L.token_loss(
            token_fn, (h, ht), (w, wt), mask, targets, impl=impl, vocab_size=V, chunk_size=4,
            softcaps=caps,
        )  # fmt: skip
        return total / count

    v_r, g_r = jax.value_and_grad(reference, (0, 1))(hs, ws)
    assert np.abs(np.asarray(_dense_logits(hs, ws))).max() > 2 * caps[0]
    for impl in ("chunked", "dense"):
        v, g = jax.value_and_grad(ours, (0, 1))(hs, ws, impl)
        assert _rel_err(v, v_r) <= 1e-5, impl
        for a, b in zip(g, g_r, strict=True):
            assert _rel_err(a, b) <= 1e-5, impl
    uncapped = L.token_loss(token_fn, (hs, ht), (ws, wt), mask, targets, vocab_size=V)
    assert _rel_err(uncapped[0] / uncapped[1], v_r) > 1e-2  # the caps change the loss


def test_vocab_major_head_gradient_accumulates_over_vocabulary_blocks(arrays):
    hs, ws, _, _, _, _, mask, targets = arrays

    def ce(w, vocab_major):
        fn = lambda logits, tgt: L.cross_entropy_per_token(logits[0], tgt)
        total, count, _ = L.chunked_token_loss(
            fn, (hs,), (w,), mask, targets, vocab_size=V, chunk_size=3, vocab_block=5,
            vocab_major=(vocab_major,),
        )  # fmt: skip
        return total / count

    g_dv = jax.grad(ce)(ws, False)
    g_vd = jax.grad(ce)(ws.T, True)
    assert _rel_err(g_vd.T, g_dv) <= 1e-6


def test_classmate_trainable_and_cross_entropy(arrays):
    _, _, ht, wt, hc, wc, mask, targets = arrays

    def chunked(h, w):
        return L.chunked_divergence("forward_kl", h, w, ht, wt, mask, vocab_size=V, chunk_size=5)

    def dense(h, w):
        return L.forward_kl(_dense_logits(h, w), _dense_logits(ht, wt), mask)

    for fa, fb in ((chunked, dense),):
        ga, gb = jax.grad(fa, (0, 1))(hc, wc), jax.grad(fb, (0, 1))(hc, wc)
        for a, b in zip(ga, gb, strict=True):
            assert _rel_err(a, b) <= 1e-5

    def ce_chunked(h, w):
        return L.chunked_cross_entropy(h, w, targets, mask, chunk_size=3, vocab_block=5)

    def ce_dense(h, w):
        return L.cross_entropy(h @ w, targets, mask)

    va, ga = jax.value_and_grad(ce_chunked, (0, 1))(hc, wc)
    vb, gb = jax.value_and_grad(ce_dense, (0, 1))(hc, wc)
    assert _rel_err(va, vb) <= 1e-5
    for a, b in zip(ga, gb, strict=True):
        assert _rel_err(a, b) <= 1e-5


def test_bf16_inputs_give_bf16_grads(arrays):
    hs, ws, ht, wt, _, _, mask, _ = arrays
    h16, w16 = hs.astype(jnp.bfloat16), ws.astype(jnp.bfloat16)

    def chunked(h, w):
        return L.chunked_divergence("reverse_kl", h, w, ht, wt, mask, vocab_size=V, chunk_size=4)

    val, (gh, gw) = jax.value_and_grad(chunked, (0, 1))(h16, w16)
    assert gh.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
    assert np.isfinite(float(val)) and val >= 0
    ref = jax.grad(chunked, 1)(h16.astype(jnp.float32), w16.astype(jnp.float32))
    assert _rel_err(gw.astype(jnp.float32), ref) < 3e-2


def test_vocabulary_errors(arrays):
    hs, ws, ht, wt, _, _, mask, _ = arrays
    with pytest.raises(ValueError, match="different widths"):
        L.chunked_divergence("forward_kl", hs, ws, ht, wt, mask)
    with pytest.raises(ValueError, match="different tokenizers"):
        L.chunked_divergence("forward_kl", hs, ws, ht, wt, mask, vocab_size=(V, V + 1))
    with pytest.raises(ValueError, match="different tokenizers"):
        L.chunked_divergence(
            "forward_kl", hs, ws, ht, wt, mask, vocab_size=V, tokenizer_ids=("gpt2", "qwen2")
        )
    with pytest.raises(ValueError, match="narrowest head"):
        L.chunked_divergence("forward_kl", hs, ws, ht, wt, mask, vocab_size=V + PAD_S)
    with pytest.raises(ValueError, match=r"heads\[1\]"):
        L.chunked_divergence("forward_kl", hs, ws, ht, wt[:D], mask, vocab_size=V)
    with pytest.raises(ValueError, match="unknown divergence"):
        L.chunked_divergence("kl", hs, ws, ht, wt, mask, vocab_size=V)
    assert L.shared_vocab_size([151936, 152064], vocab_size=151665) == 151665


def test_chunked_never_holds_full_logits():
    """Compiled temp memory of value+grad stays far below one [N, V] f32 logits array."""
    n, d, v, chunk = 2048, 64, 8192, 64
    h = jax.ShapeDtypeStruct((1, n, d), jnp.float32)
    w = jax.ShapeDtypeStruct((d, v), jnp.float32)
    m = jax.ShapeDtypeStruct((1, n), jnp.float32)

    def chunked(hs, ws, ht, wt, mask):
        return L.chunked_divergence("forward_kl", hs, ws, ht, wt, mask, chunk_size=chunk)

    compiled = jax.jit(jax.value_and_grad(chunked, (0, 1))).lower(h, w, h, w, m).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        pytest.skip("memory_analysis unavailable on this backend")
    logits_bytes = n * v * 4
    assert stats.temp_size_in_bytes < logits_bytes / 4, stats.temp_size_in_bytes


def test_chunked_under_jit_with_a_sharded_batch():
    """The trainer jits with batch-sharded activations over the (fake) devices."""
    devices = np.array(jax.devices())
    if devices.size < 2:
        pytest.skip("needs several devices")
    mesh = jax.sharding.Mesh(devices, ("data",))
    rng = np.random.default_rng(3)
    b = devices.size
    hs = jnp.asarray(rng.standard_normal((b, 3, D)), jnp.float32)
    hc = jnp.asarray(rng.standard_normal((b, 3, D)), jnp.float32)
    ws = jnp.asarray(0.7 * rng.standard_normal((D, V)), jnp.float32)
    wc = jnp.asarray(0.7 * rng.standard_normal((D, V)), jnp.float32)
    mask = jnp.ones((b, 3))
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def loss(h, w, h_c, m):
        return L.chunked_divergence("misfeedback", h, w, h_c, wc, m, chunk_size=4, variant="skew")

    fn = jax.jit(jax.value_and_grad(loss, (0, 1)))
    val, grads = fn(*jax.device_put((hs, ws, hc, mask), (batch, None, batch, batch)))
    ref = L.misfeedback(hs @ ws, hc @ wc, mask, variant="skew")
    ref_grads = jax.grad(lambda h, w: L.misfeedback(h @ w, hc @ wc, mask, variant="skew"), (0, 1))(
        hs, ws
    )
    assert _rel_err(val, ref) <= 1e-5
    for g, r in zip(grads, ref_grads, strict=True):
        assert _rel_err(g, r) <= 1e-5


def test_minillm_loss_through_the_chunked_path(arrays):
    """Token-separable sequence objectives plug in as token_fn with float extras."""
    hs, ws, ht, wt, _, _, mask, targets = arrays
    rng = np.random.default_rng(4)
    extras = {
        "targets": targets,
        "old": jnp.asarray(-2.0 + 0.3 * rng.standard_normal((B, T)), jnp.float32),
        "adv": jnp.asarray(rng.standard_normal((B, T)), jnp.float32),
        "w": jnp.asarray(rng.uniform(0.5, 1.5, (B, T)), jnp.float32),
    }

    def token_fn(logits, ex):
        s, t = logits
        pg = L.minillm_pg_per_token(s, ex["targets"], ex["old"], ex["adv"], ex["w"])
        return pg + L.reverse_kl_per_token(s, t)

    def chunked(h, w):
        total, count, _ = L.chunked_token_loss(
            token_fn, (h, ht), (w, wt), mask, extras, vocab_size=V, chunk_size=4
        )
        return total / count

    def dense(h, w):
        s, t = _dense_logits(h, w), _dense_logits(ht, wt)
        e = extras
        return L.minillm_loss(s, t, e["targets"], mask, e["old"], e["adv"], e["w"])[0]

    v_c, g_c = jax.value_and_grad(chunked, (0, 1))(hs, ws)
    v_d, g_d = jax.value_and_grad(dense, (0, 1))(hs, ws)
    assert _rel_err(v_c, v_d) <= 1e-5
    for gc, gd in zip(g_c, g_d, strict=True):
        assert _rel_err(gc, gd) <= 1e-5
