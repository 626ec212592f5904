"""Tokenisation, buckets, masks, packing and the resumable per-host iterator."""

import json

import numpy as np
import pytest

from classkd_jax.data import batching, iterator, synthetic, templates, tokenize
from classkd_jax.data.sources import Example


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(synthetic.synthetic_tokenizer_path()))


@pytest.fixture(scope="module")
def small_data(tok):
    splits = synthetic.make_synthetic_task(3, num_train=120, num_dev=0, num_test=0)
    return tokenize.tokenize_examples(
        splits["train"], tok, template="compact", max_prompt_length=64, max_length=96
    )


def _arr(*xs):
    return np.asarray(xs, np.int32)


def test_pack_rows_hand_derived_alignment():
    rows = [
        [(_arr(5, 6, 7), _arr(8, 2))],
        [(_arr(5), _arr(2))],  # a one-token response
        [(_arr(5, 6), _arr(9, 2)), (_arr(7), _arr(3, 2))],  # two examples packed
        [],  # filler
    ]
    b = batching.pack_rows(rows, 8, pad_id=0)
    np.testing.assert_array_equal(
        b["tokens"],
        [[5, 6, 7, 8, 2, 0, 0, 0], [5, 2, 0, 0, 0, 0, 0, 0], [5, 6, 9, 2, 7, 3, 2, 0], [0] * 8],
    )
    np.testing.assert_array_equal(
        b["segment_ids"],
        [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 2, 2, 2, 0], [0] * 8],
    )
    np.testing.assert_array_equal(
        b["positions"],
        [[0, 1, 2, 3, 4, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0], [0, 1, 2, 3, 0, 1, 2, 0], [0] * 8],
    )
    # logits at t predict tokens[t+1]: mask t where tokens[t+1] is a response token.
    np.testing.assert_array_equal(
        b["loss_mask"],
        [[0, 0, 1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 1, 1, 0, 0], [0] * 8],
    )
    assert b["loss_mask"][1].sum() == 1  # one response token -> exactly one scored position
    np.testing.assert_array_equal(
        b["targets"],
        [[6, 7, 8, 2, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0, 0, 0], [6, 9, 2, 0, 3, 2, 0, 0], [0] * 8],
    )
    assert b["loss_mask"].dtype == np.float32 and b["tokens"].dtype == np.int32


def test_loss_mask_matches_hf_shifted_labels():
    # The Hugging Face convention (ForCausalLMLoss): labels = ids with prompt and
    # pad set to -100; logits[:, t] are scored against labels[:, t + 1].
    rng = np.random.default_rng(0)
    examples = [
        (rng.integers(3, 50, rng.integers(1, 6)), rng.integers(3, 50, rng.integers(1, 5)))
        for _ in range(16)
    ]
    b = batching.pack_rows([[e] for e in examples], 12, pad_id=0)
    labels = np.full((16, 12), -100)
    for i, (p, r) in enumerate(examples):
        labels[i, len(p) : len(p) + len(r)] = r
    scored = labels[:, 1:] != -100
    np.testing.assert_array_equal(b["loss_mask"][:, :-1].astype(bool), scored)
    assert not b["loss_mask"][:, -1].any()
    np.testing.assert_array_equal(b["targets"][:, :-1][scored], labels[:, 1:][scored])
    np.testing.assert_array_equal(b["loss_mask"].sum(1), [len(r) for _, r in examples])


