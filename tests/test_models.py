"""The Flax transformer against transformers' PyTorch models, and its KV cache.

Every numeric reference here is independent of our code: transformers' PyTorch
forward pass, or our own full forward pass for the cache (which is itself
checked against PyTorch), or published parameter counts.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classkd_jax.models import (
    ModelConfig,
    Transformer,
    abstract_params,
    get_preset,
    init_cache,
    init_params,
    lm_head,
    save_hf,
    stack_layers,
    unstack_layers,
)

FAMILIES = ["gpt2", "llama", "qwen2", "llama-rope-scaled", "llama-biased"]
B, T = 3, 12  # one batch shape for all forward passes: one compile per config


@functools.partial(jax.jit, static_argnums=0)
def forward(config, params, tokens, positions, segment_ids):
    return Transformer(config).apply(
        {"params": params}, tokens, positions=positions, segment_ids=segment_ids
    )


def padded_batch(batch: int, length: int, pads: list[int], seed: int = 0):
    """Random tokens [B, T] with `pads[b]` left-padding tokens, mask, HF positions."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 256, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    for b, n in enumerate(pads):
        mask[b, :n] = 0
        tokens[b, :n] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return tokens, mask, positions


@pytest.fixture(scope="module")
def loaded(tiny_model, tiny_hf_model_dir):
    """family -> (config, params, model dir)."""
    return lambda family: (*tiny_model(family), tiny_hf_model_dir(family))


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_with_padding(loaded, family):
    import torch
    from transformers import AutoModelForCausalLM

    config, params, path = loaded(family)
    tokens, mask, positions = padded_batch(B, T, [0, 4, 7])
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        ).logits.numpy()
    out = forward(config, params, tokens, positions, mask)
    assert out.logits.dtype == jnp.float32 and out.logits.shape == (3, 12, 256)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out.logits)[valid], want[valid], atol=1e-4, rtol=0)
    assert np.abs(want[valid]).max() > 1.0  # the test model is far from uniform
    # logits = hidden @ lm_head, the contract a fused loss relies on.
    head = lm_head(params, config)
    np.testing.assert_allclose(out.hidden @ head, out.logits, atol=1e-5)


@pytest.mark.parametrize(
    "family,scan_layers", [("gpt2", True), ("llama", True), ("qwen2", True), ("llama", False)]
)
def test_prefill_then_decode_equals_full_forward(loaded, family, scan_layers):
    config, params, _ = loaded(family)
    if not scan_layers:  # the form the sampler decodes with
        params = unstack_layers(params, config)
        config = config.replace(scan_layers=False)
    model = Transformer(config)
    prompt, steps = 6, T - 6
    tokens, mask, positions = padded_batch(B, T, [0, 2, 5], seed=1)
    full = forward(config, params, tokens, positions, mask).logits

    @jax.jit
    def run(params, tokens, positions, mask, cache):
        out = model.apply(
            {"params": params}, tokens, positions=positions, segment_ids=mask, cache=cache
        )
        return out.logits, out.cache

    cache = init_cache(config, B, 16)
    logits, cache = run(params, tokens[:, :prompt], positions[:, :prompt], mask[:, :prompt], cache)
    pieces = [logits]
    for t in range(prompt, prompt + steps):
        sl = slice(t, t + 1)
        logits, cache = run(params, tokens[:, sl], positions[:, sl], mask[:, sl], cache)
        pieces.append(logits)
    got = jnp.concatenate(pieces, axis=1)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(full)[valid], atol=1e-5, rtol=0)
    assert int(cache.index) == prompt + steps
    np.testing.assert_array_equal(np.asarray(cache.mask[:, : prompt + steps]), valid)
    assert not np.asarray(cache.mask[:, prompt + steps :]).any()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_unrolled_layers_equal_the_scan_and_convert_both_ways(loaded, family, tmp_path):
    config, params, _ = loaded(family)
    unrolled = config.replace(scan_layers=False)
    flat = unstack_layers(params, config)
    # The unrolled model declares exactly the unstacked params, layer by layer.
    declared = jax.eval_shape(lambda: init_params(unrolled, jax.random.key(0)))
    assert jax.tree.structure(declared) == jax.tree.structure(flat)
    assert jax.tree.map(lambda a: a.shape, declared) == jax.tree.map(lambda a: a.shape, flat)
    assert {k for k in flat if k.startswith("layers")} == {"layers_0", "layers_1"}
    tokens, mask, positions = padded_batch(B, T, [0, 4, 7])
    want = forward(config, params, tokens, positions, mask).logits
    got = forward(unrolled, flat, tokens, positions, mask).logits
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    jax.tree.map(np.testing.assert_array_equal, stack_layers(flat, config), params)
    assert unstack_layers(flat, config) is flat and stack_layers(params, config) is params
    # Either form exports the same Hugging Face tensors.
    save_hf(tmp_path / "scan", config, params)
    save_hf(tmp_path / "unrolled", unrolled, flat)
    read = lambda d: (d / "model.safetensors").read_bytes()
    assert read(tmp_path / "scan") == read(tmp_path / "unrolled")


