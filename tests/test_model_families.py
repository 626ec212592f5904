"""Qwen3, Gemma 2, Gemma 3, Mistral and SmolLM3 against transformers: logits,
greedy decoding, export.

Each family's tiny random model (tests/tiny_hf.py) switches every feature on
at once: q/k norms, a 4-token sliding window (shorter than every sequence
here) on some of 3 layers (an odd count), `query_pre_attn_scalar` != head_dim,
both soft-caps, Gemma 3's RoPE by layer type with linear scaling. The
references are transformers' PyTorch models; one ClassKD run per new family
pair goes through the real CLI and its export loads back in transformers.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from classkd_jax import export, train
from classkd_jax.generate import load_model_and_tokenizer
from classkd_jax.models import (
    PRESETS,
    ModelConfig,
    Transformer,
    abstract_params,
    get_preset,
    init_cache,
    load_hf,
    load_tokenizer,
    save_hf,
)
from tests.test_hf_io import read_tensors
from tests.test_models import forward, padded_batch
from tests.test_sampling_hf import PROMPTS, _assert_same, _hf_greedy, _ours
from tests.tiny_hf import NEW_FAMILIES, WINDOW, build_multimodal_gemma3

B, T = 3, 12  # T > WINDOW: sliding layers see only part of each row


def _hf(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_logits_match_transformers_with_padding_past_the_window(
    tiny_model, tiny_hf_model_dir, family
):
    config, params = tiny_model(family)
    assert config.has_sliding and config.num_layers % 2
    assert family == "mistral" or not all(config.sliding_layers)  # both layer types
    assert family != "smollm3" or not all(r for _, r in config.layer_flags)  # a no-RoPE layer
    assert WINDOW < T
    tokens, mask, positions = padded_batch(B, T, [0, 2, 5])
    with torch.no_grad():
        want = _hf(tiny_hf_model_dir(family))(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        ).logits.numpy()
    got = np.asarray(forward(config, params, tokens, positions, mask).logits)
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-4, rtol=0)
    assert np.abs(want[valid]).max() > 1.0  # far from uniform


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_greedy_decoding_with_the_kv_cache_equals_transformers_generate(tiny_hf_model_dir, family):
    """Prompts of up to ~20 tokens + 10 new ones, window 4: the cached sliding
    layers must mask slots outside the window exactly as the full forward does."""
    path = tiny_hf_model_dir(family)
    model, tok = load_model_and_tokenizer(path)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    assert max(len(x) for x in ids) > 2 * WINDOW
    pad, eos = tok.pad_token_id, model[0].eos_token_ids
    theirs = _hf_greedy(_hf(path), ids, pad, eos_token_id=list(eos))
    _assert_same(_ours(model, ids, pad, eos), theirs, pad, eos)


@pytest.mark.parametrize("family", ["gemma3", "smollm3"])
def test_scanned_stack_with_the_cache_equals_the_full_forward(tiny_model, family):
    """The scanned form (per-layer flags as scanned arrays) decoding with the
    cache, one token at a time past the window, equals its full forward."""
    config, params = tiny_model(family)
    tokens, mask, positions = padded_batch(B, T, [0, 2, 5], seed=1)
    full = np.asarray(forward(config, params, tokens, positions, mask).logits)

    @jax.jit
    def step(params, tokens, positions, mask, cache):
        out = Transformer(config).apply(
            {"params": params}, tokens, positions=positions, segment_ids=mask, cache=cache
        )
        return out.logits, out.cache

    prompt = WINDOW + 1
    cache = init_cache(config, B, T)
    logits, cache = step(params, tokens[:, :prompt], positions[:, :prompt], mask[:, :prompt], cache)
    pieces = [np.asarray(logits)]
    for t in range(prompt, T):
        sl = slice(t, t + 1)
        logits, cache = step(params, tokens[:, sl], positions[:, sl], mask[:, sl], cache)
        pieces.append(np.asarray(logits))
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.concatenate(pieces, 1)[valid], full[valid], atol=1e-5, rtol=0)


def test_sharded_forward_and_decode_equal_single_device(tiny_model):
    """Gemma 3 on a (data, fsdp, tensor) = (2, 2, 2) mesh: every new parameter
    (q/k norms, the post norms) has a sharding rule, and the sharded full and
    cached forwards equal the single-device one."""
    from classkd_jax import sharding

    config, params = tiny_model("gemma3")
    model = Transformer(config)
    tokens = jax.random.randint(jax.random.key(1), (4, 8), 3, 256)

    def step(params, tokens, cache):
        prefill = model.apply({"params": params}, tokens[:, :6], cache=cache)
        decode = model.apply({"params": params}, tokens[:, 6:], cache=prefill.cache)
        full = model.apply({"params": params}, tokens)
        return full.logits, jnp.concatenate([prefill.logits, decode.logits], axis=1)

    want = jax.jit(lambda p, t: model.apply({"params": p}, t).logits)(params, tokens)
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    p_sh = sharding.param_shardings(abstract_params(config), mesh)
    cache = init_cache(config, 4, 8)
    c_sh = sharding.cache_shardings(cache, mesh)
    t_sh = sharding.logical_sharding(("batch", "length"), mesh)
    with sharding.activation_sharding(mesh):
        sharded = jax.jit(step, in_shardings=(p_sh, t_sh, c_sh))
        full, incremental = sharded(*jax.device_put((params, tokens, cache), (p_sh, t_sh, c_sh)))
    np.testing.assert_allclose(full, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(incremental, want, atol=1e-5, rtol=0)


def test_every_logit_former_applies_the_final_softcap(tiny_model):
    """The sampler's head and MiniLLM's scorer form logits from hidden states
    themselves: both apply Gemma 2's final soft-cap as the model does."""
    from classkd_jax.sampling.loop import Decoder
    from classkd_jax.training.minillm import target_logprobs
    from classkd_jax.training.step import head

    config, params = tiny_model("gemma2")
    tokens, mask, positions = padded_batch(B, T, [0, 0, 0])
    out = forward(config, params, tokens, positions, mask)
    cap = config.final_logit_softcap
    sampler_logits = Decoder.of(config, params).logits(out.hidden[:, -1])
    np.testing.assert_allclose(sampler_logits, out.logits[:, -1], atol=1e-5, rtol=0)
    w, vocab_major = head(config, params)
    targets = np.roll(tokens, -1, axis=1)
    got = target_logprobs(
        out.hidden, w, vocab_major, targets, vocab_size=None, final_softcap=cap, chunk=8
    )
    logp = jax.nn.log_softmax(out.logits, axis=-1)
    want = np.take_along_axis(np.asarray(logp), targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    raw = np.asarray(out.hidden @ w.T)
    assert np.abs(raw - np.asarray(out.logits)).max() > 0.1  # the cap changes the logits


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_save_hf_round_trip_is_exact_in_transformers(
    tiny_model, tiny_hf_model_dir, tmp_path, family
):
    src = tiny_hf_model_dir(family)
    config, params = tiny_model(family)
    out = save_hf(tmp_path / "out", config, params, tokenizer=load_tokenizer(src))
    want, got = read_tensors(src), read_tensors(out)
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    tokens = torch.tensor(np.random.default_rng(0).integers(3, 256, (2, 9)))
    with torch.no_grad():
        np.testing.assert_array_equal(_hf(out)(tokens).logits, _hf(src)(tokens).logits)
    assert ModelConfig.from_hf_config(AutoConfig.from_pretrained(out).to_dict()) == config
    assert load_hf(out)[0] == config


def test_the_text_model_of_a_multimodal_gemma3_checkpoint_loads(
    tiny_model, tiny_hf_model_dir, tmp_path
):
    text_dir = tiny_hf_model_dir("gemma3")
    mm_dir = tmp_path / "gemma3_mm"
    mm = build_multimodal_gemma3(_hf(text_dir), mm_dir)
    hf_config = json.loads((mm_dir / "config.json").read_text())
    assert hf_config["model_type"] == "gemma3" and "vision_config" in hf_config
    assert any("vision_tower" in name for name in read_tensors(mm_dir))
    config, params = load_hf(mm_dir)
    text_config, text_params = tiny_model("gemma3")
    jax.tree.map(np.testing.assert_array_equal, params, text_params)
    # Gemma3ForConditionalGeneration never applies the final soft-cap.
    assert config == text_config.replace(final_logit_softcap=None)
    tokens = np.random.default_rng(1).integers(3, 250, (2, 9)).astype(np.int32)
    with torch.no_grad():
        want = mm(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    got = Transformer(config).apply({"params": params}, tokens).logits
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


NEW_PRESETS = [
    n for n in PRESETS if n.startswith(("qwen3-", "gemma-", "llama-3.1", "mistral", "smollm3"))
]


@pytest.mark.parametrize("name", NEW_PRESETS)
def test_presets_are_models_transformers_builds_with_our_parameter_count(name):
    """Each preset's config.json builds in transformers (on the meta device) with
    exactly our parameters, and reads back as the same preset."""
    config = get_preset(name)
    hf = AutoConfig.for_model(**config.to_hf_config())
    assert ModelConfig.from_hf_config(hf.to_dict()) == config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    theirs = sum(p.numel() for p in model.parameters())
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(config)))
    assert ours == theirs


