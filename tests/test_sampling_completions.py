"""`complete_token_ids`: prompts as token ids in, generated ids out, as `generate_completions`."""

import numpy as np
import pytest

from classkd_jax.generate import load_model_and_tokenizer
from classkd_jax.sampling import PromptTooLongError, complete_token_ids, generate_completions

PROMPTS = ["the quick brown fox", "Question: what is 12 plus 7? Answer:", "JAX"]
KW = dict(max_new_tokens=6, greedy=True, batch_size=2)  # two batches, one padding row


@pytest.fixture(scope="module")
def llama(tiny_hf_model_dir):
    return load_model_and_tokenizer(tiny_hf_model_dir("llama"))


def _ids(tok):
    return [tok(p)["input_ids"] for p in PROMPTS]


def test_generate_completions_is_tokenise_complete_decode(llama):
    model, tok = llama
    ids = complete_token_ids(model, _ids(tok), pad_id=tok.pad_token_id, **KW)
    assert len(ids) == len(PROMPTS) and all(1 <= len(x) <= 6 for x in ids)
    assert all(isinstance(t, int) for x in ids for t in x)
    decoded = [tok.decode(x, skip_special_tokens=True) for x in ids]
    assert decoded == generate_completions(model, tok, PROMPTS, **KW)
    # int32 arrays are accepted and give the same tokens.
    arrays = [np.asarray(x, np.int32) for x in _ids(tok)]
    assert complete_token_ids(model, arrays, pad_id=tok.pad_token_id, **KW) == ids


def test_sampling_is_seeded_per_call_as_generate_completions(llama):
    model, tok = llama
    kw = dict(max_new_tokens=6, temperature=1.3, batch_size=2)
    a = complete_token_ids(model, _ids(tok), seed=3, pad_id=tok.pad_token_id, **kw)
    assert a == complete_token_ids(model, _ids(tok), seed=3, pad_id=tok.pad_token_id, **kw)
    assert a != complete_token_ids(model, _ids(tok), seed=4, pad_id=tok.pad_token_id, **kw)
    decoded = [tok.decode(x, skip_special_tokens=True) for x in a]
    assert decoded == generate_completions(model, tok, PROMPTS, seed=3, **kw)


def test_the_eos_ends_a_row_and_is_kept(llama):
    model, tok = llama
    free = complete_token_ids(model, _ids(tok), pad_id=tok.pad_token_id, eos_ids=(), **KW)
    assert all(len(x) == 6 for x in free)  # no EOS: the whole budget
    eos = free[0][2]
    stopped = complete_token_ids(model, _ids(tok), pad_id=tok.pad_token_id, eos_ids=eos, **KW)
    assert stopped[0] == free[0][: free[0].index(eos) + 1]  # up to and including the EOS


def test_over_long_prompts_are_left_truncated_or_named(llama):
    model, tok = llama
    long = list(range(4, 104))  # 100 ids
    with pytest.warns(UserWarning, match=r"left-truncated 1 prompt\(s\) to max_prompt_length=16"):
        out = complete_token_ids(model, [long], pad_id=0, max_prompt_length=16, **KW)
    assert out == complete_token_ids(model, [long[-16:]], pad_id=0, **KW)
    with pytest.raises(PromptTooLongError, match="prompt 1 has 124 tokens, more than the 122") as e:
        complete_token_ids(model, [[5], list(range(4, 128))], pad_id=0, **KW)
    assert (e.value.index, e.value.length, e.value.limit) == (1, 124, 122)


@pytest.mark.parametrize(
    "prompts, error, match",
    [
        ([[5], []], ValueError, "prompt 1 has no tokens"),
        ([[5, 10_000]], ValueError, r"outside the model's vocabulary \[0, 256\)"),
        ([[5, -1]], ValueError, "outside the model's vocabulary"),
        (["text"], TypeError, "prompt 0 is a string; complete_token_ids takes token ids"),
        ([[[5, 6]]], TypeError, "1-D sequence of integer token ids"),
        ([[0.5]], TypeError, "1-D sequence of integer token ids"),
    ],
)
def test_bad_prompts_are_named(llama, prompts, error, match):
    model, _ = llama
    with pytest.raises(error, match=match):
        complete_token_ids(model, prompts, pad_id=0, **KW)


def test_max_new_tokens_must_fit_the_context(llama):
    model, _ = llama
    with pytest.raises(ValueError, match=r"max_new_tokens=128 must be in \[1, 127\]"):
        complete_token_ids(model, [[5]], pad_id=0, max_new_tokens=128)
