"""The plain-text pre-training (LM) stream: `data.lm_*` -> packed, shuffled, resumable batches.

MiniLLM and DistiLLM add a language-modelling loss on plain text to their
distillation losses; `pipeline.make_lm_iterator` is where its batches come from.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from classkd_jax.data import pipeline, synthetic
from classkd_jax.data.sources import DataError

_spec = importlib.util.spec_from_file_location(
    "data_config", Path(__file__).parent.parent / "configs" / "data.py"
)
data_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(data_config)

BATCH_KEYS = {"tokens", "positions", "segment_ids", "targets", "loss_mask"}


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(synthetic.synthetic_tokenizer_path()))


def lm_config(path, **lm):
    """The jsonl data config with `lm_path=path` and `lm_<key>=value` for each of `lm`."""
    cfg = data_config.get_config("source=jsonl")
    with cfg.unlocked():
        cfg.lm_path = str(path)
        for key, value in lm.items():
            cfg[f"lm_{key}"] = value
    return cfg


def lm_iter(cfg, tok, process_index=0, process_count=1):
    return pipeline.make_lm_iterator(
        cfg, tok, process_index=process_index, process_count=process_count
    )


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_records(path, records):
    return write_lines(path, [json.dumps(r) for r in records])


def save_hf(path, columns, split=None):
    import datasets

    ds = datasets.Dataset.from_dict(columns)
    (datasets.DatasetDict({split: ds}) if split else ds).save_to_disk(str(path))
    return path


# ----- config -----


def test_lm_keys_default_to_no_stream():
    cfg = data_config.get_config("source=synthetic")
    assert cfg.lm_path == "" and cfg.lm_source == "auto" and cfg.lm_column == "text"
    assert cfg.lm_split == "train" and cfg.lm_seed == 0
    # 0 = inherit batch_size / max_length; 0 = every document.
    assert cfg.lm_batch_size == cfg.lm_max_length == cfg.lm_max_documents == 0
    with pytest.raises(ValueError, match="data.lm_path is empty"):
        pipeline.make_lm_iterator(cfg, None, process_index=0, process_count=1)


# ----- sources -----


def test_txt_is_one_document_per_non_blank_line(tmp_path):
    path = write_lines(tmp_path / "c.txt", ["the cat sat", "", "  ", "the dog ran"])
    assert pipeline.resolve_lm_source(str(path)) == "text"
    assert pipeline.load_lm_texts(lm_config(path)) == ["the cat sat", "the dog ran"]


def test_jsonl_reads_lm_column(tmp_path):
    path = write_records(tmp_path / "c.jsonl", [{"body": "one", "id": 1}, {"body": "two"}])
    assert pipeline.resolve_lm_source(str(path)) == "text"
    assert pipeline.load_lm_texts(lm_config(path, column="body")) == ["one", "two"]


def test_jsonl_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed JSON"):
        pipeline.load_lm_texts(lm_config(bad))
    missing = write_records(tmp_path / "missing.jsonl", [{"text": "a"}, {"body": "b"}])
    with pytest.raises(DataError, match=r"missing\.jsonl:2: missing column 'text'.*\['body'\]"):
        pipeline.load_lm_texts(lm_config(missing))
    typed = write_records(tmp_path / "typed.jsonl", [{"text": 7}])
    with pytest.raises(DataError, match=r"typed\.jsonl:1: column 'text' should hold text"):
        pipeline.load_lm_texts(lm_config(typed))


def test_directory_reads_txt_and_jsonl_sorted_by_path(tmp_path):
    write_lines(tmp_path / "b.txt", ["from b"])
    write_records(tmp_path / "a.jsonl", [{"text": "from a"}])
    write_lines(tmp_path / "sub" / "c.txt", ["from sub/c"])
    write_lines(tmp_path / "notes.md", ["not read"])
    assert pipeline.resolve_lm_source(str(tmp_path)) == "text"
    assert pipeline.load_lm_texts(lm_config(tmp_path)) == ["from a", "from b", "from sub/c"]


def test_empty_directory_is_an_error_naming_it(tmp_path):
    empty = tmp_path / "corpus"
    empty.mkdir()
    with pytest.raises(DataError, match="corpus.*empty"):
        pipeline.load_lm_texts(lm_config(empty))
    write_lines(empty / "readme.md", ["not a corpus"])
    with pytest.raises(DataError, match=r"corpus.*no \.txt or \.jsonl files"):
        pipeline.load_lm_texts(lm_config(empty, source="text"))


def test_hf_saved_dataset_and_dataset_dict(tmp_path):
    ds = save_hf(tmp_path / "ds", {"text": ["one", "", "two"], "n": [1, 2, 3]})
    assert pipeline.resolve_lm_source(str(ds)) == "hf"
    assert pipeline.load_lm_texts(lm_config(ds)) == ["one", "two"]  # blank rows dropped
    dd = save_hf(tmp_path / "dd", {"content": ["x", "y"]}, split="train")
    assert pipeline.resolve_lm_source(str(dd)) == "hf"
    assert pipeline.load_lm_texts(lm_config(dd, column="content")) == ["x", "y"]
    with pytest.raises(DataError, match=r"no split 'validation'; splits found: \['train'\]"):
        pipeline.load_lm_texts(lm_config(dd, column="content", split="validation"))


def test_hf_missing_column_names_the_columns_found(tmp_path):
    ds = save_hf(tmp_path / "ds", {"content": ["one"], "n": [1]})
    with pytest.raises(
        DataError, match=r"missing column 'text'; columns found: \['content', 'n'\]"
    ):
        pipeline.load_lm_texts(lm_config(ds))


def test_hub_names_go_to_load_dataset(tmp_path):
    assert pipeline.resolve_lm_source("owner/corpus") == "hf"
    # Tests run offline, so the hub load fails, with the config key in the message.
    with pytest.raises(DataError, match=r"data.lm_path='owner/corpus'.*load_dataset"):
        pipeline.load_lm_texts(lm_config("owner/corpus"))


def test_missing_path_is_a_clear_error(tmp_path, tok):
    for path in (tmp_path / "nope.txt", tmp_path / "nope"):
        with pytest.raises(FileNotFoundError, match=r"data.lm_path=.*nope"):
            lm_iter(lm_config(path), tok)
    with pytest.raises(FileNotFoundError, match="data.lm_path"):
        lm_iter(lm_config("corpus", source="text"), tok)
    with pytest.raises(ValueError, match="data.lm_source='web'"):
        lm_iter(lm_config(tmp_path, source="web"), tok)


def test_max_documents_keeps_the_first_n(tmp_path):
    write_lines(tmp_path / "a.txt", ["a0", "a1"])
    write_lines(tmp_path / "b.txt", ["b0", "b1"])
    assert pipeline.load_lm_texts(lm_config(tmp_path, max_documents=3)) == ["a0", "a1", "b0"]
    ds = save_hf(tmp_path / "ds", {"text": ["h0", "h1", "h2"]})
    assert pipeline.load_lm_texts(lm_config(ds, max_documents=2)) == ["h0", "h1"]


def test_empty_corpus_is_a_clear_error(tmp_path, tok):
    path = write_lines(tmp_path / "blank.txt", ["", "   "])
    with pytest.raises(DataError, match=r"blank\.txt.*no non-blank documents"):
        lm_iter(lm_config(path), tok)


# ----- batches -----

DOCS = [f"the {w} ran to {i} far away" for i, w in enumerate(["cat", "dog", "fox"] * 6)]


def _chunks(tok, texts, max_length):
    """Each document's ids + EOS, cut into `max_length` chunks (the expected segments)."""
    out = []
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]
        out += [tuple(ids[s : s + max_length]) for s in range(0, len(ids), max_length)]
    return out


