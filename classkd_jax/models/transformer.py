"""The decoder-only transformer: embeddings, a stack of blocks, final norm, LM head.

Blocks are stacked with `nn.scan` (one compiled block whatever the depth; params
get a leading 'layers' axis) or, with `scan_layers=False`, unrolled (params
'layers_0' .. 'layers_{L-1}'); either way optionally rematerialised per block.
Training wants the scan (compile time independent of depth); cached decoding
wants the unrolled form, whose per-layer weights and caches are separate arrays
that a `while_loop` body reads in place (`unstack_layers` converts the params).
The KV cache is an explicit input/output (`KVCache`), never a hidden mutable
collection.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from classkd_jax.models.attention import (
    Attention,
    Flag,
    LayerCache,
    attention_mask,
    cache_attention_mask,
    window_mask,
)
from classkd_jax.models.cache import KVCache
from classkd_jax.models.config import ModelConfig
from classkd_jax.models.layers import (
    INIT_STDDEV,
    Mlp,
    Norm,
    norm_scale_init,
    normal_init,
    softcap,
)

Masks = tuple[jax.Array, jax.Array | None]  # (full, sliding-window or None)


@flax.struct.dataclass
class ModelOutput:
    """What `Transformer.__call__` returns.

    Attributes:
      logits: [B, T, V] float32, or None when `compute_logits=False`.
      hidden: [B, T, D] compute dtype, the final-norm hidden states (LM head input).
      cache: the updated `KVCache` in cache mode, else None.
    """

    logits: jax.Array | None
    hidden: jax.Array
    cache: KVCache | None = None


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)); with `post_norms`
    (Gemma) the attention and MLP outputs are normalised before their adds.
    Scan-compatible.

    Attributes:
      flags: the layer's (sliding, rope) flags when unrolled (static); None when
        scanned, where they come per layer as the `layer_flags` argument.
      deterministic: no dropout; else attention-probability dropout and
        residual dropout on both outputs (GPT-2's `attn_dropout`, `resid_dropout`).
    """

    config: ModelConfig
    flags: tuple[bool, bool] | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        layer_cache: LayerCache | None,
        layer_flags: tuple[jax.Array, jax.Array] | None,
        positions: jax.Array,
        masks: Masks,
        index: jax.Array | None,
    ) -> tuple[jax.Array, LayerCache | None]:
        cfg = self.config
        sliding, rope = self.flags if self.flags is not None else layer_flags
        # Flags the config never varies stay static (no per-layer select traced).
        sliding: Flag = sliding if cfg.has_sliding else False
        rope: Flag = rope if cfg.rope_layers is not None else True
        drop = nn.Dropout(cfg.residual_dropout, deterministic=self.deterministic)
        h, new_cache = Attention(cfg, self.deterministic, name="attn")(
            Norm(cfg, name="attn_norm")(x), positions, masks, layer_cache, index, sliding, rope
        )
        if cfg.post_norms:
            h = Norm(cfg, name="post_attn_norm")(h)
        x = x + drop(h)
        h = Mlp(cfg, name="mlp")(Norm(cfg, name="mlp_norm")(x))
        if cfg.post_norms:
            h = Norm(cfg, name="post_mlp_norm")(h)
        x = x + drop(h)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, new_cache


def _block(config: ModelConfig) -> type[nn.Module]:
    if config.remat == "none":
        return Block
    policy = None  # 'full': only the block's input is kept
    if config.remat == "dots":  # keep the weight matmuls' outputs, recompute the rest
        policy = jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    # Inside scan, CSE cannot merge the recomputation, so prevent_cse is only
    # needed for unrolled blocks.
    return nn.remat(Block, prevent_cse=not config.scan_layers, policy=policy)


