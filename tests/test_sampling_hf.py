"""Greedy decoding token for token against transformers' `generate(do_sample=False)`."""

import jax
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from classkd_jax.generate import load_model_and_tokenizer
from classkd_jax.sampling import Sampler, SamplingConfig, left_pad

PROMPTS = [
    "the quick brown fox",
    "a student learns from a teacher and from a classmate. Question:",
    "JAX",
    "Summarize: the cat sat on the mat",
]
N_NEW = 10


def _hf_greedy(hf_model, ids, pad_id, **kw) -> np.ndarray:
    """transformers' greedy generate on left-padded prompts -> [B, <=N_NEW] new tokens."""
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in ids])
    attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    with torch.no_grad():
        out = hf_model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=False,
            max_new_tokens=N_NEW,
            pad_token_id=pad_id,
            **kw,
        )
    return out[:, width:].numpy()


def _ours(model, ids, pad_id, eos, ngram=0):
    config, params = model
    tokens, mask, valid = left_pad(ids, 32, pad_id, batch_size=4)
    cfg = SamplingConfig(
        max_new_tokens=N_NEW, greedy=True, eos_ids=eos, pad_id=pad_id, no_repeat_ngram_size=ngram
    )
    out = Sampler(config)(params, tokens, mask, jax.random.key(0), cfg, row_valid=valid)
    return np.asarray(out.tokens), np.asarray(out.mask), int(out.num_steps)


def _assert_same(ours, theirs, pad_id, eos):
    tokens, mask, steps = ours
    assert steps == theirs.shape[1], "early stop at the same step as transformers"
    np.testing.assert_array_equal(tokens[:, : theirs.shape[1]], theirs)
    assert (tokens[:, steps:] == pad_id).all() and not mask[:, steps:].any()
    for row, m in zip(tokens, mask, strict=True):  # mask = up to and including the EOS
        ends = [i for i, t in enumerate(row) if t in eos]
        k = ends[0] + 1 if ends else len(row)
        assert m.tolist() == [True] * k + [False] * (len(row) - k)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_equals_transformers_with_early_eos(tiny_hf_model_dir, family):
    path = tiny_hf_model_dir(family)
    model, tok = load_model_and_tokenizer(path)
    hf_model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    pad = tok.pad_token_id
    free = _hf_greedy(hf_model, ids, pad, eos_token_id=None)
    # An EOS that transformers emits at step 3 of row 0, so rows end at different steps.
    eos = (int(free[0, 3]), model[0].eos_token_ids[0])
    assert any(eos[0] not in row[:5] for row in free[1:]), "the EOS should not end every row"
    theirs = _hf_greedy(hf_model, ids, pad, eos_token_id=list(eos))
    assert (theirs == pad).any(), "some rows finished early in transformers too"
    _assert_same(_ours(model, ids, pad, eos), theirs, pad, eos)


def test_no_repeat_ngram_greedy_equals_transformers(tiny_hf_model_dir):
    path = tiny_hf_model_dir("gpt2")
    model, tok = load_model_and_tokenizer(path)
    hf_model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    pad, n = tok.pad_token_id, 2
    eos = model[0].eos_token_ids
    plain = _hf_greedy(hf_model, ids, pad, eos_token_id=list(eos))
    theirs = _hf_greedy(hf_model, ids, pad, eos_token_id=list(eos), no_repeat_ngram_size=n)
    assert (plain != theirs).any(), "the n-gram ban should change the greedy output"
    ours = _ours(model, ids, pad, eos, ngram=n)
    _assert_same(ours, theirs, pad, eos)
    for prompt, row, m in zip(ids, ours[0], ours[1], strict=False):
        seq = list(prompt) + row[m].tolist()
        grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
        for j in range(len(prompt) - n + 1, len(grams)):  # n-grams ending in the completion
            assert grams[j] not in grams[:j], f"repeated {grams[j]} in {seq}"
