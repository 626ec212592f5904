"""The built-in synthetic task and its shipped tokenizer."""

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
    """The list/date/context an example is about, wherever the phrasing put it."""
    return e.input if e.input else e.instruction.split(": ", 1)[1].rstrip("?")


def test_deterministic_per_seed(task):
    again = synthetic.make_synthetic_task(0, **SIZES)
    assert again == task
    other = synthetic.make_synthetic_task(1, **SIZES)
    assert other["test"] != task["test"]
    # The test split depends only on the seed and its size, not on the others.
    small = synthetic.make_synthetic_task(0, num_train=10, num_dev=5, num_test=600)
    assert small["test"] == task["test"]


def test_splits_do_not_overlap(task):
    def keys(split):
        return {
            (e.category, _data(e), e.instruction if e.category in ("qa", "position") else "")
            for e in task[split]
        }

    test, dev, train = keys("test"), keys("dev"), keys("train")
    assert not test & train and not test & dev and not dev & train
    prompts = {split: {(e.instruction, e.input) for e in task[split]} for split in task}
    assert not prompts["test"] & prompts["train"]
    assert [len(task[s]) for s in ("train", "dev", "test")] == [2000, 100, 600]
    assert len({e.uid for s in task.values() for e in s}) == 2700


def _check_answer(e):
    """An independent solver for each family."""
    data = _data(e)
    words = data.replace(",", "").split()
    if e.category == "reverse":
        return e.response == " ".join(reversed(words))
    if e.category == "position":
        which = re.search(r"the (\w+) word", e.instruction).group(1)
        return e.response == (words[-1] if which == "last" else words[W.ORDINALS.index(which)])
    if e.category == "filter":
        cat = re.search(r"(animals|tools|foods)", e.instruction).group(1)
        return e.response == " ".join(w for w in words if w in W.CATEGORIES[cat])
    if e.category == "format":
        if "/" in data:
            day, month, year = map(int, data.split("/"))
        else:
            (month_name,) = [w for w in words if w in W.MONTHS]
            day, year = sorted(int(w) for w in words if w.isdigit())
            month = W.MONTHS.index(month_name) + 1
        return e.response == f"{year}-{month:02d}-{day:02d}"
    if e.category == "qa":
        name = re.search(r"(?:is|does) (\w+?)(?:'s| live| have|\?| )", e.instruction).group(1)
        fact = next(f for f in e.input.split(". ") if f.startswith(name + " "))
        return e.response in fact
    raise AssertionError(f"unknown family {e.category}")


def test_answers_are_correct_and_varied(task):
    test = task["test"]
    assert all(_check_answer(e) for s in task.values() for e in s)
    families = Counter(e.category for e in test)
    assert set(families) == set(synthetic.FAMILIES)
    assert min(families.values()) > 0.05 * len(test)
    lengths = [len(e.response.split()) for e in test]
    assert min(lengths) == 1 and max(lengths) >= 7
    assert 0.2 < sum(bool(e.input) for e in test) / len(test) < 0.8  # both template variants
    # Answers differ from the data in words or order, never only in case or
    # punctuation, so the case-insensitive metrics see the task.
    norm = lambda s: " ".join(re.sub(r"[^a-z0-9 ]", " ", s.lower()).split())
    assert all(norm(e.response) != norm(_data(e)) for e in test)


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


def test_written_data_dir_round_trips(tmp_path):
    sizes = dict(num_train=30, num_dev=10, num_test=20)
    splits = synthetic.make_synthetic_task(4, **sizes)
    out = synthetic.write_synthetic_data_dir(tmp_path, 4, template="compact", **sizes)
    assert out == tmp_path / "synthetic"
    test = benchmarks.load_eval_set(tmp_path, "synthetic", template="alpaca")
    assert [e.references for e in test] == [[e.response] for e in splits["test"]]
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
