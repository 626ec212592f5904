"""From a data config (`configs/data.py`) to examples and batch iterators.

    cfg = configs.data.get_config("source=synthetic")
    train = pipeline.make_iterator(cfg, tokenizer, "train", kind="full")
    prompts = pipeline.make_iterator(cfg, tokenizer, "train", kind="prompt")
    dev = pipeline.make_iterator(cfg, tokenizer, "dev", kind="full")  # one pass, in order

Sources (`cfg.source`): 'synthetic' (generated in memory from `cfg.synthetic`),
'benchmark' (a set of the MiniLLM layout under `cfg.data_dir`, e.g. Dolly's
`raw.jsonl` with its first 1000 lines as dev), 'jsonl', 'hf', 'tfds' (`cfg.path`;
dev from `cfg.dev_path`, or the first `cfg.dev_num` training examples).

The plain-text pre-training stream that MiniLLM and DistiLLM add to their
losses comes from `cfg.lm_path` (a .txt, a .jsonl, a directory of them, or a
Hugging Face dataset; `cfg.lm_source`):

    lm = pipeline.make_lm_iterator(cfg, tokenizer)  # packed rows, forever
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping
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
            s.seed,
            num_train=s.num_train,
            num_dev=s.num_dev,
            num_test=s.num_test,
            noise=s.get("noise", synthetic.DEFAULT_NOISE),
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


LM_SOURCES = ("auto", "text", "hf")
TEXT_SUFFIXES = (".txt", ".jsonl")
# Files `save_to_disk` writes: a Dataset (dataset_info.json, state.json) or a DatasetDict.
_HF_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def _text_files(directory: Path) -> list[Path]:
    """The .txt and .jsonl files under `directory` (recursively), sorted by path."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)


def _is_saved_hf(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in _HF_SAVED_MARKERS)


def _looks_local(path: str) -> bool:
    """Whether `path` names a local file rather than a hub dataset ('owner/name')."""
    p = Path(path).expanduser()
    return p.is_absolute() or path.startswith((".", "~")) or p.suffix in TEXT_SUFFIXES


def resolve_lm_source(path: str, source: str = "auto") -> str:
    """'text' or 'hf': how `data.lm_path` is read (`data.lm_source`).

    'auto' picks 'text' for an existing .txt/.jsonl file or a directory holding
    such files (that is not a `save_to_disk` directory), else 'hf'.

    Raises:
      ValueError: for an unknown `source`.
      FileNotFoundError: for a local-looking path (absolute, './', '~' or a
        .txt/.jsonl name) that does not exist.
      DataError: for a directory with no files in it.
    """
    if source not in LM_SOURCES:
        raise ValueError(f"data.lm_source={source!r}; expected one of {LM_SOURCES}")
    p = Path(path).expanduser()
    if not p.exists() and (source == "text" or _looks_local(path)):
        raise FileNotFoundError(f"data.lm_path={path!r}: no such file or directory")
    if source != "auto":
        return source
    if p.is_file():
        return "text" if p.suffix in TEXT_SUFFIXES else "hf"
    if p.is_dir():
        if _is_saved_hf(p):
            return "hf"
        if _text_files(p):
            return "text"
        if not any(p.iterdir()):
            raise sources.DataError(f"data.lm_path={path!r}: the directory is empty")
    return "hf"  # a hub name, or data files `datasets.load_dataset` reads (parquet, csv)


def _documents_in_file(path: Path, column: str) -> Iterator[str]:
    """The non-blank documents of one .txt (a line each) or .jsonl (`column`) file."""
    if path.suffix == ".txt":
        with path.open(encoding="utf-8") as f:
            yield from (line.rstrip("\r\n") for line in f if line.strip())
        return
    if path.suffix != ".jsonl":
        raise sources.DataError(f"{path}: expected a .txt or .jsonl file, got {path.suffix!r}")
    for lineno, record in sources.read_jsonl(path):
        if column not in record:
            raise sources.DataError(
                f"{path}:{lineno}: missing column {column!r}; columns found: {sorted(record)}"
            )
        value = record[column]
        if not isinstance(value, str):
            raise sources.DataError(
                f"{path}:{lineno}: column {column!r} should hold text, got {type(value).__name__}"
            )
        if value.strip():
            yield value


def load_texts(path: str | Path, column: str = "text", *, max_documents: int = 0) -> list[str]:
    """Plain-text documents for the LM loss from a .txt, a .jsonl or a directory of them.

    Args:
      path: a .txt file (one document per non-blank line), a .jsonl file (one
        document per record, in `column`), or a directory whose .txt and
        .jsonl files (recursively) are read in sorted path order.
      column: the JSONL field holding the text.
      max_documents: keep only the first this many documents (0: all).

    Raises:
      FileNotFoundError: naming a missing path.
      DataError: naming the file and line of a malformed record or a missing
        column, or a directory with no .txt/.jsonl files.
    """
    path = Path(path)
    if path.is_dir():
        files = _text_files(path)
        if not files:
            raise sources.DataError(f"{path}: the directory holds no .txt or .jsonl files")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"text corpus not found: {path}")
    docs = itertools.chain.from_iterable(_documents_in_file(f, column) for f in files)
    return list(itertools.islice(docs, max_documents or None))