def _segments(batch):
    """The token tuples of each packed document chunk in a batch."""
    out = []
    for tokens, seg in zip(batch["tokens"], batch["segment_ids"], strict=True):
        out += [tuple(tokens[seg == k].tolist()) for k in range(1, seg.max() + 1)]
    return out


def test_batches_are_packed_next_token_rows(tmp_path, tok):
    texts = DOCS + [" ".join(["the long story"] * 12)]  # > 32 tokens: split into chunks
    path = write_lines(tmp_path / "c.txt", texts)
    it = lm_iter(lm_config(path, batch_size=4, max_length=32), tok)
    expected = _chunks(tok, texts, 32)
    assert max(map(len, expected)) == 32 and len(expected) > len(texts)
    pad = tok.pad_token_id
    for _ in range(3):
        b = next(it)
        assert set(b) == BATCH_KEYS
        assert all(v.shape == (4, 32) for v in b.values())
        assert b["loss_mask"].dtype == np.float32 and b["tokens"].dtype == np.int32
        seg = b["segment_ids"]
        # Column t scores tokens[t + 1] only inside one document chunk.
        same = np.zeros_like(seg, bool)
        same[:, :-1] = (seg[:, :-1] > 0) & (seg[:, 1:] == seg[:, :-1])
        np.testing.assert_array_equal(b["loss_mask"], same.astype(np.float32))
        np.testing.assert_array_equal(
            b["targets"][:, :-1][same[:, :-1]], b["tokens"][:, 1:][same[:, :-1]]
        )
        assert (b["targets"][~same] == pad).all() and (b["tokens"][seg == 0] == pad).all()
        for row_pos, row_seg in zip(b["positions"], seg, strict=True):
            for k in range(1, row_seg.max() + 1):
                np.testing.assert_array_equal(
                    row_pos[row_seg == k], np.arange((row_seg == k).sum())
                )
        assert all(s in expected for s in _segments(b))


