"""The built-in synthetic task and its shipped tokenizers."""

import json
import re
from collections import Counter

import pytest

from classkd_jax.data import benchmarks, build_tokenizer, sources, synthetic, templates
from classkd_jax.data import synthetic_words as W

SIZES = dict(num_train=2000, num_dev=100, num_test=600)


@pytest.fixture(scope="module")
def task():
    return synthetic.make_synthetic_task(0, **SIZES)


def _data(e):
    """The list/passage an example is about, wherever the phrasing put it."""
    return e.input if e.input else e.instruction.split(": ", 1)[1].rstrip("?")


def test_deterministic_per_seed(task):
    again = synthetic.make_synthetic_task(0, **SIZES)
    assert again == task
    other = synthetic.make_synthetic_task(1, **SIZES)
    assert other["test"] != task["test"]
    # The test split depends only on the seed and its size, not on the others.
    small = synthetic.make_synthetic_task(0, num_train=10, num_dev=5, num_test=600)
    assert small["test"] == task["test"]
    # A smaller train split is a prefix of a larger one: the distillation set is
    # the first examples of the teacher's data.
    prefix = synthetic.make_synthetic_task(0, num_train=300, num_dev=100, num_test=600)
    assert prefix["train"] == task["train"][:300]


def test_splits_do_not_overlap(task):
    def keys(split):
        return {(e.category, _data(e), e.instruction) for e in task[split]}

    test, dev, train = keys("test"), keys("dev"), keys("train")
    assert not test & train and not test & dev and not dev & train
    prompts = {split: {(e.instruction, e.input) for e in task[split]} for split in task}
    assert not prompts["test"] & prompts["train"]
    assert [len(task[s]) for s in ("train", "dev", "test")] == [2000, 100, 600]
    assert len({e.uid for s in task.values() for e in s}) == 2700


def _norm(text):
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def _facts(passage):
    """name -> set of clauses ('is 34 years old', ...) read from a passage."""
    out = {}
    for sentence in passage.rstrip(".").split(". "):
        name, clause = sentence.split(" ", 1)
        out.setdefault(name, set()).add(_norm(clause))
    return out


def _valid(e, response):
    """An independent solver: is `response` one of the correct answers to `e`?"""
    data, got = _data(e), _norm(response)
    words = data.split()
    if e.category == "reverse":
        return got.removeprefix("from last to first ") == " ".join(reversed(words))
    if e.category == "position":
        which = re.search(r"the (\w+) word", e.instruction).group(1)
        word = words[-1] if which == "last" else words[W.ORDINALS.index(which)]
        return got in (word, f"the {which} word is {word}")
    if e.category == "filter":
        cat = re.search(r"(animals|tools|foods)", e.instruction).group(1)
        items = got.removeprefix(f"the {cat} are ").replace(" and ", " ")
        return items == " ".join(w for w in words if w in W.CATEGORIES[cat])
    facts = _facts(e.input)
    if e.category == "describe":
        name = re.search(r"(?:Describe|about) (\w+)", e.instruction).group(1)
        said = re.split(r"\. |, | and ", response.rstrip("."))
        return sorted(_norm(c.removeprefix(name + " ")) for c in said) == sorted(facts[name])
    if e.category == "qa":
        name = re.search(r"(?:is|does) (\w+?)(?:'s| live| have|\?| )", e.instruction).group(1)
        return any(
            got.removeprefix(_norm(name)).strip() in (c, c.split(" ", 1)[-1])
            or got.split()[-1] in c.split()
            for c in facts[name]
        )
    raise AssertionError(f"unknown family {e.category}")


def test_dev_and_test_keep_every_valid_answer(task):
    for e in task["dev"] + task["test"]:
        assert all(_valid(e, r) for r in e.responses), e
        assert len(set(e.responses)) == len(e.responses) >= 2
    describe = [e for e in task["test"] if e.category == "describe"]
    assert max(len(e.responses) for e in describe) == 12  # 3 clauses x 3! orders x 2 styles


def test_train_references_are_one_form_and_sometimes_wrong(task):
    train = task["train"]
    assert all(len(e.responses) == 1 for e in train)
    wrong = sum(not _valid(e, e.response) for e in train) / len(train)
    assert abs(wrong - synthetic.DEFAULT_NOISE) < 0.04, wrong
    clean = synthetic.make_synthetic_task(0, num_train=500, num_dev=0, num_test=0, noise=0.0)
    assert all(_valid(e, e.response) for e in clean["train"])
    # Stylistically arbitrary: the same family answers in several forms.
    reverse = [e.response for e in train if e.category == "reverse"]
    assert sum(r.startswith("From last to first") for r in reverse) > 0.2 * len(reverse)
    assert sum("," not in r for r in reverse) > 0.2 * len(reverse)