def _scanned_blocks(
    config: ModelConfig, x, layer_caches, positions, masks, index, deterministic=True
) -> tuple[jax.Array, tuple | None]:
    """Runs the blocks as one `nn.scan`. Per-layer caches are stacked for it and
    split after, i.e. copied on every call: correct, but cached decoding belongs
    to the unrolled form (`scan_layers=False`). The per-layer flags (sliding
    window, RoPE) ride along as scanned [L] bool arrays, so any pattern (Gemma
    3's 5:1 over 26 layers, SmolLM3's every 4th layer without RoPE) is one
    compiled block."""
    stack = nn.scan(
        _block(config),
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, 0, nn.broadcast, nn.broadcast, nn.broadcast),
        length=config.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(config, deterministic=deterministic, name="layers")
    stacked = None
    if layer_caches is not None:
        stacked = jax.tree.map(lambda *layers: jnp.stack(layers), *layer_caches)
    flags = tuple(jnp.asarray(f, jnp.bool_) for f in zip(*config.layer_flags, strict=True))
    x, new = stack(x, stacked, flags, positions, masks, index)
    if new is None:
        return x, None
    return x, tuple(jax.tree.map(lambda a, i=i: a[i], new) for i in range(config.num_layers))


def _unrolled_blocks(
    config: ModelConfig, x, layer_caches, positions, masks, index, deterministic=True
) -> tuple[jax.Array, tuple | None]:
    """Runs the blocks one after another (params 'layers_{i}'), each on its own cache."""
    new = []
    for i, flags in enumerate(config.layer_flags):
        layer_cache = None if layer_caches is None else layer_caches[i]
        block = _block(config)(config, flags, deterministic, name=f"layers_{i}")
        x, c = block(x, layer_cache, None, positions, masks, index)
        new.append(c)
    return x, (None if layer_caches is None else tuple(new))


