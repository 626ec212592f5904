"""Hugging Face directories in and out: round trips, sharding, tokenizers, errors."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from classkd_jax.models import (
    ModelConfig,
    get_preset,
    init_params,
    load_hf,
    load_tokenizer,
    save_hf,
)


def read_tensors(path):
    """All tensors of a HF dir, whatever the sharding."""
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def hf_logits(path, tokens):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "llama-biased"])
def test_round_trip_gives_identical_tensors_and_logits(tiny_hf_model_dir, tmp_path, family):
    src = tiny_hf_model_dir(family)
    config, params = load_hf(src)
    out = save_hf(tmp_path / "out", config, params, tokenizer=load_tokenizer(src))
    want, got = read_tensors(src), read_tensors(out)
    want.pop("lm_head.weight", None) if config.tie_word_embeddings else None
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    tokens = np.random.default_rng(0).integers(3, 256, (2, 7))
    np.testing.assert_array_equal(hf_logits(out, tokens), hf_logits(src, tokens))
    assert load_tokenizer(out)("a student").input_ids == load_tokenizer(src)("a student").input_ids
    # Our config survives transformers' own config class unchanged.
    from transformers import AutoConfig

    assert ModelConfig.from_hf_config(AutoConfig.from_pretrained(out).to_dict()) == config


def test_sharded_checkpoint_with_index_loads_in_both_directions(tiny_hf_model_dir, tmp_path):
    config, params = load_hf(tiny_hf_model_dir("llama"))
    out = save_hf(tmp_path / "sharded", config, params, max_shard_size="20KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(out.glob("*.safetensors"))
    assert len(files) > 2 and set(index["weight_map"].values()) == {f.name for f in files}
    _, again = load_hf(out)
    jax.tree.map(np.testing.assert_array_equal, again, params)
    # transformers reads the same sharded directory back.
    tokens = np.random.default_rng(1).integers(3, 256, (1, 5))
    np.testing.assert_array_equal(
        hf_logits(out, tokens), hf_logits(tiny_hf_model_dir("llama"), tokens)
    )


def test_bfloat16_params_are_saved_as_bfloat16(tiny_hf_model_dir, tmp_path):
    config, params = load_hf(tiny_hf_model_dir("qwen2"), param_dtype="bfloat16")
    out = save_hf(tmp_path / "bf16", config, params)
    tensors = read_tensors(out)
    assert {str(v.dtype) for v in tensors.values()} == {"bfloat16"}
    loaded_config, loaded = load_hf(out, param_dtype="bfloat16")
    assert loaded_config == config and config.param_dtype == "bfloat16"
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16


def test_missing_tensor_is_named(tiny_hf_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_hf_model_dir("qwen2"), broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(KeyError, match=r"model\.layers\.1\.self_attn\.k_proj\.bias"):
        load_hf(broken)


def test_unknown_architecture_is_named(tiny_hf_model_dir, tmp_path):
    bert = tmp_path / "bert"
    shutil.copytree(tiny_hf_model_dir("gpt2"), bert)
    config = json.loads((bert / "config.json").read_text())
    config.update(model_type="bert", architectures=["BertForMaskedLM"])
    (bert / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type='bert'"):
        load_hf(bert)


def test_unexpected_tensor_and_missing_dir_are_errors(tiny_hf_model_dir, tmp_path):
    extra = tmp_path / "extra"
    shutil.copytree(tiny_hf_model_dir("llama"), extra)
    tensors = load_file(extra / "model.safetensors")
    tensors["model.layers.0.self_attn.q_norm.weight"] = np.ones(8, np.float32)
    save_file(tensors, extra / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="q_norm"):
        load_hf(extra)
    with pytest.raises(FileNotFoundError):
        load_hf(tmp_path / "does-not-exist")


def test_legacy_rope_scaling_config_form_is_read():
    """Real Llama 3.2 config.json files use top-level rope_theta and rope_scaling."""
    legacy = {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "tie_word_embeddings": True,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "hidden_act": "silu",
    }
    assert ModelConfig.from_hf_config(legacy) == get_preset("llama-3.2-1b")
    yarn = {**legacy, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    with pytest.raises(ValueError, match="'yarn'"):
        ModelConfig.from_hf_config(yarn)


def test_logits_of_saved_random_model_match_ours(tmp_path):
    """save_hf of a random init (not a re-save) gives a model transformers agrees with."""
    from classkd_jax.models import Transformer

    config = get_preset("tiny-gpt2")
    params = init_params(config, jax.random.key(3))
    out = save_hf(tmp_path / "gpt2", config, params)
    tokens = np.random.default_rng(2).integers(3, 256, (2, 6))
    apply = jax.jit(lambda p, t: Transformer(config).apply({"params": p}, t).logits)
    ours = apply(params, jnp.asarray(tokens, jnp.int32))
    np.testing.assert_allclose(ours, hf_logits(out, tokens), atol=1e-4)


def test_configs_transformers_cannot_express_are_refused():
    gpt2_with_rmsnorm = get_preset("tiny-gpt2", norm="rmsnorm")
    with pytest.raises(ValueError, match=r"\['norm'\] are not expressible"):
        gpt2_with_rmsnorm.to_hf_config()


def test_load_hf_places_params_with_given_shardings(tiny_hf_model_dir):
    from classkd_jax import sharding
    from classkd_jax.models import abstract_params

    path = tiny_hf_model_dir("qwen2")
    config, params = load_hf(path)
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    shardings = sharding.param_shardings(abstract_params(config), mesh)
    _, placed = load_hf(path, shardings=shardings)
    q = placed["layers"]["attn"]["q"]["kernel"]
    assert q.sharding == shardings["layers"]["attn"]["q"]["kernel"]
    jax.tree.map(np.testing.assert_array_equal, placed, params)


def test_original_gpt2_hub_layout_loads(tiny_hf_model_dir, tmp_path):
    """openai-community/gpt2 stores 'wte.weight', 'h.0.attn.bias' (a mask buffer), no prefix."""
    src = tiny_hf_model_dir("gpt2")
    old = tmp_path / "old_gpt2"
    shutil.copytree(src, old)
    tensors = load_file(old / "model.safetensors")
    renamed = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    renamed["h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), np.float32))
    (old / "model.safetensors").unlink()
    save_file(renamed, old / "pytorch_model_converted.safetensors", metadata={"format": "pt"})
    _, params = load_hf(old)
    _, want = load_hf(src)
    jax.tree.map(np.testing.assert_array_equal, params, want)
