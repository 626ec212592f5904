"""Evaluation of the published comparison: ROUGE-L on five instruction benchmarks.

`rouge_l(predictions, references) -> float` (0-100) is the metric external
checks call; `run_evaluation` generates, scores and writes resumable per-seed
results; `report` turns results into the write-up's table, CSV, JSON and plots.
"""

from classkd_jax.evaluation.protocol import (
    BENCHMARK_ORDER,
    BENCHMARK_TITLES,
    FINAL,
    VALIDATION,
    EvalProtocol,
)
from classkd_jax.evaluation.rouge import (
    compute_metrics,
    exact_match,
    exact_match_per_example,
    normalize_answer,
    rouge_l,
    rouge_l_per_example,
)
from classkd_jax.evaluation.runner import (
    GenerateFn,
    RunResults,
    aggregate,
    chunk_seed,
    evaluate_predictions,
    evaluate_with_generate,
    load_predictions,
    load_results,
    make_generate_fn,
    run_evaluation,
    score_predictions,
)

__all__ = [
    "BENCHMARK_ORDER",
    "BENCHMARK_TITLES",
    "FINAL",
    "VALIDATION",
    "EvalProtocol",
    "GenerateFn",
    "RunResults",
    "aggregate",
    "chunk_seed",
    "compute_metrics",
    "evaluate_predictions",
    "evaluate_with_generate",
    "exact_match",
    "exact_match_per_example",
    "load_predictions",
    "load_results",
    "make_generate_fn",
    "normalize_answer",
    "rouge_l",
    "rouge_l_per_example",
    "run_evaluation",
    "score_predictions",
]