class Transformer(nn.Module):
    """Decoder-only LM of every family in `ModelConfig.family`."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: KVCache | None = None,
        compute_logits: bool = True,
        deterministic: bool = True,
    ) -> ModelOutput:
        """Runs the model on `tokens`.

        Args:
          tokens: [B, T] int32.
          positions: [B, T] int32. Default arange(T), or `cache.index + arange(T)`
            in cache mode. With left padding use `max(cumsum(mask) - 1, 0)`.
          segment_ids: [B, T] int32, 0 = padding; tokens attend causally within equal
            nonzero ids. In cache mode a 0/1 validity mask of the new tokens.
            Default all ones.
          cache: a `KVCache`; the new tokens are written at slots
            `cache.index .. cache.index + T - 1` and attend to every valid slot up
            to their own.
          compute_logits: if False, `logits` is None (a loss can use `hidden`).
          deterministic: no dropout (the default). False applies the config's
            rates (a trained role's training forward) and needs a 'dropout' rng.

        Returns:
          `ModelOutput(logits [B, T, V] float32, hidden [B, T, D], cache)`.
        """
        cfg = self.config
        b, t = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if positions is None:
            start = 0 if cache is None else cache.index
            positions = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype,
            embedding_init=normal_init(("vocab", "embed")),
            name="embed",
        )
        # The lookup reads the table gathered over 'fsdp' (FSDP: weights move, not
        # activations): with it sharded along D, XLA would reshard the batch-sharded
        # [B, T, D] cotangent of the lookup along D, a full copy on every device.
        table = nn.with_logical_constraint(embed.embedding, ("vocab", None))
        x = jnp.take(table.astype(cfg.compute_dtype), tokens, axis=0)
        if cfg.embed_scale:  # sqrt(d) rounded to the param dtype first, as HF
            scale = jnp.asarray(cfg.hidden_size**0.5, cfg.params_dtype)
            x = x * scale.astype(cfg.compute_dtype)
        if cfg.position_embedding == "learned":
            pos_embed = nn.Embed(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                dtype=cfg.compute_dtype,
                param_dtype=cfg.params_dtype,
                embedding_init=normal_init((None, "embed")),
                name="pos_embed",
            )
            pos_table = nn.with_logical_constraint(pos_embed.embedding, (None, None))
            x = x + jnp.take(pos_table.astype(cfg.compute_dtype), positions, axis=0)
        x = nn.Dropout(cfg.embed_dropout, deterministic=deterministic)(x)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        if cache is None:
            mask, layer_caches, index = attention_mask(segment_ids), None, None
            slot_mask, query_index = None, jnp.arange(t)
        else:
            _check_cache(cfg, cache, tokens.shape)
            index = cache.index
            slot_mask = jax.lax.dynamic_update_slice(cache.mask, segment_ids != 0, (0, index))
            mask = cache_attention_mask(slot_mask, index, t)
            layer_caches = tuple(zip(cache.keys, cache.values, strict=True))
            query_index = index + jnp.arange(t)
        window = None
        if cfg.has_sliding:
            window = window_mask(mask, query_index, cfg.sliding_window)
        blocks = _scanned_blocks if cfg.scan_layers else _unrolled_blocks
        x, new_kv = blocks(cfg, x, layer_caches, positions, (mask, window), index, deterministic)
        hidden = Norm(cfg, name="final_norm")(x)

        new_cache = None
        if cache is not None:
            keys, values = (tuple(kv) for kv in zip(*new_kv, strict=True))
            new_cache = KVCache(keys=keys, values=values, mask=slot_mask, index=index + t)
        logits = None
        if compute_logits:
            if cfg.tie_word_embeddings:
                head = table.T
            else:
                head = self.param(
                    "lm_head",
                    normal_init(("embed", "vocab")),
                    (cfg.hidden_size, cfg.vocab_size),
                    cfg.params_dtype,
                )
            logits = project_logits(hidden, head, cfg)
        return ModelOutput(logits=logits, hidden=hidden, cache=new_cache)


def project_logits(hidden: jax.Array, head: jax.Array, config: ModelConfig) -> jax.Array:
    """`hidden` [B, T, D] @ `head` [D, V] in compute dtype, accumulated in float32,
    then soft-capped by `config.final_logit_softcap` (Gemma 2) if set."""
    dtype = config.compute_dtype
    logits = jnp.einsum(
        "btd,dv->btv", hidden.astype(dtype), head.astype(dtype), preferred_element_type=jnp.float32
    )
    logits = softcap(logits, config.final_logit_softcap)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def _check_cache(config: ModelConfig, cache: KVCache, token_shape: tuple[int, int]) -> None:
    want = (token_shape[0], config.num_kv_heads, cache.max_length, config.head_dim)
    shapes = {tuple(a.shape) for a in (*cache.keys, *cache.values)}
    if cache.num_layers != config.num_layers or len(cache.values) != config.num_layers:
        raise ValueError(
            f"KVCache has {cache.num_layers} key / {len(cache.values)} value layers; "
            f"the model has num_layers={config.num_layers}"
        )
    if shapes != {want}:
        raise ValueError(
            f"KVCache keys/values shapes {sorted(shapes)} do not fit the model and batch: "
            f"expected {want} per layer (batch, kv_heads, slots, head_dim)"
        )
    if token_shape[1] > cache.max_length:
        raise ValueError(f"{token_shape[1]} new tokens exceed the cache's {cache.max_length} slots")


def init_params(config: ModelConfig, rng: jax.Array, *, boxed: bool = False):
    """Random-init parameters as Hugging Face's `_init_weights` does.

    Weights (kernels, embeddings, the untied head) ~ N(0, 0.02), norm scales 1
    (0 for Gemma's `(1 + w)` norms), biases 0: the distributions of the
    modules' own initialisers, drawn leaf by leaf (`fold_in(rng, leaf_index)`)
    without tracing the forward pass, so the jitted init is small; under
    `jax.jit(..., out_shardings=...)` each leaf is drawn where it lives and,
    with threefry keys, equals the unsharded draw.

    Args:
      config: the model config.
      rng: a PRNG key (any implementation).
      boxed: keep `nn.Partitioned` boxes carrying logical axis names.

    Returns:
      The params pytree (the inside of `{'params': ...}`), dtype `config.param_dtype`.
    """
    return _jit_init(config, boxed, rng)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jit_init(config: ModelConfig, boxed: bool, rng: jax.Array):
    is_box = lambda x: isinstance(x, nn.Partitioned)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_params(config), is_leaf=is_box)
    values = []
    for i, (path, box) in enumerate(leaves):
        shape, dtype = box.value.shape, box.value.dtype
        name = path[-1].key
        if name == "scale":
            value = jnp.full(shape, norm_scale_init(config), dtype)
        elif name == "bias":
            value = jnp.zeros(shape, dtype)
        else:
            normal = jax.random.normal(jax.random.fold_in(rng, i), shape, jnp.float32)
            value = (INIT_STDDEV * normal).astype(dtype)
        values.append(box.replace_boxed(value) if boxed else value)
    return jax.tree_util.tree_unflatten(treedef, values)


@functools.lru_cache(maxsize=64)
def abstract_params(config: ModelConfig):
    """Shapes and dtypes of the params, boxed with their logical axis names (no FLOPs).

    Cached per config (tracing the init costs ~0.1 s; the result is immutable
    shape information)."""
    init = lambda r: Transformer(config).init(r, jnp.zeros((1, 1), jnp.int32))["params"]
    return jax.eval_shape(init, jax.random.key(0))


def unstack_layers(params, config: ModelConfig):
    """Scanned params ('layers' with a leading L axis) -> unrolled ('layers_0' ..).

    The result is what `Transformer(config.replace(scan_layers=False))` takes.
    Unrolled params pass through unchanged. Traceable: inside `jit`, do it once
    outside a decode loop, so the loop body reads each layer's weights in place
    rather than slicing the stacked arrays on every step.
    """
    if "layers" not in params:
        return params
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(config.num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["layers"])
    return out


def stack_layers(params, config: ModelConfig):
    """Unrolled params ('layers_0' ..) -> scanned ('layers', leading L axis); the
    inverse of `unstack_layers`. Scanned params pass through unchanged."""
    if "layers" in params:
        return params
    names = [f"layers_{i}" for i in range(config.num_layers)]
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"unrolled params lack {missing} for num_layers={config.num_layers}")
    out = {k: v for k, v in params.items() if k not in names}
    out["layers"] = jax.tree.map(lambda *a: jnp.stack(a), *(params[n] for n in names))
    return out


def repeat_kv_heads(params, config: ModelConfig, kv_heads: int):
    """Unrolled params with each KV head's key/value projections repeated
    `kv_heads // config.num_kv_heads` times (head j of the result is head
    `j // r` of `params`): the same model, computed exactly as before, by
    `Transformer(config.replace(num_kv_heads=kv_heads))`. Query head h reads
    KV head `h // (H / kv_heads)`, which holds the values of its old KV head.

    A decoder that splits the query heads over more devices than the model has
    KV heads uses it so that every device holds the KV head its query heads
    read (and only that one: the KV cache splits alike). Traceable.

    Raises:
      ValueError: `kv_heads` not a multiple of the model's KV heads dividing its
        query heads, or scanned params.
    """
    if kv_heads == config.num_kv_heads:
        return params
    r, rest = divmod(kv_heads, config.num_kv_heads)
    if rest or r < 1 or config.num_heads % kv_heads or "layers" in params:
        raise ValueError(
            f"repeat_kv_heads: {kv_heads} KV heads from {config.num_kv_heads} (query heads "
            f"{config.num_heads}) needs unrolled params and a multiple that divides the "
            "query heads"
        )
    repeat = lambda a, axis: jnp.repeat(a, r, axis=axis)
    out = dict(params)
    for i in range(config.num_layers):
        layer = dict(out[f"layers_{i}"])
        attn = dict(layer["attn"])
        for name in ("k", "v"):  # kernel [D, H_kv, D_h], bias [H_kv, D_h]
            proj = dict(attn[name])
            proj["kernel"] = repeat(proj["kernel"], 1)
            if "bias" in proj:
                proj["bias"] = repeat(proj["bias"], 0)
            attn[name] = proj
        layer["attn"] = attn
        out[f"layers_{i}"] = layer
    return out


def lm_head(params, config: ModelConfig) -> jax.Array:
    """The output embedding [D, V]: the tied embedding transposed, or the untied head."""
    if config.tie_word_embeddings:
        return params["embed"]["embedding"].T
    return params["lm_head"]
