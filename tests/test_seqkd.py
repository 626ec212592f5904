"""`teacher_dataset`: SeqKD's training set, the teacher's completions, generated once and cached."""

import shutil

import numpy as np
import pytest

from classkd_jax.cli import UserError
from classkd_jax.data.tokenize import TokenizedData, TokenizeStats
from classkd_jax.sampling import complete_token_ids
from classkd_jax.training import seqkd

EOS, PAD = 2, 0
FINGERPRINT = {"teacher": "tiny-llama", "data": "random-10"}
# 10 prompts in parts of 4 (4, 4, 2), two prompts per sampler call; the longest
# prompts leave less room than max_new_tokens, so some completions are cut.
KW = dict(
    max_new_tokens=8, temperature=1.0, top_k=0, top_p=1.0, greedy=False, seed=7,
    batch_size=2, eos_id=EOS, pad_id=PAD, max_length=14, chunk_prompts=4,
)  # fmt: skip


def _data(prompts) -> TokenizedData:
    n = len(prompts)
    return TokenizedData(
        prompts=[np.asarray(p, np.int32) for p in prompts],
        responses=[np.array([9, EOS], np.int32)] * n,  # the dataset's, to be replaced
        source_index=np.arange(n) * 3,
        pad_id=PAD,
        stats=TokenizeStats(examples=n, kept=n),
    )


def _random_prompts(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(4, 256, size=rng.integers(3, 10)) for _ in range(n)]


def _counting(monkeypatch, calls):
    """Replaces the module's `complete_token_ids` by one that records each call's prompts."""
    real = seqkd.complete_token_ids

    def counted(model, prompts, **kw):
        calls.append([list(p) for p in prompts])
        return real(model, prompts, **kw)

    monkeypatch.setattr(seqkd, "complete_token_ids", counted)


def _responses(data):
    return [r.tolist() for r in data.responses]


@pytest.fixture(scope="module")
def generated(tiny_model, tmp_path_factory):
    """One uninterrupted sampled generation: (train, result, cache dir, calls made)."""
    train, cache, calls = _data(_random_prompts()), tmp_path_factory.mktemp("seqkd"), []
    with pytest.MonkeyPatch.context() as mp:
        _counting(mp, calls)
        out = seqkd.teacher_dataset(
            train, tiny_model("llama"), cache_dir=cache, fingerprint=FINGERPRINT, **KW
        )
    return train, out, cache, calls


@pytest.fixture
def cache_copy(generated, tmp_path):
    """A private copy of the generated cache, to delete or rewrite parts of."""
    return shutil.copytree(generated[2], tmp_path / "seqkd")


def test_responses_are_the_teachers_ending_with_eos_within_max_length(generated):
    train, out, cache, calls = generated
    assert len(out) == len(train) == 10
    assert all(np.array_equal(a, b) for a, b in zip(out.prompts, train.prompts, strict=True))
    np.testing.assert_array_equal(out.source_index, train.source_index)
    for p, r in zip(out.prompts, out.responses, strict=True):
        assert r.dtype == np.int32 and len(r) >= 1 and len(p) + len(r) <= KW["max_length"]
        assert r[-1] == EOS and EOS not in r[:-1]
    assert out.stats.response_truncated > 0  # some prompts leave < max_new_tokens of room
    assert len(calls) == 3  # one sampler call per part
    assert sorted(p.name for p in cache.iterdir()) == [
        "fingerprint.json",
        "part-00000.npz",
        "part-00001.npz",
        "part-00002.npz",
    ]


def test_a_second_call_reuses_the_cache_and_generates_nothing(
    generated, cache_copy, tiny_model, monkeypatch
):
    train, first, _, _ = generated
    calls, messages = [], []
    _counting(monkeypatch, calls)
    again = seqkd.teacher_dataset(
        train, tiny_model("llama"), cache_dir=cache_copy, fingerprint=FINGERPRINT,
        message=messages.append, **KW,
    )  # fmt: skip
    assert calls == []
    assert _responses(again) == _responses(first)
    assert messages == [f"reusing 3 of 3 parts from {cache_copy}"]


def test_a_missing_part_is_regenerated_alone_and_equals_the_uninterrupted_run(
    generated, cache_copy, tiny_model, monkeypatch
):
    train, first, _, _ = generated
    (cache_copy / "part-00001.npz").unlink()  # as if preempted while generating part 1
    calls = []
    _counting(monkeypatch, calls)
    resumed = seqkd.teacher_dataset(
        train, tiny_model("llama"), cache_dir=cache_copy, fingerprint=FINGERPRINT,
        message=lambda _: None, **KW,
    )  # fmt: skip
    assert calls == [[p.tolist() for p in train.prompts[4:8]]]
    assert _responses(resumed) == _responses(first)
    assert (cache_copy / "part-00001.npz").exists()


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(fingerprint={**FINGERPRINT, "teacher": "other"}), "fingerprint.teacher"),
        (dict(fingerprint={"teacher": "tiny-llama"}), "fingerprint.data"),
        (dict(temperature=0.5), "generation.temperature"),
        (dict(chunk_prompts=5), "generation.chunk_prompts"),
    ],
)
def test_a_cache_made_with_other_settings_is_a_user_error(generated, cache_copy, change, key):
    train = generated[0]
    kw = {**KW, "fingerprint": FINGERPRINT, **change}
    with pytest.raises(UserError, match=rf"\({key} differ\); delete .*or use another workdir"):
        seqkd.teacher_dataset(train, None, cache_dir=cache_copy, **kw)


