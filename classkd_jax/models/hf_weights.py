"""Name and layout mapping between our param tree and Hugging Face tensors.

Each `TensorSpec` ties one of our leaves to one or more HF tensors and gives the
two conversions (HF numpy arrays -> our array, and back). Per-layer specs are
applied to every layer and stacked along our leading 'layers' axis.

Layouts: torch `nn.Linear` stores [out, in]; GPT-2's `Conv1D` stores [in, out];
our kernels are [in..., out...] (e.g. q: [D, H, D_h], o: [H, D_h, D]).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from classkd_jax.models.config import ModelConfig

Arrays = Sequence[np.ndarray]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One of our leaves and the HF tensors it comes from.

    Attributes:
      path: our param path, e.g. ('layers', 'attn', 'q', 'kernel').
      hf_names: HF tensor names; per-layer names contain '{i}'.
      to_ours: HF arrays -> our array (for one layer when per-layer).
      to_hf: our array (one layer) -> HF arrays, in `hf_names` order.
    """

    path: tuple[str, ...]
    hf_names: tuple[str, ...]
    to_ours: Callable[[Arrays], np.ndarray]
    to_hf: Callable[[np.ndarray], list[np.ndarray]]


def _linear(path, name, in_shape, out_shape) -> TensorSpec:
    """torch Linear weight [out, in] <-> our kernel [*in_shape, *out_shape]."""
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    return TensorSpec(
        path,
        (name,),
        lambda a: a[0].T.reshape(*in_shape, *out_shape),
        lambda k: [k.reshape(n_in, n_out).T],
    )


def _conv1d(path, name, in_shape, out_shape) -> TensorSpec:
    """GPT-2 Conv1D weight [in, out] <-> our kernel [*in_shape, *out_shape]."""
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    return TensorSpec(
        path,
        (name,),
        lambda a: a[0].reshape(*in_shape, *out_shape),
        lambda k: [k.reshape(n_in, n_out)],
    )


def _same(path, name, shape=None) -> TensorSpec:
    """A tensor stored the same way, reshaped to `shape` on our side if given."""
    return TensorSpec(
        path,
        (name,),
        (lambda a: a[0]) if shape is None else (lambda a: a[0].reshape(shape)),
        lambda x: [x.reshape(-1) if shape is not None else x],
    )


def _gpt2_qkv(cfg: ModelConfig, prefix: str) -> list[TensorSpec]:
    """GPT-2's fused c_attn ([D, 3D] weight, [3D] bias) <-> our q, k, v."""
    d, h, dh = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    w, b = f"{prefix}h.{{i}}.attn.c_attn.weight", f"{prefix}h.{{i}}.attn.c_attn.bias"
    specs = []
    for j, name in enumerate("qkv"):
        cols = slice(j * h * dh, (j + 1) * h * dh)
        specs.append(
            TensorSpec(
                ("layers", "attn", name, "kernel"),
                (w,),
                lambda a, cols=cols: a[0][:, cols].reshape(d, h, dh),
                None,
            )
        )
        specs.append(
            TensorSpec(
                ("layers", "attn", name, "bias"),
                (b,),
                lambda a, cols=cols: a[0][cols].reshape(h, dh),
                None,
            )
        )
    return specs


def gpt2_specs(cfg: ModelConfig, prefix: str = "transformer.") -> list[TensorSpec]:
    d, h, dh, f = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
    p = f"{prefix}h.{{i}}."
    specs = [
        _same(("embed", "embedding"), f"{prefix}wte.weight"),
        _same(("pos_embed", "embedding"), f"{prefix}wpe.weight"),
        _same(("layers", "attn_norm", "scale"), p + "ln_1.weight"),
        _same(("layers", "attn_norm", "bias"), p + "ln_1.bias"),
        *_gpt2_qkv(cfg, prefix),
        _conv1d(("layers", "attn", "o", "kernel"), p + "attn.c_proj.weight", (h, dh), (d,)),
        _same(("layers", "attn", "o", "bias"), p + "attn.c_proj.bias"),
        _same(("layers", "mlp_norm", "scale"), p + "ln_2.weight"),
        _same(("layers", "mlp_norm", "bias"), p + "ln_2.bias"),
        _conv1d(("layers", "mlp", "up", "kernel"), p + "mlp.c_fc.weight", (d,), (f,)),
        _same(("layers", "mlp", "up", "bias"), p + "mlp.c_fc.bias"),
        _conv1d(("layers", "mlp", "down", "kernel"), p + "mlp.c_proj.weight", (f,), (d,)),
        _same(("layers", "mlp", "down", "bias"), p + "mlp.c_proj.bias"),
        _same(("final_norm", "scale"), f"{prefix}ln_f.weight"),
        _same(("final_norm", "bias"), f"{prefix}ln_f.bias"),
    ]
    if not cfg.tie_word_embeddings:
        specs.append(_linear(("lm_head",), "lm_head.weight", (d,), (cfg.vocab_size,)))
    return specs


