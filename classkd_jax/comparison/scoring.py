"""Scoring a trained model on a split of the training config's data, the same way
for every method.

    examples, prompts = split_prompts(config, tokenizer, "test")
    metrics, records = score_model((model_cfg, params), examples, prompts, config,
                                   tokenizer, mesh)

Greedy decoding of `eval.max_new_tokens` tokens, prompts formatted and
tokenised exactly as in training (`data.template`, `data.max_prompt_length`),
ROUGE-L and exact match of `classkd_jax.evaluation.rouge` (0-100). Greedy
decoding makes a model's score a function of its weights alone, so the
seeds' spread in a comparison is the spread of training, not of sampling.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from classkd_jax.cli import UserError
from classkd_jax.data import pipeline
from classkd_jax.evaluation import runner
from classkd_jax.training import data as data_lib
from classkd_jax.training.validation import greedy_texts

SPLITS = ("test", "dev")


def split_prompts(config, tokenizer, split: str) -> tuple[list, list]:
    """(EvalExamples, prompt token ids) of `split`, tokenised as in training."""
    if split not in SPLITS:
        raise UserError(f"--split {split!r}; expected one of {SPLITS}")
    try:
        examples = pipeline.load_split(config.data, split)
    except ValueError as e:
        raise UserError(f"the {split} split of data.source={config.data.source!r}: {e}") from None
    if not examples:
        raise UserError(f"the {split} split of data.source={config.data.source!r} is empty")
    data = pipeline.tokenize_examples_for(config.data, tokenizer, examples)
    evals = data_lib.eval_examples(examples, data, config.data.template)
    return evals, list(data.prompts)


def score_model(model, examples, prompts, config, tokenizer, mesh) -> tuple[dict, list[dict]]:
    """({'rougeL', 'exact_match', 'n'}, per-example records) of greedy completions."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = greedy_texts(
        model,
        prompts,
        tokenizer,
        max_new_tokens=int(config.eval.max_new_tokens),
        batch_size=int(config.eval.batch_size),
        pad_id=int(pad),
        mesh=mesh,
        prompt_buckets=tuple(config.data.prompt_buckets),
    )
    records = runner.score_predictions(examples, texts)
    return runner.aggregate(records), records


def read_json(path: Path) -> Any | None:
    """The JSON in `path`, or None when it is missing or was cut short."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