def test_greedy_responses_are_the_teachers_greedy_continuations(tiny_model, tmp_path):
    model = tiny_model("llama")
    prompts = _random_prompts(seed=1)
    free = complete_token_ids(model, prompts[:1], max_new_tokens=8, greedy=True, pad_id=PAD)
    eos = free[0][2]  # a token the teacher does produce, so some rows stop early
    kw = {**KW, "greedy": True, "eos_id": eos}
    out = seqkd.teacher_dataset(
        _data(prompts), model, cache_dir=tmp_path, fingerprint={}, message=lambda _: None, **kw
    )
    reference = complete_token_ids(
        model, prompts, max_new_tokens=8, greedy=True, batch_size=2, pad_id=PAD, eos_ids=eos
    )
    expected = []
    for p, c in zip(prompts, reference, strict=True):
        body = c[:-1] if c and c[-1] == eos else c
        expected.append(body[: KW["max_length"] - len(p) - 1] + [eos])
    assert _responses(out) == expected
    assert any(len(c) < 8 for c in reference)  # the EOS did stop some rows


def test_completions_are_fitted_ending_with_a_single_eos(tmp_path, monkeypatch):
    """Empty -> [EOS]; EOS kept; out of budget -> EOS appended; too long -> cut, EOS last."""
    canned = [[], [5, EOS], [5, 6, 7], list(range(10, 30))]
    monkeypatch.setattr(seqkd, "complete_token_ids", lambda model, prompts, **kw: canned)
    train = _data([[4, 4, 4]] * 4)
    out = seqkd.teacher_dataset(
        train, None, cache_dir=tmp_path, fingerprint={}, message=lambda _: None,
        **{**KW, "max_length": 8},
    )  # fmt: skip
    assert _responses(out) == [[EOS], [5, EOS], [5, 6, 7, EOS], [10, 11, 12, 13, EOS]]
    assert out.stats.response_truncated == 1


def test_a_part_with_the_wrong_prompt_count_is_a_corrupt_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(
        seqkd, "complete_token_ids", lambda model, prompts, **kw: [[5, EOS]] * len(prompts)
    )
    train = _data([[4, 4, 4]] * 6)  # parts of 4 and 2 prompts
    run = lambda: seqkd.teacher_dataset(
        train, None, cache_dir=tmp_path, fingerprint={}, message=lambda _: None, **KW
    )
    run()
    shutil.copy(tmp_path / "part-00000.npz", tmp_path / "part-00001.npz")
    with pytest.raises(UserError, match="part-00001.npz: corrupt .*holds 4 prompts, expected 2"):
        run()


def test_prompts_with_no_room_for_a_response_are_named(tmp_path):
    train = _data([[4] * 3, [4] * 14])
    with pytest.raises(ValueError, match="prompt 1 has 14 tokens, .*max_length=14"):
        seqkd.teacher_dataset(train, None, cache_dir=tmp_path, fingerprint={}, **KW)


def test_the_cache_is_shared_by_seeds_only_when_the_teacher_is_loaded():
    """A comparison's seeds share one generation (the answers are drawn with seqkd.seed),
    unless the seed makes the teacher itself (random init)."""
    from pathlib import Path

    import numpy as np

    from classkd_jax.config_utils import import_sibling
    from classkd_jax.training.roles import RoleSource
    from classkd_jax.training.run import seqkd_fingerprint

    demo = import_sibling(str(Path(__file__).resolve().parents[1] / "configs" / "demo.py"), "demo")
    prompts = [np.arange(5), np.arange(3)]

    def fingerprint(seed, kind):
        config = demo.get_config("method=seqkd")
        with config.unlocked():
            config.seed = config.data.seed = seed
        teacher = RoleSource("teacher", kind, "/models/t" if kind == "hf" else "", None)
        return seqkd_fingerprint(config, teacher, range(512), prompts)

    assert fingerprint(0, "hf") == fingerprint(1, "hf")
    assert fingerprint(0, "random") != fingerprint(1, "random")
    assert fingerprint(0, "hf") != seqkd_fingerprint(
        demo.get_config("method=seqkd"), RoleSource("teacher", "hf", "/models/t", None),
        range(512), prompts[:1],
    )  # fmt: skip
