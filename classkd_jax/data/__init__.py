"""Instruction data: sources, benchmarks, templates, tokenisation, batching, iterators.

Typical use:

    examples = sources.load_jsonl("dolly.jsonl")            # or benchmarks / synthetic
    data = tokenize.tokenize_examples(examples, tokenizer)
    it = iterator.BatchIterator(data, kind="full", global_batch_size=8, seed=0)
    batch = next(it)                                         # host-local numpy dict
"""

from classkd_jax.data.batching import left_pad_prompts, pack_rows, pick_bucket
from classkd_jax.data.benchmarks import BENCHMARKS, EvalExample, load_eval_set, load_examples
from classkd_jax.data.iterator import BatchIterator, to_global
from classkd_jax.data.sources import (
    DataError,
    Example,
    load_hf_dataset,
    load_jsonl,
    load_tfds,
)
from classkd_jax.data.synthetic import (
    make_synthetic_task,
    synthetic_tokenizer_path,
    write_synthetic_data_dir,
)
from classkd_jax.data.templates import format_prompt
from classkd_jax.data.tokenize import (
    TokenizedData,
    tokenize_examples,
    tokenize_prompts,
    tokenize_texts,
)

__all__ = [
    "BENCHMARKS",
    "BatchIterator",
    "DataError",
    "EvalExample",
    "Example",
    "TokenizedData",
    "format_prompt",
    "left_pad_prompts",
    "load_eval_set",
    "load_examples",
    "load_hf_dataset",
    "load_jsonl",
    "load_tfds",
    "make_synthetic_task",
    "pack_rows",
    "pick_bucket",
    "synthetic_tokenizer_path",
    "to_global",
    "tokenize_examples",
    "tokenize_prompts",
    "tokenize_texts",
    "write_synthetic_data_dir",
]
