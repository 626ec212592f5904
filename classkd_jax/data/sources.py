"""Instruction-data sources: JSONL (Dolly or MiniLLM schema), HF `datasets`, TFDS.

Every source yields `Example`s. Field names are normalised from the two
schemas the field uses: Dolly's release (`instruction`, `context`, `response`,
`category`) and MiniLLM/DistiLLM's processed files (`instruction`, `input`,
`output`, where `output` may be a list of references). Other schemas map their
columns with `columns={'instruction': ..., 'input': ..., 'response': ...}`.

Bad input is reported, never a bare KeyError: a malformed JSONL line names the
file and line; a missing column names the column and the columns found; an
empty response drops the example and is counted in `SourceStats`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# Canonical field -> accepted source columns, in order of preference.
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction",),
    "input": ("input", "context"),
    "response": ("response", "output"),
    "category": ("category",),
}
_REQUIRED = ("instruction", "response")


class DataError(ValueError):
    """Malformed instruction data; the message names the file, line or column."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One instruction example.

    Attributes:
      uid: a stable id (source name and row index unless the data has one).
      instruction: the task instruction.
      input: the optional context ('' for none).
      responses: one or more reference responses; the first is the training
        target (as in MiniLLM's `PromptDataset`).
      category: Dolly's category or the synthetic family; '' if unknown.
    """

    uid: str
    instruction: str
    input: str
    responses: tuple[str, ...]
    category: str = ""

    @property
    def response(self) -> str:
        """The training target: the first reference."""
        return self.responses[0]


@dataclasses.dataclass
class SourceStats:
    """What a source dropped, reported once when it is loaded."""

    read: int = 0
    kept: int = 0
    empty_response: int = 0

    def summary(self, name: str) -> str:
        return (
            f"{name}: read {self.read} rows, kept {self.kept}, "
            f"dropped {self.empty_response} with an empty response"
        )


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields `(line_number, record)` for each non-blank line of a JSONL file.

    Raises:
      FileNotFoundError: naming the path.
      DataError: naming the file and 1-based line of a line that is not a JSON
        object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file not found: {path}")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
                )
            yield lineno, record


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """Writes records as UTF-8 JSONL (one object per line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _resolve_columns(
    found: Iterable[str], columns: Mapping[str, str] | None, where: str
) -> dict[str, str | None]:
    """Maps each canonical field to a source column (None if optional and absent)."""
    found = list(found)
    columns = dict(columns or {})
    unknown = set(columns) - set(DEFAULT_COLUMNS)
    if unknown:
        raise DataError(
            f"unknown canonical field(s) {sorted(unknown)}; known: {list(DEFAULT_COLUMNS)}"
        )
    resolved: dict[str, str | None] = {}
    for field, candidates in DEFAULT_COLUMNS.items():
        if field in columns:
            if columns[field] not in found:
                raise DataError(
                    f"{where}: column {columns[field]!r} (mapped to {field!r}) not found; "
                    f"columns found: {sorted(found)}"
                )
            resolved[field] = columns[field]
            continue
        resolved[field] = next((c for c in candidates if c in found), None)
        if resolved[field] is None and field in _REQUIRED:
            raise DataError(
                f"{where}: missing column for {field!r} (tried {list(candidates)}); "
                f"columns found: {sorted(found)}"
            )
    return resolved


def _as_text(value: Any, where: str, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):  # TFDS text features arrive as bytes
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise DataError(f"{where}: column {column!r} should hold text, got {type(value).__name__}")


def _as_responses(value: Any, where: str, column: str) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)) or (
        hasattr(value, "tolist") and not isinstance(value, (str, bytes))
    ):
        items = value.tolist() if hasattr(value, "tolist") else value
        responses = tuple(_as_text(v, where, column) for v in items)
    else:
        responses = (_as_text(value, where, column),)
    # Empty references are useless to ROUGE and to training; keep the others.
    return tuple(r for r in responses if r.strip())


def _field(
    record: Mapping[str, Any], resolved: Mapping[str, str | None], field: str, *, where: str
) -> str:
    column = resolved[field]
    return _as_text(record.get(column), where, column) if column else ""


