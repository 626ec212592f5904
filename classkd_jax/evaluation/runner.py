"""Generate per seed per benchmark, score, write results as they finish, resume.

The generate function is injected: anything with the signature of
`GenerateFn` works, so the training loop's periodic validation and tests can
pass their own, and the CLI passes `make_generate_fn(model, tokenizer)`, a
thin wrapper over the jitted sampler `classkd_jax.sampling.generate_completions`.

Layout of an output directory (`out/`):
  manifest.json                       model, protocol, benchmarks (checked on resume)
  predictions/<bench>/seed<S>.jsonl   one line per scored example, appended per chunk
  scores/<bench>/seed<S>.json         corpus metrics, written when the seed is done

Examples are generated in chunks of `protocol.chunk_size`; chunk k of seed S
samples with seed `chunk_seed(S, k)`, so a run resumed after an interruption
(only whole chunks are kept) yields exactly what an uninterrupted run yields.

Multi-host: every process runs the same generation (it is one SPMD program),
only process 0 writes (`is_writer`), and all of them read `out/` to decide
what is left, so `out/` must be on a filesystem every host sees.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from classkd_jax.evaluation import rouge
from classkd_jax.evaluation.protocol import EvalProtocol

logger = logging.getLogger(__name__)

# generate_fn(prompts, *, seed, max_new_tokens, greedy, temperature, top_k, top_p,
#             no_repeat_ngram_size, batch_size, max_prompt_length) -> completions
GenerateFn = Callable[..., list[str]]
Metrics = dict[str, float]
# {benchmark: {seed: metrics}}
RunResults = dict[str, dict[int, Metrics]]


class Example(Protocol):
    """What the runner reads from `classkd_jax.data.benchmarks.EvalExample`."""

    uid: str
    prompt: str
    references: list[str]


def chunk_seed(seed: int, chunk_index: int) -> int:
    """Sampler seed of chunk `chunk_index` of an evaluation seeded with `seed`."""
    # A large odd stride keeps chunks of the protocol's seeds (10..50) disjoint.
    return (seed + 1_000_003 * chunk_index) % (2**31 - 1)


def make_generate_fn(model: Any, tokenizer: Any, *, mesh: Any = None) -> GenerateFn:
    """Binds a model and tokenizer to the jitted sampler (imported lazily: no JAX
    start-up until a model is evaluated)."""
    from classkd_jax.sampling import generate_completions

    def generate_fn(prompts: list[str], *, seed: int, **kwargs: Any) -> list[str]:
        return generate_completions(model, tokenizer, prompts, seed=seed, mesh=mesh, **kwargs)

    return generate_fn


def score_predictions(examples: Sequence[Example], predictions: Sequence[str]) -> list[dict]:
    """Per-example records: uid, prompt, prediction, references, rougeL, exact_match.

    rougeL (max over references) and exact_match are on the table's 0-100 scale,
    so a benchmark's score is the plain mean of its records.
    """
    refs = [list(ex.references) for ex in examples]
    preds = list(predictions)
    rl = rouge.rouge_l_per_example(preds, refs)
    em = rouge.exact_match_per_example(preds, refs)
    return [
        {
            "uid": ex.uid,
            "prompt": ex.prompt,
            "prediction": p,
            "references": r,
            "rougeL": 100.0 * a,
            "exact_match": 100.0 * b,
        }
        for ex, p, r, a, b in zip(examples, preds, refs, rl, em, strict=True)
    ]


def aggregate(records: Sequence[Mapping[str, Any]]) -> Metrics:
    """Corpus metrics from per-example records (means of the 0-100 values)."""
    if not records:
        raise ValueError("no scored examples to aggregate")
    n = len(records)
    return {
        "rougeL": sum(r["rougeL"] for r in records) / n,
        "exact_match": sum(r["exact_match"] for r in records) / n,
        "n": n,
    }


def evaluate_predictions(examples: Sequence[Example], predictions: Sequence[str]) -> Metrics:
    """Scores ready-made predictions: {'rougeL', 'exact_match', 'n'}."""
    return aggregate(score_predictions(examples, predictions))


def _generate_chunk(
    generate_fn: GenerateFn,
    examples: Sequence[Example],
    protocol: EvalProtocol,
    seed: int,
    chunk_index: int,
) -> list[str]:
    prompts = [ex.prompt for ex in examples]
    out = generate_fn(prompts, seed=chunk_seed(seed, chunk_index), **protocol.generation_kwargs())
    out = list(out)
    if len(out) != len(prompts) or not all(isinstance(o, str) for o in out):
        raise ValueError(
            f"generate_fn returned {len(out)} items for {len(prompts)} prompts "
            f"(types {sorted({type(o).__name__ for o in out})}); expected one str per prompt"
        )
    return out


def _chunks(n: int, size: int) -> list[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def evaluate_with_generate(
    examples: Sequence[Example],
    generate_fn: GenerateFn,
    protocol: EvalProtocol,
    seed: int,
) -> tuple[Metrics, list[dict]]:
    """Generates and scores one seed in memory (the training loop's validation).

    Uses the same chunking and chunk seeds as `run_evaluation`, so its numbers
    match a CLI run with the same protocol. In a training loop:

        gen = make_generate_fn((model_config, state.params), tokenizer, mesh=mesh)
        metrics, _ = evaluate_with_generate(dev_set, gen, protocol.VALIDATION, seed=10)

    Args:
      examples: objects with `uid`, `prompt`, `references` (e.g. `EvalExample`).
      generate_fn: see `GenerateFn`.
      protocol: generation settings and chunk size (its `seeds` are ignored).
      seed: the evaluation seed.

    Returns:
      ({'rougeL', 'exact_match', 'n'}, the per-example records).
    """
    records: list[dict] = []
    for k, idx in enumerate(_chunks(len(examples), protocol.chunk_size)):
        chunk = [examples[i] for i in idx]
        records += score_predictions(chunk, _generate_chunk(generate_fn, chunk, protocol, seed, k))
    return aggregate(records), records


# --------------------------------------------------------------------------
# Files: per-seed results written as they finish, and resume.


def predictions_path(out_dir: str | os.PathLike, benchmark: str, seed: int) -> Path:
    return Path(out_dir) / "predictions" / benchmark / f"seed{seed}.jsonl"


def scores_path(out_dir: str | os.PathLike, benchmark: str, seed: int) -> Path:
    return Path(out_dir) / "scores" / benchmark / f"seed{seed}.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    """`path` holds either its old content or all of `obj`, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _append_records(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def _load_done_chunks(
    path: Path, examples: Sequence[Example], chunks: Sequence[range]
) -> dict[int, list[dict]]:
    """Whole chunks already scored in `path`; a torn or partial chunk is dropped."""
    if not path.exists():
        return {}
    by_chunk: dict[int, list[dict]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # a line torn by the interruption: everything before it is whole
            by_chunk.setdefault(rec["chunk"], []).append(rec)
    done = {}
    for k, recs in by_chunk.items():
        if k >= len(chunks) or len(recs) != len(chunks[k]):
            continue
        for rec, i in zip(recs, chunks[k], strict=True):
            ex = examples[i]
            # uids are row numbers, so compare the content too.
            same = (rec["index"], rec["uid"], rec["prompt"], rec["references"]) == (
                i,
                ex.uid,
                ex.prompt,
                list(ex.references),
            )
            if not same:
                raise ValueError(
                    f"{path}: the stored example {rec['index']} ({rec['uid']!r}) differs from "
                    f"test example {i} ({ex.uid!r}) in uid, prompt or references; the data "
                    "or template changed since this run started: use a new --out directory"
                )
        done[k] = recs
    return done


def run_seed(
    examples: Sequence[Example],
    generate_fn: GenerateFn,
    protocol: EvalProtocol,
    seed: int,
    pred_path: Path,
    score_path: Path,
    *,
    name: str = "",
    is_writer: bool = True,
) -> Metrics:
    """Generates, scores and writes one (benchmark, seed), resuming whole chunks."""
    if score_path.exists():
        return json.loads(score_path.read_text(encoding="utf-8"))
    chunks = _chunks(len(examples), protocol.chunk_size)
    done = _load_done_chunks(pred_path, examples, chunks)
    if done and is_writer:
        # Rewrite without the torn tail so appends continue from whole chunks.
        tmp = pred_path.with_name(pred_path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        _append_records(tmp, [r for k in sorted(done) for r in done[k]])
        os.replace(tmp, pred_path)
    elif is_writer:
        pred_path.unlink(missing_ok=True)
    if done:
        logger.info("%s seed %d: resuming, %d/%d chunks done", name, seed, len(done), len(chunks))
    for k, idx in enumerate(chunks):
        if k in done:
            continue
        t0 = time.perf_counter()
        chunk = [examples[i] for i in idx]
        recs = score_predictions(chunk, _generate_chunk(generate_fn, chunk, protocol, seed, k))
        for i, rec in zip(idx, recs, strict=True):
            rec.update(chunk=k, index=i)
        if is_writer:
            _append_records(pred_path, recs)
        done[k] = recs
        logger.info(
            "%s seed %d: chunk %d/%d (%d examples) in %.1f s",
            name,
            seed,
            k + 1,
            len(chunks),
            len(idx),
            time.perf_counter() - t0,
        )
    metrics = aggregate([r for k in sorted(done) for r in done[k]])
    metrics["seed"] = seed
    if is_writer:
        write_json_atomic(score_path, metrics)
    return metrics


def _check_manifest(out_dir: Path, manifest: dict, is_writer: bool) -> None:
    """Writes the manifest, or checks that an existing one matches (resume)."""
    path = out_dir / "manifest.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        old_p, new_p = dict(old.get("protocol", {})), dict(manifest["protocol"])
        # Seeds and benchmarks may grow between runs; everything else must match.
        old_p.pop("seeds", None)
        new_p.pop("seeds", None)
        for key in sorted(set(old_p) | set(new_p)):
            if old_p.get(key) != new_p.get(key):
                raise ValueError(
                    f"{path} was written with protocol {key}={old_p.get(key)!r}, this run has "
                    f"{key}={new_p.get(key)!r}; resuming would mix settings: use a new --out"
                )
        if old.get("model") != manifest["model"]:
            raise ValueError(
                f"{path} was written for model {old.get('model')!r}, this run evaluates "
                f"{manifest['model']!r}: use a new --out"
            )
        manifest = {**old, **manifest}
        manifest["benchmarks"] = {**old.get("benchmarks", {}), **manifest["benchmarks"]}
    if is_writer:
        write_json_atomic(path, manifest)


def run_evaluation(
    benchmarks: Mapping[str, Sequence[Example]],
    generate_fn: GenerateFn,
    protocol: EvalProtocol,
    out_dir: str | os.PathLike,
    *,
    model_name: str = "",
    is_writer: bool = True,
) -> RunResults:
    """Evaluates every benchmark for every seed of `protocol`, resumable.

    Args:
      benchmarks: benchmark key -> its test examples (already capped).
      generate_fn: see `GenerateFn`; called once per chunk of prompts.
      protocol: generation settings, seeds, chunk size.
      out_dir: where results go (see the module docstring); reused to resume.
      model_name: recorded in the manifest; a resume must use the same.
      is_writer: False on every process but 0 of a multi-host run.

    Returns:
      {benchmark: {seed: {'rougeL', 'exact_match', 'n', 'seed'}}}.
    """
    out = Path(out_dir)
    manifest = {
        "model": model_name,
        "protocol": protocol.to_dict(),
        "benchmarks": {b: len(exs) for b, exs in benchmarks.items()},
    }
    _check_manifest(out, manifest, is_writer)
    results: RunResults = {}
    for bench, examples in benchmarks.items():
        if not examples:
            raise ValueError(f"benchmark {bench!r} has no examples to evaluate")
        results[bench] = {}
        for seed in protocol.seeds:
            metrics = run_seed(
                examples,
                generate_fn,
                protocol,
                seed,
                predictions_path(out, bench, seed),
                scores_path(out, bench, seed),
                name=bench,
                is_writer=is_writer,
            )
            results[bench][seed] = metrics
            logger.info("%s seed %d: ROUGE-L %.2f", bench, seed, metrics["rougeL"])
    return results


def load_predictions(out_dir: str | os.PathLike, benchmark: str, seed: int) -> list[dict]:
    """The per-example records of one finished (benchmark, seed), in test-set order."""
    path = predictions_path(out_dir, benchmark, seed)
    with path.open(encoding="utf-8") as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return sorted(recs, key=lambda r: r["index"])


def load_results(out_dir: str | os.PathLike) -> RunResults:
    """Every finished (benchmark, seed) score of a run directory."""
    root = Path(out_dir) / "scores"
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} does not exist: {out_dir} is not an evaluation output directory "
            "(expected scores/<benchmark>/seed<S>.json written by classkd_jax.evaluate)"
        )
    results: RunResults = {}
    for path in sorted(root.glob("*/seed*.json")):
        seed = int(path.stem.removeprefix("seed"))
        results.setdefault(path.parent.name, {})[seed] = json.loads(path.read_text("utf-8"))
    if not results:
        raise FileNotFoundError(f"{root} holds no finished scores (scores/<bench>/seed<S>.json)")
    return results