def gpt2_save_tensors(cfg: ModelConfig, layer: dict, i: int) -> dict[str, np.ndarray]:
    """The fused c_attn tensors of layer `i` from our q/k/v (save direction)."""
    d = cfg.hidden_size
    attn = layer["attn"]
    w = np.concatenate([attn[n]["kernel"].reshape(d, -1) for n in "qkv"], axis=1)
    b = np.concatenate([attn[n]["bias"].reshape(-1) for n in "qkv"])
    return {f"transformer.h.{i}.attn.c_attn.weight": w, f"transformer.h.{i}.attn.c_attn.bias": b}


def llama_specs(cfg: ModelConfig, prefix: str = "model.") -> list[TensorSpec]:
    """Llama, Qwen2/3 and Gemma 2/3 (the same projection names; biases, q/k
    norms and Gemma's extra norms present per the config).

    Args:
      prefix: of the decoder's tensors: 'model.', or a multimodal Gemma 3's
        'model.language_model.' (transformers 5) / 'language_model.model.' (hub).
    """
    d, h, kv, dh, f = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    )
    p = prefix + "layers.{i}."
    # Gemma's "post_attention_layernorm" normalises the attention output; in
    # Llama the same name is the MLP's input norm.
    mlp_norm = "pre_feedforward_layernorm" if cfg.post_norms else "post_attention_layernorm"
    specs = [
        _same(("embed", "embedding"), prefix + "embed_tokens.weight"),
        _same(("layers", "attn_norm", "scale"), p + "input_layernorm.weight"),
        _same(("layers", "mlp_norm", "scale"), p + mlp_norm + ".weight"),
        _linear(("layers", "attn", "q", "kernel"), p + "self_attn.q_proj.weight", (d,), (h, dh)),
        _linear(("layers", "attn", "k", "kernel"), p + "self_attn.k_proj.weight", (d,), (kv, dh)),
        _linear(("layers", "attn", "v", "kernel"), p + "self_attn.v_proj.weight", (d,), (kv, dh)),
        _linear(("layers", "attn", "o", "kernel"), p + "self_attn.o_proj.weight", (h, dh), (d,)),
        _linear(("layers", "mlp", "gate", "kernel"), p + "mlp.gate_proj.weight", (d,), (f,)),
        _linear(("layers", "mlp", "up", "kernel"), p + "mlp.up_proj.weight", (d,), (f,)),
        _linear(("layers", "mlp", "down", "kernel"), p + "mlp.down_proj.weight", (f,), (d,)),
        _same(("final_norm", "scale"), prefix + "norm.weight"),
    ]
    if cfg.post_norms:
        specs.append(
            _same(("layers", "post_attn_norm", "scale"), p + "post_attention_layernorm.weight")
        )
        specs.append(
            _same(("layers", "post_mlp_norm", "scale"), p + "post_feedforward_layernorm.weight")
        )
    if cfg.qk_norm:
        for name in ("q", "k"):
            specs.append(
                _same(
                    ("layers", "attn", f"{name}_norm", "scale"), p + f"self_attn.{name}_norm.weight"
                )
            )
    if cfg.qkv_bias:
        for name, heads in (("q", h), ("k", kv), ("v", kv)):
            specs.append(
                _same(
                    ("layers", "attn", name, "bias"), p + f"self_attn.{name}_proj.bias", (heads, dh)
                )
            )
    if cfg.attn_out_bias:
        specs.append(_same(("layers", "attn", "o", "bias"), p + "self_attn.o_proj.bias"))
    if cfg.mlp_bias:
        for name in ("gate", "up", "down"):
            specs.append(_same(("layers", "mlp", name, "bias"), p + f"mlp.{name}_proj.bias"))
    if not cfg.tie_word_embeddings:
        specs.append(_linear(("lm_head",), "lm_head.weight", (d,), (cfg.vocab_size,)))
    return specs


def specs_for(cfg: ModelConfig, prefix: str | None = None) -> list[TensorSpec]:
    """The tensor specs of `cfg`'s family; `prefix` of the decoder's tensors
    (default 'transformer.' for GPT-2, 'model.' for the others)."""
    if cfg.family == "gpt2":
        return gpt2_specs(cfg, "transformer." if prefix is None else prefix)
    return llama_specs(cfg, "model." if prefix is None else prefix)


# Tensors some checkpoints carry that are buffers, not parameters.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
# The decoder's tensor-name prefixes we read, by the embedding's name; the
# multimodal Gemma 3 ones come with vision tensors that are skipped.
DECODER_PREFIXES = ("model.", "model.language_model.", "language_model.model.")
VISION_PARTS = ("vision_tower.", "multi_modal_projector.")