def records_to_examples(
    records: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    name: str,
    columns: Mapping[str, str] | None = None,
    stats: SourceStats | None = None,
) -> list[Example]:
    """Normalises `(where, record)` pairs into `Example`s.

    Args:
      records: pairs of a location string for error messages (e.g. 'file:12')
        and the record.
      name: the source name, used in uids ('{name}/{row}') unless a record has
        an 'id' or 'uid' field.
      columns: optional canonical-field -> column mapping.
      stats: counts of what was read, kept and dropped (filled in place).

    Returns:
      The examples with a non-empty response, in input order.
    """
    stats = stats if stats is not None else SourceStats()
    resolved: dict[str, str | None] | None = None
    examples = []
    for row, (where, record) in enumerate(records):
        if resolved is None:
            resolved = _resolve_columns(record.keys(), columns, where)
        for field in _REQUIRED:
            if resolved[field] not in record:
                raise DataError(
                    f"{where}: missing column {resolved[field]!r} ({field}); "
                    f"columns found: {sorted(record)}"
                )
        stats.read += 1
        responses = _as_responses(record[resolved["response"]], where, resolved["response"])
        if not responses:
            stats.empty_response += 1
            continue
        get = functools.partial(_field, record, resolved, where=where)
        uid = record.get("uid", record.get("id"))
        examples.append(
            Example(
                uid=str(uid) if uid is not None else f"{name}/{row}",
                instruction=get("instruction"),
                input=get("input"),
                responses=responses,
                category=get("category"),
            )
        )
    stats.kept += len(examples)
    return examples


def load_jsonl(
    path: str | os.PathLike,
    *,
    columns: Mapping[str, str] | None = None,
    name: str | None = None,
    stats: SourceStats | None = None,
) -> list[Example]:
    """Loads a JSONL file in Dolly's or MiniLLM's schema (or mapped `columns`)."""
    path = Path(path)
    records = ((f"{path}:{lineno}", rec) for lineno, rec in read_jsonl(path))
    return records_to_examples(records, name=name or path.stem, columns=columns, stats=stats)


def load_hf_dataset(
    path_or_name: str,
    *,
    split: str = "train",
    columns: Mapping[str, str] | None = None,
    stats: SourceStats | None = None,
    **load_kwargs: Any,
) -> list[Example]:
    """Loads examples through Hugging Face `datasets`.

    Args:
      path_or_name: a directory written by `Dataset.save_to_disk` (or
        `DatasetDict.save_to_disk`), a local data file or directory that
        `datasets.load_dataset` understands, or (only when online) a hub name.
      split: the split to read.
      columns: optional canonical-field -> column mapping.
      stats: counts (filled in place).
      **load_kwargs: passed to `datasets.load_dataset` (e.g. `data_files`).
    """
    import datasets  # deferred: importing `datasets` costs seconds

    path = Path(path_or_name)
    if path.is_dir() and (
        (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
    ):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: no split {split!r}; splits found: {sorted(ds)}")
            ds = ds[split]
    elif path.is_file() and path.suffix in (".json", ".jsonl", ".csv", ".parquet"):
        kind = {".jsonl": "json"}.get(path.suffix, path.suffix[1:])
        ds = datasets.load_dataset(kind, data_files={split: str(path)}, split=split, **load_kwargs)
    else:
        ds = datasets.load_dataset(str(path_or_name), split=split, **load_kwargs)
    where = f"{path_or_name}[{split}]"
    records = ((f"{where} row {i}", rec) for i, rec in enumerate(ds))
    return records_to_examples(
        records, name=path.name or str(path_or_name), columns=columns, stats=stats
    )


def load_tfds(
    name_or_dir: str,
    *,
    split: str = "train",
    data_dir: str | None = None,
    columns: Mapping[str, str] | None = None,
    stats: SourceStats | None = None,
) -> list[Example]:
    """Loads examples from a prepared TFDS dataset, without TensorFlow.

    Args:
      name_or_dir: a prepared dataset directory (the one holding
        `dataset_info.json`, read with `tfds.builder_from_directory`), or a
        registered dataset name prepared under `data_dir` (`tfds.data_source`).
        The dataset must use the `array_record` or `parquet` file format.
      split: the split to read.
      data_dir: the TFDS data directory for a dataset name.
      columns: optional canonical-field -> column mapping.
      stats: counts (filled in place).
    """
    import tensorflow_datasets as tfds  # deferred: heavy import

    if Path(name_or_dir, "dataset_info.json").exists():
        builder = tfds.builder_from_directory(str(name_or_dir))
        if split not in builder.info.splits:
            raise DataError(
                f"{name_or_dir}: no split {split!r}; splits found: {sorted(builder.info.splits)}"
            )
        source = builder.as_data_source(split=split)
    else:
        source = tfds.data_source(name_or_dir, split=split, data_dir=data_dir)
    where = f"tfds:{name_or_dir}[{split}]"
    records = ((f"{where} row {i}", source[i]) for i in range(len(source)))
    name = Path(name_or_dir).name
    return records_to_examples(records, name=name, columns=columns, stats=stats)


def split_head(examples: Sequence[Example], n: int) -> tuple[list[Example], list[Example]]:
    """Splits off the first `n` examples (MiniLLM's dev split: first 1000 of Dolly)."""
    return list(examples[:n]), list(examples[n:])