def test_packed_segments_equal_separate_sequences(loaded):
    config, params, _ = loaded("llama")
    a, b = np.arange(3, 8, dtype=np.int32), np.arange(20, 27, dtype=np.int32)
    # Row 0 packs a and b; rows 1 and 2 hold them alone, right-padded (segment 0).
    tokens = np.zeros((B, T), np.int32)
    tokens[0], tokens[1, :5], tokens[2, :7] = np.concatenate([a, b]), a, b
    segments = np.array([[1] * 5 + [2] * 7, [1] * 5 + [0] * 7, [1] * 7 + [0] * 5], np.int32)
    positions = np.array([[*range(5), *range(7)], [*range(5), *[0] * 7], [*range(7), *[0] * 5]])
    logits = forward(config, params, tokens, positions.astype(np.int32), segments).logits
    np.testing.assert_allclose(logits[0, :5], logits[1, :5], atol=1e-5)
    np.testing.assert_allclose(logits[0, 5:], logits[2, :7], atol=1e-5)


def test_bfloat16_compute_and_params_stay_close_to_float32(loaded):
    config, params, _ = loaded("qwen2")
    tokens, mask, positions = padded_batch(B, T, [0, 3, 5])
    ref = forward(config, params, tokens, positions, mask).logits
    bf16 = config.replace(dtype="bfloat16", param_dtype="bfloat16")
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    out = forward(bf16, p16, tokens, positions, mask)
    assert out.logits.dtype == jnp.float32 and out.hidden.dtype == jnp.bfloat16
    valid = mask.astype(bool)
    err = np.abs(np.asarray(out.logits) - np.asarray(ref))[valid].max()
    assert err < 0.15, err  # bf16 has ~3 significant digits; logits are O(3)


def test_remat_gives_the_same_loss_and_gradients(loaded):
    config, params, _ = loaded("llama")
    tokens, mask, positions = padded_batch(B, T, [0, 2, 5])

    def loss(params, config):
        logits = forward(config, params, tokens, positions, mask).logits
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    plain = grad(params, config)
    assert config.replace(remat=True).remat == "full" and config.remat == "none"
    for policy in ("full", "dots"):  # everything recomputed / the matmul outputs kept
        remat = grad(params, config.replace(remat=policy))
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), plain, remat)
    # Unrolled blocks, rematerialised: the same gradients, layer by layer.
    unrolled = config.replace(remat=True, scan_layers=False)
    value, grads = grad(unstack_layers(params, config), unrolled)
    np.testing.assert_allclose(value, plain[0], atol=1e-6)
    stacked = stack_layers(grads, config)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), stacked, plain[1])


@functools.partial(jax.jit, static_argnums=0)
def train_forward(config, params, tokens, positions, segment_ids, rng):
    return Transformer(config).apply(
        {"params": params},
        tokens,
        positions=positions,
        segment_ids=segment_ids,
        deterministic=False,
        rngs={"dropout": rng},
    )


