"""Logical axis rules, param shardings, and sharded == single-device numerics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from classkd_jax import sharding
from classkd_jax.models import (
    Transformer,
    abstract_params,
    get_preset,
    init_cache,
    init_params,
)


def test_make_mesh_sizes_and_errors():
    mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(sharding.make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.make_mesh(data=3, fsdp=2, tensor=1)
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.make_mesh(data=-1, fsdp=-1)


def test_rules_apply_in_priority_order_and_unknown_names_fail():
    to_mesh = sharding.logical_to_mesh
    # 'batch' takes fsdp first, so activations' 'embed' stays unsharded ...
    assert to_mesh(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
    # ... while params (no 'batch') shard 'embed' over fsdp.
    assert to_mesh(("layers", "embed", "heads", "head_dim")) == P(None, "fsdp", "tensor", None)
    assert to_mesh(("embed", None)) == P("fsdp", None)
    with pytest.raises(ValueError, match="'experts'"):
        to_mesh(("embed", "experts"))


def test_param_shardings_cover_every_param_and_reject_unnamed_leaves():
    config = get_preset("tiny-gpt2", vocab_size=255)  # 255: not divisible by tensor=2
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(abstract_params(config), mesh))
    assert specs["layers"]["attn"]["o"]["kernel"] == P(None, "tensor", None, "fsdp")
    assert specs["layers"]["mlp"]["up"]["kernel"] == P(None, "fsdp", "tensor")
    assert specs["embed"]["embedding"] == P(None, "fsdp")  # vocab 255 left unsharded
    assert specs["pos_embed"]["embedding"] == P(None, "fsdp")
    plain = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    with pytest.raises(ValueError, match=r"\['embed'\]\['embedding'\] carries no logical"):
        sharding.param_shardings(plain, mesh)
    no_mlp = [rule for rule in sharding.DEFAULT_RULES if rule[0] != "mlp"]
    with pytest.raises(ValueError, match=r"\['mlp'\].*'mlp'.*match no sharding rule"):
        sharding.param_shardings(abstract_params(config), mesh, no_mlp)


def test_sharded_forward_and_decode_equal_single_device(tiny_model):
    config, params = tiny_model("llama")
    model = Transformer(config)
    tokens = jax.random.randint(jax.random.key(1), (4, 8), 3, 256)

    def step(params, tokens, cache):
        prefill = model.apply({"params": params}, tokens[:, :7], cache=cache)
        decode = model.apply({"params": params}, tokens[:, 7:], cache=prefill.cache)
        full = model.apply({"params": params}, tokens)
        return full.logits, jnp.concatenate([prefill.logits, decode.logits], axis=1), decode.cache

    cache = init_cache(config, 4, 8)
    want = jax.jit(lambda p, t: model.apply({"params": p}, t).logits)(params, tokens)

    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    p_sh = sharding.param_shardings(abstract_params(config), mesh)
    c_sh = sharding.cache_shardings(cache, mesh)
    t_sh = sharding.logical_sharding(("batch", "length"), mesh)
    assert len(c_sh.keys) == config.num_layers
    assert c_sh.keys[0].spec == P(("data", "fsdp"), "tensor", None, None)
    with sharding.activation_sharding(mesh):
        sharded = jax.jit(step, in_shardings=(p_sh, t_sh, c_sh), out_shardings=(None, None, c_sh))
        args = jax.device_put((params, tokens, cache), (p_sh, t_sh, c_sh))
        got_full, got_inc, got_cache = sharded(*args)
        # The model's activation constraints are live inside the context.
        assert "sharding_constraint" in sharded.lower(*args).as_text()
    assert [k.sharding.spec for k in got_cache.keys] == [k.spec for k in c_sh.keys]
    np.testing.assert_allclose(got_full, want, atol=1e-5)
    np.testing.assert_allclose(got_inc, want, atol=1e-5)