def test_lm_sizes_default_to_the_instruction_batch(tmp_path, tok):
    path = write_lines(tmp_path / "c.txt", DOCS * 8)
    cfg = lm_config(path)
    with cfg.unlocked():
        cfg.batch_size, cfg.max_length = 2, 48
    assert next(lm_iter(cfg, tok))["tokens"].shape == (2, 48)


def test_state_round_trips(tmp_path, tok):
    path = write_lines(tmp_path / "c.txt", DOCS)
    cfg = lm_config(path, batch_size=4, max_length=24, seed=3)
    it = lm_iter(cfg, tok)
    assert it.batches_in_epoch() < 5  # the five batches cross an epoch boundary
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    expected = [next(it) for _ in range(2)]
    resumed = lm_iter(cfg, tok)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(got[key], want[key])


def test_seed_changes_the_order(tmp_path, tok):
    path = write_lines(tmp_path / "c.txt", DOCS)
    first = [
        next(lm_iter(lm_config(path, batch_size=2, max_length=24, seed=s), tok))["tokens"]
        for s in (0, 1)
    ]
    assert not np.array_equal(*first)


def test_two_processes_read_disjoint_halves_of_each_global_batch(tmp_path, tok):
    path = write_lines(tmp_path / "c.txt", DOCS)  # unique documents, one chunk each
    cfg = lm_config(path, batch_size=4, max_length=24)
    whole = lm_iter(cfg, tok)
    p0, p1 = (lm_iter(cfg, tok, process_index=p, process_count=2) for p in (0, 1))
    seen0, seen1 = [], []
    for _ in range(whole.batches_in_epoch()):
        g, b0, b1 = next(whole), next(p0), next(p1)
        assert b0["tokens"].shape == b1["tokens"].shape == (2, 24)
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(np.concatenate([b0[key], b1[key]]), g[key])
        seen0 += _segments(b0)
        seen1 += _segments(b1)
    assert seen0 and seen1 and not set(seen0) & set(seen1)