def test_families_are_varied_and_long_enough(task):
    test = task["test"]
    families = Counter(e.category for e in test)
    assert set(families) == set(synthetic.FAMILIES)
    assert min(families.values()) > 0.05 * len(test)
    lengths = [len(r.split()) for e in test for r in e.responses]
    assert min(lengths) == 1 and max(lengths) >= 15
    assert 0.2 < sum(bool(e.input) for e in test) / len(test) < 0.8  # both template variants
    # Answers differ from the data in words or order, never only in case or
    # punctuation, so the case-insensitive metrics see the task.
    assert all(_norm(r) != _norm(_data(e)) for e in test for r in e.responses)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="noise"):
        synthetic.make_synthetic_task(0, noise=1.0)
    with pytest.raises(ValueError, match="unknown synthetic family"):
        synthetic.make_synthetic_task(0, weights={"sort": 1.0})


def test_shipped_tokenizer(task):
    from transformers import AutoTokenizer

    path = synthetic.synthetic_tokenizer_path()
    tok = AutoTokenizer.from_pretrained(str(path))
    assert len(tok) == build_tokenizer.DEFAULT_VOCAB_SIZE == 512
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert not [t for t in tok.get_vocab() if sum(c.isdigit() for c in t) > 1]
    assert (
        tok("1974-10-08", add_special_tokens=False).input_ids
        == tok("1 9 7 4 - 1 0 - 0 8".replace(" ", ""), add_special_tokens=False).input_ids
    )
    for e in task["test"][:50]:
        text = templates.format_prompt(e.instruction, e.input) + e.response
        assert tok.decode(tok(text).input_ids) == text
    assert tok.decode(tok("Ünïcode ✓").input_ids) == "Ünïcode ✓"  # byte-level: no unknowns


@pytest.mark.slow
def test_shipped_tokenizer_is_reproducible():
    path = synthetic.synthetic_tokenizer_path()
    rebuilt = build_tokenizer.train_tokenizer(build_tokenizer.DEFAULT_VOCAB_SIZE)
    shipped = json.loads((path / "tokenizer.json").read_text())
    assert json.loads(rebuilt.to_str())["model"]["vocab"] == shipped["model"]["vocab"]
    assert json.loads(rebuilt.to_str())["model"]["merges"] == shipped["model"]["merges"]


def _boundaries(tok, text: str) -> set[int]:
    return {end for _, end in tok(text, return_offsets_mapping=True).offset_mapping}


def test_second_tokenizer_spells_the_task_apart_from_the_first(task):
    """The cross-tokenizer testbed's tokenizer: same special ids, its own vocabulary,
    token boundaries that cross the first one's (not just coarser), byte fallback
    for what it lacks, and any text round-trips."""
    from transformers import AutoTokenizer

    sp = AutoTokenizer.from_pretrained(str(build_tokenizer.SP_OUT))
    bl = AutoTokenizer.from_pretrained(str(synthetic.synthetic_tokenizer_path()))
    assert len(sp) == build_tokenizer.SP_VOCAB_SIZE == 768
    assert (sp.pad_token_id, sp.bos_token_id, sp.eos_token_id) == (0, 1, 2)
    assert sp.convert_ids_to_tokens([3, 258]) == ["<0x00>", "<0xFF>"]
    assert set(sp.all_special_tokens) == {"<pad>", "<bos>", "<eos>"}  # bytes: plain pieces
    spaced = {t.replace("▁", " ") for t in sp.get_vocab()}
    assert len(spaced & {t.replace("Ġ", " ") for t in bl.get_vocab()}) < 0.6 * len(spaced)
    own = shared = 0
    for e in task["test"][:100]:
        prompt = templates.format_prompt(e.instruction, e.input)
        ids = sp(prompt).input_ids + sp(e.response).input_ids  # encoded apart, joined
        assert sp.decode(ids) == prompt + e.response
        mine = _boundaries(sp, e.response)
        own, shared = own + len(mine), shared + len(mine & _boundaries(bl, e.response))
    assert shared < 0.8 * own, (shared, own)  # many boundaries the BPE does not have
    text = "Ünïcode ✓ 1974"
    ids = sp(text).input_ids
    assert sp.decode(ids) == text and "<0xE2>" in sp.convert_ids_to_tokens(ids)


