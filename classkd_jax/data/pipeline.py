"""From a data config (`configs/data.py`) to examples and batch iterators.

    cfg = configs.data.get_config("source=synthetic")
    train = pipeline.make_iterator(cfg, tokenizer, "train", kind="full")
    prompts = pipeline.make_iterator(cfg, tokenizer, "train", kind="prompt")
    dev = pipeline.make_iterator(cfg, tokenizer, "dev", kind="full")  # one pass, in order

Sources (`cfg.source`): 'synthetic' (generated in memory from `cfg.synthetic`),
'benchmark' (a set of the MiniLLM layout under `cfg.data_dir`, e.g. Dolly's
`raw.jsonl` with its first 1000 lines as dev), 'jsonl', 'hf', 'tfds' (`cfg.path`;
dev from `cfg.dev_path`, or the first `cfg.dev_num` training examples).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from classkd_jax.data import benchmarks, iterator, sources, synthetic, tokenize

SOURCES = ("synthetic", "benchmark", "jsonl", "hf", "tfds")
_log = logging.getLogger(__name__)


def _columns(cfg) -> dict[str, str] | None:
    cols = {k: v for k, v in dict(cfg.get("columns") or {}).items() if v}
    return cols or None


def _load_path(cfg, path: str, split: str, stats: sources.SourceStats) -> list[sources.Example]:
    if cfg.source == "jsonl":
        return sources.load_jsonl(path, columns=_columns(cfg), stats=stats)
    if cfg.source == "hf":
        return sources.load_hf_dataset(path, split=split, columns=_columns(cfg), stats=stats)
    return sources.load_tfds(
        path,
        split=split,
        data_dir=cfg.get("tfds_data_dir") or None,
        columns=_columns(cfg),
        stats=stats,
    )


def load_split(cfg, split: str, stats: sources.SourceStats | None = None) -> list[sources.Example]:
    """The examples of `split` ('train', 'dev' or, for synthetic/benchmark, 'test').

    `stats` (filled in place) counts rows read and empty responses dropped.
    """
    stats = stats if stats is not None else sources.SourceStats()
    if cfg.source not in SOURCES:
        raise ValueError(f"data.source={cfg.source!r}; expected one of {SOURCES}")
    if split not in ("train", "dev", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train', 'dev' or 'test'")
    if cfg.source == "synthetic":
        s = cfg.synthetic
        task = synthetic.make_synthetic_task(
            s.seed, num_train=s.num_train, num_dev=s.num_dev, num_test=s.num_test
        )
        return task[split]
    if cfg.source == "benchmark":
        if not cfg.data_dir:
            raise ValueError("data.source='benchmark' needs data.data_dir")
        return benchmarks.load_examples(cfg.data_dir, cfg.name, split, stats=stats)
    if not cfg.path:
        raise ValueError(f"data.source={cfg.source!r} needs data.path")
    if split == "test":
        raise ValueError(
            f"data.source={cfg.source!r} has no test split; evaluate with load_eval_set"
        )
    if split == "dev" and cfg.dev_path:
        examples = _load_path(cfg, cfg.dev_path, cfg.get("dev_split", "validation"), stats)
    else:
        examples = _load_path(cfg, cfg.path, cfg.get("train_split", "train"), stats)
        if not cfg.dev_path:  # the first dev_num examples are dev, as in MiniLLM
            dev, train = sources.split_head(examples, cfg.dev_num)
            if split == "train" and not train:
                raise sources.DataError(
                    f"{cfg.path} has {len(examples)} examples and the first data.dev_num="
                    f"{cfg.dev_num} of them are the dev split, which leaves none to train on; "
                    "lower data.dev_num or give data.dev_path"
                )
            examples = dev if split == "dev" else train
    _log.info(stats.summary(f"{cfg.source}:{cfg.path}[{split}]"))
    return examples


def tokenize_split(cfg, tokenizer: Any, split: str) -> tokenize.TokenizedData:
    """Loads and tokenises `split` with the config's template and limits."""
    source_stats = sources.SourceStats()
    data = tokenize_examples_for(cfg, tokenizer, load_split(cfg, split, source_stats))
    data.stats.empty_response_dropped = source_stats.empty_response
    _log.info("%s/%s: %s", cfg.source, split, data.stats.summary())
    return data


def tokenize_examples_for(cfg, tokenizer: Any, examples) -> tokenize.TokenizedData:
    """Tokenises `examples` with the config's template and limits."""
    return tokenize.tokenize_examples(
        examples,
        tokenizer,
        template=cfg.template,
        max_prompt_length=cfg.max_prompt_length,
        max_length=cfg.max_length,
        add_bos=cfg.add_bos,
        long_prompts=cfg.long_prompts,
    )


def make_iterator(
    cfg,
    tokenizer: Any,
    split: str = "train",
    *,
    kind: str = "full",
    data: tokenize.TokenizedData | None = None,
    global_batch_size: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    **overrides: Any,
) -> iterator.BatchIterator:
    """A `BatchIterator` over `split`.

    Training splits shuffle forever (drop the remainder); other splits make
    one ordered pass that keeps every example (filler rows have valid = 0).
    Pass `data` to reuse a tokenised split for several kinds.
    """
    train = split == "train"
    kwargs: dict[str, Any] = dict(
        kind=kind,
        global_batch_size=global_batch_size or (cfg.batch_size if train else cfg.eval_batch_size),
        seed=cfg.seed,
        shuffle=train,
        num_epochs=None if train else 1,
        drop_remainder=train,
        length_buckets=tuple(cfg.length_buckets),
        prompt_buckets=tuple(cfg.prompt_buckets),
        pack=cfg.pack and kind == "full" and train,
        process_index=process_index,
        process_count=process_count,
        name=f"{cfg.source}/{split}/{kind}",
    )
    kwargs.update(overrides)
    return iterator.BatchIterator(data or tokenize_split(cfg, tokenizer, split), **kwargs)


def load_texts(path: str | Path, column: str = "text") -> list[str]:
    """Plain-text documents for the LM loss: a .txt (one per line) or JSONL `column`."""
    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise FileNotFoundError(f"text file not found: {path}")
        return [line.rstrip("\n") for line in path.open(encoding="utf-8") if line.strip()]
    texts = []
    for lineno, record in sources.read_jsonl(path):
        if column not in record:
            raise sources.DataError(
                f"{path}:{lineno}: missing column {column!r}; columns found: {sorted(record)}"
            )
        texts.append(str(record[column]))
    return texts


def make_lm_iterator(
    cfg: Mapping | Any, tokenizer: Any, *, process_index=None, process_count=None
) -> iterator.BatchIterator:
    """A packed plain-text LM stream from `cfg.lm_path` (MiniLLM's pre-training loss)."""
    if not cfg.lm_path:
        raise ValueError("data.lm_path is empty: no plain-text corpus configured")
    data = tokenize.tokenize_texts(load_texts(cfg.lm_path), tokenizer, max_length=cfg.max_length)
    return iterator.BatchIterator(
        data,
        kind="full",
        global_batch_size=cfg.batch_size,
        seed=cfg.seed,
        pack=True,
        length_buckets=(cfg.max_length,),
        process_index=process_index,
        process_count=process_count,
        name="lm",
    )