def test_left_pad_prompts_and_buckets():
    b = batching.left_pad_prompts(
        [_arr(4, 5, 6), _arr(7)], 4, pad_id=0, index=[10, 11], batch_size=3
    )
    np.testing.assert_array_equal(b["tokens"], [[0, 4, 5, 6], [0, 0, 0, 7], [0, 0, 0, 0]])
    np.testing.assert_array_equal(b["mask"], [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(b["positions"], [[0, 0, 1, 2], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(b["index"], [10, 11, -1])
    np.testing.assert_array_equal(b["valid"], [1, 1, 0])
    assert batching.pick_bucket(65, (64, 128, 256)) == 128
    assert batching.pick_bucket(64, (256, 64)) == 64
    with pytest.raises(
        ValueError, match=r"length 300 exceeds the largest bucket; buckets: \[64, 256\]"
    ):
        batching.pick_bucket(300, (64, 256))


def test_tokenize_examples_round_trip_and_limits(tok):
    examples = [
        Example("a", "Reverse the order of these words: cat dog", "", ("dog cat",)),
        Example("b", "Answer.", "word " * 80, ("x",)),  # prompt over the limit
        Example("c", "Copy.", "", ("apple " * 90,)),  # response over max_length
    ]
    data = tokenize.tokenize_examples(
        examples, tok, template="alpaca", max_prompt_length=64, max_length=80
    )
    assert list(data.source_index) == [0, 2]
    assert (data.stats.long_prompt_dropped, data.stats.response_truncated) == (1, 1)
    assert tok.decode(data.prompts[0]) == templates.format_prompt(examples[0].instruction)
    assert data.responses[0][-1] == tok.eos_token_id
    assert tok.decode(data.responses[0][:-1]) == "dog cat"
    assert len(data.prompts[1]) + len(data.responses[1]) == 80
    assert data.responses[1][-1] != tok.eos_token_id  # cut responses do not end in EOS

    cut = tokenize.tokenize_examples(
        examples[1:2],
        tok,
        template="compact",
        max_prompt_length=16,
        max_length=32,
        long_prompts="truncate",
    )
    assert cut.stats.long_prompt_truncated == 1 and len(cut.prompts[0]) == 16
    assert tok.decode(cut.prompts[0]).endswith("### Response:\n")

    prompts = tokenize.tokenize_prompts(
        ["hello there", "x" * 200], tok, max_prompt_length=8, add_bos=True
    )
    assert prompts.prompts[0][0] == tok.bos_token_id and len(prompts.prompts[1]) == 8

    class NoPad:
        eos_token_id, pad_token_id = 7, None

    assert tokenize.special_ids(NoPad()) == (7, 7)


def test_full_batch_scores_exactly_the_response(tok, small_data):
    it = iterator.BatchIterator(
        small_data,
        kind="paired",
        global_batch_size=4,
        length_buckets=(32, 64, 96),
        prompt_buckets=(32, 64),
        process_index=0,
        process_count=1,
    )
    b = next(it)
    assert b["tokens"].shape[1] in (32, 64, 96) and b["prompt_tokens"].shape[1] in (32, 64)
    for row, idx in enumerate(b["index"]):
        scored = b["targets"][row][b["loss_mask"][row] > 0]
        np.testing.assert_array_equal(scored, small_data.responses[idx])
        p = small_data.prompts[idx]
        np.testing.assert_array_equal(b["prompt_tokens"][row, -len(p) :], p)
        np.testing.assert_array_equal(b["tokens"][row, : len(p)], p)


def _take(it, n):
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("pack", [False, True])
def test_iterator_resume_gives_the_same_next_batches(small_data, pack):
    kw = dict(
        kind="full",
        global_batch_size=8,
        seed=5,
        pack=pack,
        length_buckets=(64, 96, 192),
        process_index=0,
        process_count=1,
    )
    straight = iterator.BatchIterator(small_data, **kw)
    n = straight.batches_in_epoch()
    expected = _take(straight, n + 3)  # crosses an epoch boundary
    first = iterator.BatchIterator(small_data, **kw)
    _take(first, n - 1)
    state = json.loads(json.dumps(first.get_state()))
    resumed = iterator.BatchIterator(small_data, **kw)
    resumed.set_state(state)
    for want, got in zip(expected[n - 1 :], _take(resumed, 4), strict=True):
        assert want.keys() == got.keys()
        for k in want:
            np.testing.assert_array_equal(want[k], got[k])
    # Different epochs shuffle differently; the seed is the only randomness.
    assert not np.array_equal(expected[0]["tokens"], expected[n]["tokens"])
    other = iterator.BatchIterator(small_data, **dict(kw, seed=6))
    with pytest.raises(ValueError, match=r"does not match this data.*'seed': \(5, 6\)"):
        other.set_state(state)


def test_packing_fills_rows(small_data):
    it = iterator.BatchIterator(
        small_data,
        kind="full",
        global_batch_size=4,
        pack=True,
        length_buckets=(192,),
        process_index=0,
        process_count=1,
        num_epochs=1,
    )
    seen = []
    for b in it:
        assert b["tokens"].shape == (4, 192)
        assert (b["segment_ids"].max(1) >= 2).all()  # several examples per row
        seen.append(b["loss_mask"].sum())
    # Every kept row holds whole examples: scored tokens = their response tokens.
    assert sum(seen) <= sum(len(r) for r in small_data.responses)
    assert sum(seen) > 0.8 * sum(len(r) for r in small_data.responses)


def test_per_host_sharding_covers_the_data_once(small_data):
    kw = dict(kind="prompt", global_batch_size=8, seed=1, prompt_buckets=(32, 64), num_epochs=1)
    single = list(iterator.BatchIterator(small_data, process_index=0, process_count=1, **kw))
    hosts = [
        list(iterator.BatchIterator(small_data, process_index=p, process_count=2, **kw))
        for p in (0, 1)
    ]
    seen = []
    for g, h0, h1 in zip(single, *hosts, strict=True):
        assert h0["tokens"].shape == h1["tokens"].shape == (4, g["tokens"].shape[1])
        for k in g:  # host slices concatenate to the single-process global batch
            np.testing.assert_array_equal(np.concatenate([h0[k], h1[k]]), g[k])
        seen += list(h0["index"]) + list(h1["index"])
    n_used = len(small_data) // 8 * 8  # drop_remainder
    assert len(seen) == len(set(seen)) == n_used

    # Evaluation: every example exactly once, the last batch completed by filler rows.
    ev = dict(
        kind="prompt",
        global_batch_size=16,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
        prompt_buckets=(64,),
    )
    idx, valid = [], []
    for p in (0, 1):
        for b in iterator.BatchIterator(small_data, process_index=p, process_count=2, **ev):
            idx += list(b["index"])
            valid += list(b["valid"])
    real = sorted(i for i, v in zip(idx, valid, strict=True) if v)
    assert real == list(range(len(small_data)))
    assert len(idx) % 16 == 0


def test_iterator_errors_name_the_problem(small_data):
    with pytest.raises(
        ValueError, match="global_batch_size 6 must be a positive multiple of the process count 4"
    ):
        iterator.BatchIterator(small_data, global_batch_size=6, process_index=0, process_count=4)
    with pytest.raises(
        ValueError, match=r"example \d+ length \d+ exceeds the largest bucket; buckets: \[16\]"
    ):
        iterator.BatchIterator(
            small_data, global_batch_size=2, length_buckets=(16,), process_index=0, process_count=1
        )
    with pytest.raises(ValueError, match="pack=True needs kind='full'"):
        iterator.BatchIterator(
            small_data,
            kind="paired",
            global_batch_size=2,
            pack=True,
            process_index=0,
            process_count=1,
        )


def test_lm_text_stream(tok):
    texts = ["the cat sat on the mat " * 6, "a short one"]
    data = tokenize.tokenize_texts(texts, tok, max_length=16)
    assert data.stats.documents_split == 1
    assert all(len(p) == 0 for p in data.prompts)
    n_tokens = sum(len(r) for r in data.responses)
    it = iterator.BatchIterator(
        data,
        kind="full",
        global_batch_size=2,
        pack=True,
        length_buckets=(32,),
        process_index=0,
        process_count=1,
        num_epochs=1,
        drop_remainder=False,
        shuffle=False,
    )
    batches = list(it)
    # Every token after the first of each chunk is a target.
    assert sum(b["loss_mask"].sum() for b in batches) == n_tokens - len(data)