def test_third_tokenizer_shares_every_word_boundary_and_cuts_inside_words(task):
    """`sentencepiece_words`: the second one with whitespace a boundary, as real
    SentencePiece families are. Every place the byte-level BPE starts a word with
    its space is a boundary of it too, and on this corpus so is every other cut
    it makes: its merges extend the BPE's, so each of its tokens is a run of
    whole byte-level tokens (a coarser teacher, as a 150k-entry teacher is to a
    32k-entry student)."""
    from transformers import AutoTokenizer

    spw = AutoTokenizer.from_pretrained(str(build_tokenizer.SPW_OUT))
    bl = AutoTokenizer.from_pretrained(str(synthetic.synthetic_tokenizer_path()))
    assert len(spw) == build_tokenizer.SP_VOCAB_SIZE and spw.eos_token_id == 2
    assert all(" " not in t.replace("▁", " ", 1)[1:] for t in spw.get_vocab())  # no inner space
    own = shared = 0
    for e in task["test"][:100]:
        ids = spw(e.response).input_ids
        assert spw.decode(ids) == e.response
        spaces = {i for i, ch in enumerate(e.response) if ch == " "}
        mine, theirs = _boundaries(spw, e.response), _boundaries(bl, e.response)
        assert spaces <= mine and spaces <= theirs, e.response
        assert mine <= theirs, e.response
        own, shared = own + len(mine), shared + len(theirs)
    assert shared > 1.2 * own, (shared, own)  # coarser: fewer cuts


@pytest.mark.slow
@pytest.mark.parametrize("words", [False, True], ids=["sentencepiece", "sentencepiece_words"])
def test_second_and_third_tokenizers_are_reproducible(words):
    rebuilt = json.loads(build_tokenizer.train_sentencepiece(split_words=words).to_str())
    out = build_tokenizer.SPW_OUT if words else build_tokenizer.SP_OUT
    shipped = json.loads((out / "tokenizer.json").read_text())
    assert rebuilt["model"] == shipped["model"]


def test_written_data_dir_round_trips(tmp_path):
    sizes = dict(num_train=30, num_dev=10, num_test=20)
    splits = synthetic.make_synthetic_task(4, **sizes)
    out = synthetic.write_synthetic_data_dir(tmp_path, 4, template="compact", **sizes)
    assert out == tmp_path / "synthetic"
    test = benchmarks.load_eval_set(tmp_path, "synthetic", template="alpaca")
    assert [e.references for e in test] == [list(e.responses) for e in splits["test"]]
    assert test[3].prompt == templates.format_prompt(
        splits["test"][3].instruction, splits["test"][3].input
    )
    stored = benchmarks.load_eval_set(tmp_path, "synthetic", template="file")
    assert stored[3].prompt == templates.format_prompt(
        splits["test"][3].instruction, splits["test"][3].input, "compact"
    )
    dev = benchmarks.load_eval_set(tmp_path, "synthetic", "dev")
    assert [e.instruction for e in dev] == [e.instruction for e in splits["dev"]]
    train = benchmarks.load_examples(tmp_path, "synthetic", "train")
    assert train == splits["train"]  # same uids, fields and family categories
    dolly = sources.load_jsonl(out / "dolly_train.jsonl")
    assert [(e.instruction, e.input, e.response, e.category) for e in dolly] == [
        (e.instruction, e.input, e.response, e.category) for e in splits["train"]
    ]
    assert json.loads((out / "meta.json").read_text())["dev_num"] == 10


def test_make_synthetic_cli(tmp_path, capsys):
    from classkd_jax.data import make_synthetic

    make_synthetic.main(
        ["--out", str(tmp_path), "--num_train", "5", "--num_dev", "2", "--num_test", "3"]
    )
    assert "wrote" in capsys.readouterr().out
    meta = json.loads((tmp_path / "synthetic" / "meta.json").read_text())
    assert meta["sizes"] == {"train": 5, "dev": 2, "test": 3}
    assert meta["template"] == synthetic.DEFAULT_TEMPLATE == "compact"
    (first,) = benchmarks.load_eval_set(tmp_path, "synthetic", template="file", max_examples=1)
    assert first.prompt.startswith("### Instruction:\n")