def test_hub_style_gemma3_configs_take_transformers_defaults():
    """The hub's multimodal Gemma 3 config.json lists only what differs from
    Gemma3TextConfig's defaults (and uses the older RoPE keys)."""
    defaults = AutoConfig.for_model("gemma3_text").to_dict()
    sparse = {
        "model_type": "gemma3",
        "text_config": {
            "model_type": "gemma3_text",
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": 34,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
        },
        "vision_config": {"model_type": "siglip_vision_model"},
        "eos_token_id": [1, 106],
    }
    config = ModelConfig.from_hf_config(sparse)
    assert config == get_preset("gemma-3-4b", eos_token_id=(1, 106))
    full = AutoConfig.for_model(**sparse).text_config.to_dict()
    for ours, theirs in [
        (config.num_heads, full["num_attention_heads"]),
        (config.head_dim, full["head_dim"]),
        (config.vocab_size, full["vocab_size"]),
        (config.query_pre_attn_scalar, full["query_pre_attn_scalar"]),
        (config.layer_types, tuple(full["layer_types"])),
        (config.local_rope_theta, full["rope_parameters"]["sliding_attention"]["rope_theta"]),
        (config.rope_theta, full["rope_parameters"]["full_attention"]["rope_theta"]),
    ]:
        assert ours == theirs
    assert defaults["vocab_size"] == config.vocab_size


