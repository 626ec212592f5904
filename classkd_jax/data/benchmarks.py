"""The evaluation sets of the MiniLLM/DistiLLM protocol, read from a local data dir.

Layout (that of MiniLLM's `data/` directory; DistiLLM uses the same):

    <data_dir>/dolly/raw.jsonl        Dolly training data: first 1000 lines = dev
    <data_dir>/dolly/valid.jsonl      Dolly test: the 500 held-out examples
    <data_dir>/self-inst/valid.jsonl  Self-Instruct test (242)
    <data_dir>/vicuna/valid.jsonl     Vicuna test (80)
    <data_dir>/sinst/11_/valid.jsonl  Super-NaturalInstructions, `11_` bucket
    <data_dir>/uinst/11_/valid.jsonl  Unnatural Instructions, `11_` bucket

MiniLLM's `evaluate_main.py` evaluates on `valid.jsonl`, which is why the
protocol's *test* split is that file. Records hold `instruction`, `input`,
`output` (a string or a list of references) and, once processed, the formatted
`prompt` (with `<n>` standing for a newline). `raw.jsonl` may also be in
Dolly's release schema (`context`, `response`).

The built-in synthetic task is accepted as the name 'synthetic'; write its
directory with `classkd_jax.data.synthetic.write_synthetic_data_dir`. Its
`meta.json` gives its dev size (`dev_num`); Dolly's is 1000.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from classkd_jax.data import sources, templates

BENCHMARKS: dict[str, str] = {
    "dolly": "dolly",
    "self_inst": "self-inst",
    "vicuna": "vicuna",
    "sinst": "sinst/11_",
    "uinst": "uinst/11_",
}
SYNTHETIC = "synthetic"
# Sizes of the protocol's test sets (docs/baselines.md); a mismatch is logged, not fatal.
TEST_SIZES = {"dolly": 500, "self_inst": 242, "vicuna": 80}
DOLLY_DEV_NUM = 1000
# template='file' uses the prompt stored in the processed file.
FILE_TEMPLATE = "file"

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalExample:
    """One evaluation example.

    Attributes:
      uid: '{name}/{split}/{row}' (row = 0-based index in the file's split).
      prompt: the formatted prompt string fed to the model.
      references: the reference responses (ROUGE-L takes the max over them).
      instruction: the raw instruction.
      input: the raw input ('' for none).
    """

    uid: str
    prompt: str
    references: list[str]
    instruction: str
    input: str


def benchmark_dir(data_dir: str | os.PathLike, name: str) -> Path:
    """The directory of benchmark `name` under `data_dir`."""
    if name == SYNTHETIC:
        return Path(data_dir) / SYNTHETIC
    if name not in BENCHMARKS:
        raise ValueError(
            f"unknown evaluation set {name!r}; known: {sorted(BENCHMARKS) + [SYNTHETIC]}"
        )
    return Path(data_dir) / BENCHMARKS[name]


def _layout_help(data_dir: str | os.PathLike) -> str:
    lines = [f"  {data_dir}/{rel}/valid.jsonl" for rel in BENCHMARKS.values()]
    return (
        "expected the MiniLLM/DistiLLM data layout (JSONL with instruction, input, "
        "output[, prompt]):\n"
        + "\n".join(lines)
        + f"\n  {data_dir}/dolly/raw.jsonl (train; first {DOLLY_DEV_NUM} lines = dev)"
        + f"\n  {data_dir}/{SYNTHETIC}/ written by classkd_jax.data.synthetic."
        "write_synthetic_data_dir"
    )


def _dev_num(set_dir: Path, name: str) -> int:
    meta = set_dir / "meta.json"
    if meta.exists():
        dev_num = json.loads(meta.read_text()).get("dev_num")
        if not isinstance(dev_num, int):
            raise sources.DataError(f"{meta}: needs an integer 'dev_num', got {dev_num!r}")
        return dev_num
    if name == "dolly":
        return DOLLY_DEV_NUM
    raise ValueError(f"evaluation set {name!r} has no dev/train split (only 'test')")


def _split_records(data_dir, name: str, split: str) -> list[tuple[str, dict]]:
    """Returns (location, record) pairs of a split, in file order."""
    set_dir = benchmark_dir(data_dir, name)
    if split == "test":
        path = set_dir / "valid.jsonl"
    elif split in ("dev", "train"):
        path = set_dir / "raw.jsonl"
    else:
        raise ValueError(f"unknown split {split!r}; expected 'test', 'dev' or 'train'")
    n_dev = _dev_num(set_dir, name) if split != "test" else 0
    if not path.is_file():
        raise FileNotFoundError(f"{name} {split} split: {path} not found; {_layout_help(data_dir)}")
    records = [(f"{path}:{lineno}", rec) for lineno, rec in sources.read_jsonl(path)]
    if split != "test":
        records = records[:n_dev] if split == "dev" else records[n_dev:]
    return records


def load_examples(
    data_dir: str | os.PathLike,
    name: str,
    split: str = "train",
    *,
    stats: sources.SourceStats | None = None,
) -> list[sources.Example]:
    """Loads a benchmark split as training-style `Example`s (e.g. Dolly train/dev)."""
    stats = stats if stats is not None else sources.SourceStats()
    records = _split_records(data_dir, name, split)
    # Row numbers come from the split's position so uids match load_eval_set's.
    examples = sources.records_to_examples(records, name=f"{name}/{split}", stats=stats)
    _log.info(stats.summary(f"{name}/{split}"))
    return examples


def load_eval_set(
    data_dir: str | os.PathLike,
    name: str,
    split: str = "test",
    *,
    template: str = "alpaca",
    max_examples: int | None = None,
) -> list[EvalExample]:
    """Loads an evaluation set of the protocol.

    Args:
      data_dir: the root of the layout in this module's docstring.
      name: a key of `BENCHMARKS`, or 'synthetic'.
      split: 'test' (the protocol's test set, `valid.jsonl`), or for Dolly and
        the synthetic task 'dev' / 'train' (slices of `raw.jsonl`).
      template: a `templates.TEMPLATES` key to format `instruction`/`input`, or
        'file' to use each record's stored `prompt` (with `<n>` decoded).
      max_examples: keep only the first this many (after dropping examples
        without a reference).

    Returns:
      The examples in file order.

    Raises:
      FileNotFoundError: naming the expected path and the whole layout.
      sources.DataError: a malformed line or missing column, with file:line.
    """
    records = _split_records(data_dir, name, split)
    examples = []
    dropped = 0
    for row, (where, rec) in enumerate(records):
        (ex,) = sources.records_to_examples([(where, rec)], name=name) or (None,)
        if ex is None:
            dropped += 1
            continue
        if template == FILE_TEMPLATE:
            if "prompt" not in rec:
                raise sources.DataError(
                    f"{where}: template='file' needs a 'prompt' column; columns found: "
                    f"{sorted(rec)}"
                )
            prompt = templates.decode_newlines(rec["prompt"])
        else:
            prompt = templates.format_prompt(ex.instruction, ex.input, template)
        examples.append(
            EvalExample(
                uid=f"{name}/{split}/{row}",
                prompt=prompt,
                references=list(ex.responses),
                instruction=ex.instruction,
                input=ex.input,
            )
        )
    if dropped:
        _log.warning("%s/%s: dropped %d examples without a reference", name, split, dropped)
    expected = TEST_SIZES.get(name)
    if split == "test" and max_examples is None and expected not in (None, len(examples)):
        _log.warning(
            "%s test has %d examples; the protocol's has %d", name, len(examples), expected
        )
    return examples[:max_examples] if max_examples is not None else examples