def test_dropout_is_read_from_hf_configs_and_applies_only_to_a_training_forward(loaded):
    from transformers import GPT2Config, LlamaConfig

    gpt2 = ModelConfig.from_hf_config(GPT2Config(n_layer=2, n_embd=32, n_head=4).to_dict())
    assert (gpt2.embed_dropout, gpt2.attention_dropout, gpt2.residual_dropout) == (0.1,) * 3
    llama_hf = LlamaConfig(hidden_size=32, num_attention_heads=4, attention_dropout=0.25)
    llama = ModelConfig.from_hf_config(llama_hf.to_dict())
    assert (llama.embed_dropout, llama.attention_dropout, llama.residual_dropout) == (0, 0.25, 0)
    back = ModelConfig.from_hf_config(gpt2.with_dropout(0.2).to_hf_config())
    assert back == gpt2.with_dropout(0.2)  # GPT-2 writes all three back

    config, params, _ = loaded("gpt2")
    assert not config.has_dropout  # tests/tiny_hf.py writes 0 rates
    tokens, mask, positions = padded_batch(B, T, [0, 2, 5])
    plain = np.asarray(forward(config, params, tokens, positions, mask).logits)
    # The default forward ignores the rates: bit-equal to the rate-0 model, so
    # test_logits_match_transformers_with_padding (PyTorch in eval mode) holds for it.
    dropped = config.with_dropout(0.1)
    np.testing.assert_array_equal(
        np.asarray(forward(dropped, params, tokens, positions, mask).logits), plain
    )
    key = jax.random.key
    valid = mask.astype(bool)
    for field in ("embed_dropout", "attention_dropout", "residual_dropout"):
        one = config.replace(**{field: 0.1})
        a, again, b = (
            np.asarray(train_forward(one, params, tokens, positions, mask, key(k)).logits)
            for k in (0, 0, 1)
        )
        np.testing.assert_array_equal(a, again)  # the masks are the key's
        assert np.abs(a - plain)[valid].max() > 1e-3, field
        assert np.abs(a - b)[valid].max() > 1e-3, field
    # Rates of 0: the training forward is the plain one, whatever the key.
    zero = np.asarray(train_forward(config, params, tokens, positions, mask, key(3)).logits)
    np.testing.assert_array_equal(zero, plain)


def test_init_params_follows_config_dtypes_and_logical_names():
    bf16_config = get_preset("tiny-gpt2", param_dtype="bfloat16")
    bf16 = jax.eval_shape(lambda key: init_params(bf16_config, key), jax.random.key(0))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16))
    config = get_preset("tiny-gpt2")  # the same compiled init as test_hf_io's
    params = init_params(config, jax.random.key(3))
    # Hugging Face's init: N(0, 0.02) weights, unit norm scales, zero biases.
    assert abs(float(jnp.std(params["layers"]["mlp"]["up"]["kernel"])) - 0.02) < 2e-3
    assert (params["layers"]["attn_norm"]["scale"] == 1).all()
    assert (params["layers"]["attn"]["q"]["bias"] == 0).all()
    # Layers get independent draws.
    q = params["layers"]["attn"]["q"]["kernel"]
    assert not jnp.array_equal(q[0], q[1])
    allowed = {"batch", "length", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab"}
    allowed |= {"layers", None}
    boxed = abstract_params(config)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, "names"))
    assert leaves and all(hasattr(leaf, "names") for leaf in leaves)
    for leaf in leaves:
        assert len(leaf.names) == len(leaf.value.shape) and set(leaf.names) <= allowed
    assert boxed["layers"]["attn"]["q"]["kernel"].names == ("layers", "embed", "heads", "head_dim")


# Published parameter counts (model cards / `sum(p.numel())` of the HF models).
PUBLISHED_COUNTS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "llama-3.1-8b": 8_030_261_248,
    "gemma-2-2b": 2_614_341_888,
    "gemma-2-9b": 9_241_705_984,
    "mistral-7b": 7_248_023_552,  # v0.3
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_presets_have_the_published_parameter_counts(name):
    config = get_preset(name)
    shapes = jax.tree.leaves(abstract_params(config))
    assert sum(int(np.prod(x.shape)) for x in shapes) == PUBLISHED_COUNTS[name]
    assert ModelConfig.from_hf_config(config.to_hf_config()) == config


def test_models_config_file_builds_locks_and_converts():
    from configs.models import get_config, to_model_config

    config = get_config("llama-3.2-1b,dtype=bfloat16,remat")
    assert config.is_locked
    model = to_model_config(config)
    assert model == get_preset("llama-3.2-1b", dtype="bfloat16", remat=True)
    assert hash(model) == hash(get_preset("llama-3.2-1b", dtype="bfloat16", remat=True))
    assert to_model_config(get_config()) == get_preset("gpt2")
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        get_config("name=nope")


def test_bad_config_values_are_named():
    fields = dataclasses.asdict(get_preset("tiny-llama"))
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        ModelConfig(**{**fields, "num_kv_heads": 3})
    with pytest.raises(ValueError, match="norm='batchnorm'"):
        ModelConfig(**{**fields, "norm": "batchnorm"})
    with pytest.raises(ValueError, match="dtype='float8'"):
        ModelConfig(**{**fields, "dtype": "float8"})


def test_cache_shape_mismatch_is_named(loaded):
    config, params, _ = loaded("llama")
    cache = init_cache(config, batch_size=2, max_length=8)
    with pytest.raises(ValueError, match="KVCache keys/values shape"):
        Transformer(config).apply({"params": params}, jnp.zeros((3, 1), jnp.int32), cache=cache)