def _open_hf(path_or_name: str, split: str) -> Any:
    """A `datasets.Dataset`: saved to disk, a local data file or dir, or a hub name."""
    import datasets  # deferred: importing `datasets` costs seconds

    path = Path(path_or_name).expanduser()
    if _is_saved_hf(path):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise sources.DataError(f"{path}: no split {split!r}; splits found: {sorted(ds)}")
            ds = ds[split]
        return ds
    try:
        if path.is_file() and path.suffix in (".json", ".jsonl", ".csv", ".parquet"):
            kind = {".jsonl": "json"}.get(path.suffix, path.suffix[1:])
            return datasets.load_dataset(kind, data_files={split: str(path)}, split=split)
        return datasets.load_dataset(str(path_or_name), split=split)
    except Exception as e:  # give the config key; the cause stays chained
        raise sources.DataError(
            f"data.lm_path={path_or_name!r}: datasets.load_dataset(split={split!r}) failed: "
            f"{type(e).__name__}: {e}"
        ) from e


def load_hf_texts(
    path_or_name: str, *, column: str = "text", split: str = "train", max_documents: int = 0
) -> list[str]:
    """Plain-text documents from column `column` of a Hugging Face `datasets` source.

    Args:
      path_or_name: a `save_to_disk` directory (Dataset or DatasetDict), a
        local data file or directory `datasets.load_dataset` reads, or (only
        when online) a hub name.
      column: the column holding the text.
      split: the split to read.
      max_documents: keep only the first this many rows (0: all); blank ones
        are then dropped.

    Raises:
      DataError: naming the column and the columns found, or a row whose
        value is not text.
    """
    ds = _open_hf(path_or_name, split)
    where = f"{path_or_name}[{split}]"
    if column not in ds.column_names:
        raise sources.DataError(
            f"{where}: missing column {column!r}; columns found: {sorted(ds.column_names)}"
        )
    if max_documents:
        ds = ds.select(range(min(max_documents, len(ds))))
    texts = []
    for i, value in enumerate(ds[column]):
        if not isinstance(value, str):
            raise sources.DataError(
                f"{where} row {i}: column {column!r} should hold text, got {type(value).__name__}"
            )
        if value.strip():
            texts.append(value)
    return texts


def load_lm_texts(cfg: Mapping | Any) -> list[str]:
    """The LM corpus named by `cfg.lm_path` / `lm_source` / `lm_column` / `lm_split`.

    Raises:
      ValueError: when `cfg.lm_path` is empty.
      DataError: when the corpus holds no non-blank document.
    """
    if not cfg.lm_path:
        raise ValueError("data.lm_path is empty: no plain-text corpus configured")
    path, column, cap = str(cfg.lm_path), cfg.lm_column, cfg.lm_max_documents
    if resolve_lm_source(path, cfg.lm_source) == "text":
        texts = load_texts(path, column, max_documents=cap)
    else:
        texts = load_hf_texts(path, column=column, split=cfg.lm_split, max_documents=cap)
    if not texts:
        raise sources.DataError(f"data.lm_path={path!r}: no non-blank documents")
    return texts


def make_lm_iterator(
    cfg: Mapping | Any,
    tokenizer: Any,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> iterator.BatchIterator:
    """A packed, shuffled, endless plain-text LM stream (MiniLLM's / DistiLLM's pre-training term).

    Each document gets EOS and is cut into chunks of at most `lm_max_length`
    (default `max_length`) tokens; chunks are packed into rows of that length,
    `lm_batch_size` (default `batch_size`) rows per global step, reshuffled each
    epoch from `lm_seed`. Every process tokenises the corpus and keeps only its
    rows: batches are `tokens, segment_ids, positions, targets`
    `[lm_batch_size // process_count, lm_max_length] int32` and `loss_mask`
    (same shape, float32; 0 across document chunks and on padding).

    Raises:
      ValueError: when `cfg.lm_path` is empty or the sizes are invalid.
      DataError: for a corpus that cannot be read or is empty.
    """
    if cfg.lm_batch_size < 0 or cfg.lm_max_length < 0:
        raise ValueError(
            f"data.lm_batch_size={cfg.lm_batch_size}, data.lm_max_length={cfg.lm_max_length}: "
            "need >= 0 (0 = data.batch_size / data.max_length)"
        )
    batch_size = cfg.lm_batch_size or cfg.batch_size
    max_length = cfg.lm_max_length or cfg.max_length
    texts = load_lm_texts(cfg)
    data = tokenize.tokenize_texts(texts, tokenizer, max_length=max_length)
    _log.info("lm %s: %d documents, %d chunks", cfg.lm_path, len(texts), len(data))
    return iterator.BatchIterator(
        data,
        kind="full",
        global_batch_size=batch_size,
        seed=cfg.lm_seed,
        pack=True,
        length_buckets=(max_length,),
        process_index=process_index,
        process_count=process_count,
        name=f"lm:{cfg.lm_path}",
    )