def test_unsupported_gemma_features_are_named():
    base = get_preset("tiny-gemma3").to_hf_config()
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        ModelConfig.from_hf_config({**base, "use_bidirectional_attention": True})
    rope = {**base["rope_parameters"], "sliding_attention": {"rope_type": "yarn", "factor": 2.0}}
    with pytest.raises(ValueError, match="sliding_attention rope type 'yarn'"):
        ModelConfig.from_hf_config({**base, "rope_parameters": rope})
    with pytest.raises(KeyError, match="text_config"):
        ModelConfig.from_hf_config({"model_type": "gemma3"})
    with pytest.raises(ValueError, match="model_type='gemma4'"):
        ModelConfig.from_hf_config({**base, "model_type": "gemma4"})


def test_special_tokens_past_the_narrowest_head_are_not_scored(tiny_tokenizer_dir, tmp_path):
    """Gemma 3: the tokenizer's <image_soft_token> (262144) is past Gemma-3-1B's
    head (262144 rows) and inside the 4B+'s (262208): the pair plans, and scores
    the first 262144 ids. A plain token past a head is still refused."""
    from classkd_jax.cli import UserError
    from classkd_jax.config_utils import import_sibling
    from classkd_jax.training import roles
    from tests.test_train_errors import ROOT, _hf_dir

    tok = load_tokenizer(tiny_tokenizer_dir)
    n = len(tok)
    assert roles.scored_vocab(tok, [n, n + 64]) == n
    tok.add_special_tokens({"additional_special_tokens": ["<image_soft_token>"]})
    assert len(tok) == n + 1
    assert roles.scored_vocab(tok, [n, n + 64]) == n  # the 1B's head against the 4B+'s
    assert roles.scored_vocab(tok, [n + 64]) == n + 1
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(str(tok_dir))
    student = _hf_dir(tmp_path / "student", n, tok_dir)
    config = import_sibling(str(ROOT / "configs/x.py"), "kd").get_config("size=tiny")
    with config.unlocked():
        config.student.path = str(student)
        config.teacher.path = str(_hf_dir(tmp_path / "teacher", n + 64, tok_dir))
    sources = roles.plan_roles(config, tok, str(student), 128, "test")
    assert roles.scored_vocab(tok, [s.config.vocab_size for s in sources.values()]) == n
    tok.add_tokens(["plainword"])
    assert roles.scored_vocab(tok, [n, n + 64]) == n + 2
    tok.save_pretrained(str(tok_dir))
    with config.unlocked():
        config.student.path = str(_hf_dir(tmp_path / "student2", n, tok_dir))
        config.teacher.path = str(_hf_dir(tmp_path / "teacher2", n + 64, tok_dir))
    with pytest.raises(UserError, match=f"head of {n} tokens, fewer than the tokenizer's {n + 2}"):
        roles.plan_roles(config, tok, config.student.path, 128, "test")


# --- ClassKD through the real CLI on local Qwen3 and Gemma directories --------


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gemma3"])
def test_classkd_trains_on_a_local_pair_and_exports_to_transformers(
    tiny_hf_model_dir, tmp_path, family
):
    teacher, student = tiny_hf_model_dir(family), tiny_hf_model_dir(f"{family}-small")
    workdir = tmp_path / "run"
    argv = [
        "--config",
        "configs/classkd.py:size=tiny",
        "--workdir",
        str(workdir),
        f"--config.teacher.path={teacher}",
        f"--config.student.path={student}",
        "--config.steps=2",
        "--config.log_every=1",
        "--config.eval_every=0",
        "--config.checkpoint_every=2",
        "--config.progress=false",
    ]
    assert train.main(argv) == 0
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 2 and all(np.isfinite(r["loss"]) for r in steps)
    assert "on_kd" in steps[-1] and "misfeedback" in steps[-1]
    out = tmp_path / "exported"
    assert export.main(["--workdir", str(workdir), "--out", str(out)]) == 0
    config, params = load_hf(out)
    assert config.family == family and config == load_hf(student)[0]
    tokens = np.arange(3, 3 + 2 * 10, dtype=np.int32).reshape(2, 10)
    with torch.no_grad():
        want = _hf(out)(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    got = Transformer(config).apply({"params": params}, tokens).logits
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
    before = load_hf(student)[1]
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool((a != b).any()), params, before))
    assert any(moved), "training changed the student"
