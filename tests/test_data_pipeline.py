"""configs/data.py and the config -> iterator pipeline."""

import importlib.util
import json
import logging
from pathlib import Path

import pytest

from classkd_jax.data import pipeline, synthetic

_spec = importlib.util.spec_from_file_location(
    "data_config", Path(__file__).parent.parent / "configs" / "data.py"
)
data_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(data_config)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(synthetic.synthetic_tokenizer_path()))


@pytest.mark.parametrize("source", data_config.SOURCES)
def test_config_builds_and_locks(source):
    cfg = data_config.get_config(f"source={source}")
    with pytest.raises(AttributeError):
        cfg.not_a_field = 1
    assert cfg.source in pipeline.SOURCES
    assert cfg.max_prompt_length < cfg.max_length <= max(cfg.length_buckets)
    assert cfg.max_prompt_length <= max(cfg.prompt_buckets)
    with pytest.raises(ValueError, match="source='nope'"):
        data_config.get_config("source=nope")


def test_synthetic_config_to_batches(tok):
    cfg = data_config.get_config("source=synthetic")
    with cfg.unlocked():
        cfg.synthetic.num_train, cfg.synthetic.num_dev, cfg.synthetic.num_test = 200, 30, 10
    train = pipeline.make_iterator(
        cfg, tok, "train", process_index=0, process_count=1, global_batch_size=4
    )
    b = next(train)
    assert b["tokens"].shape[0] == 4 and b["segment_ids"].max() > 1  # packed
    dev = pipeline.make_iterator(cfg, tok, "dev", kind="prompt", process_index=0, process_count=1)
    idx = [i for batch in dev for i, v in zip(batch["index"], batch["valid"], strict=True) if v]
    assert sorted(idx) == list(range(30))


def test_jsonl_config_dev_split_and_lm_stream(tmp_path, tok, caplog):
    rows = [{"instruction": f"say {i}", "context": "", "response": f"word {i}"} for i in range(12)]
    rows.append({"instruction": "say nothing", "context": "", "response": ""})  # dropped, counted
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = tmp_path / "t.txt"
    text.write_text("the cat sat\n\nthe dog ran far away\n")
    cfg = data_config.get_config("source=jsonl")
    with cfg.unlocked():
        cfg.path, cfg.dev_num, cfg.lm_path = str(path), 4, str(text)
    assert [e.instruction for e in pipeline.load_split(cfg, "dev")] == [
        f"say {i}" for i in range(4)
    ]
    assert len(pipeline.load_split(cfg, "train")) == 8
    with pytest.raises(ValueError, match="has no test split"):
        pipeline.load_split(cfg, "test")
    it = pipeline.make_iterator(cfg, tok, "train", kind="paired", process_index=0, process_count=1)
    with caplog.at_level(logging.INFO, logger="classkd_jax.data.iterator"):
        b = next(it)
    assert b["tokens"].shape == (8, 128) and b["prompt_tokens"].shape == (8, 64)
    assert it.data.stats.empty_response_dropped == 1
    assert "epoch 0, 8/8 examples kept (1 with an empty response dropped before)" in caplog.text
    lm = pipeline.make_lm_iterator(cfg, tok, process_index=0, process_count=1)
    assert lm.get_state()["num_examples"] == 2
    with cfg.unlocked():
        cfg.batch_size = 1  # both documents pack into one row
    lb = next(pipeline.make_lm_iterator(cfg, tok, process_index=0, process_count=1))
    n = sum(len(tok(t).input_ids) + 1 for t in ["the cat sat", "the dog ran far away"])
    assert lb["loss_mask"].sum() == n - 2 and lb["segment_ids"].max() == 2
