r"""Evaluate a model on the protocol's benchmarks and write the comparison table.

    python -m classkd_jax.evaluate --model PATH --data_dir DIR \
        --benchmarks dolly,self_inst,vicuna,sinst,uinst --seeds 10,20,30,40,50 --out DIR

PATH is a Hugging Face directory (config.json + *.safetensors + tokenizer).
Generation follows `classkd_jax.evaluation.protocol.FINAL` (flags override
it) through the jitted sampler over all devices; scoring is the
Super-NaturalInstructions / MiniLLM ROUGE-L. Results are written per seed as
they finish, and rerunning the same command resumes. `--out` receives
table.md, scores.csv, results.json and predictions.csv (every per-example
prediction); with `--compare RUN_DIR ...` (earlier `--out` directories, as
`NAME=DIR` to rename) the table gets a row per run and comparison.png is drawn.
`--compare` without `--model` only builds the comparison.

The protocol's lengths (prompts up to 256 tokens, 256 new tokens) need a
context of 512. For a model with a smaller context (max_position_embeddings)
the lengths NOT given on the command line are capped, with a one-line warning
on stderr; the capped values are the ones the run records (manifest.json,
results.json) and resumes with:
  - neither flag given: max_new_tokens becomes min(256, max(context - 256,
    context // 2)) and max_prompt_length the rest of the context (for the
    protocol's 256/256 and any context below 512: half the context each, e.g.
    64 + 64 for a 128-token model);
  - only --max_new_tokens N given: max_prompt_length = context - N;
  - only --max_prompt_length P given: max_new_tokens = context - P.
Explicit values that do not fit (N >= context, P >= context, or both given
with P + N > context) are an error naming the flag to lower and the context.

Bad input (a missing path, a malformed benchmark line, a length that does not
fit) is one line on stderr, `python -m classkd_jax.evaluate: error: ...`, and
exit status 2; `CLASSKD_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from classkd_jax import cli, distributed, supervisor
from classkd_jax.evaluation import protocol as protocol_lib
from classkd_jax.evaluation import report, runner

PROG = "python -m classkd_jax.evaluate"
logger = logging.getLogger("classkd_jax.evaluate")
# Flags whose protocol default is capped to a small model's context when not given.
_LENGTH_FLAGS = ("max_prompt_length", "max_new_tokens")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", help="Hugging Face model directory or classkd-jax checkpoint to evaluate"
    )
    p.add_argument("--role", default="student", help="which model of a checkpoint (student)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    p.add_argument("--data_dir", help="root of the benchmark layout (see data/benchmarks.py)")
    p.add_argument(
        "--benchmarks",
        default=",".join(protocol_lib.BENCHMARK_ORDER),
        help="comma-separated benchmark keys (default: all five)",
    )
    p.add_argument("--seeds", type=_int_list, default=protocol_lib.FINAL.seeds)
    p.add_argument("--out", required=True, help="output directory (reused to resume)")
    p.add_argument("--name", help="row name in the table (default: the model dir's name)")
    p.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="RUN",
        help="earlier output dirs (or NAME=DIR) to put side by side",
    )
    g = p.add_argument_group("generation (defaults: the protocol's final evaluation)")
    d = protocol_lib.FINAL
    g.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    g.add_argument("--temperature", type=float, default=d.temperature)
    g.add_argument("--top_k", type=int, default=d.top_k)
    g.add_argument("--top_p", type=float, default=d.top_p)
    g.add_argument("--no_repeat_ngram_size", type=int, default=d.no_repeat_ngram_size)
    # default None: "not given", so that a small model's context can cap the default.
    g.add_argument(
        "--max_prompt_length",
        type=int,
        default=None,
        help=f"prompt tokens kept, left-truncated (default {d.max_prompt_length}, "
        "capped to the model's context)",
    )
    g.add_argument(
        "--max_new_tokens",
        type=int,
        default=None,
        help=f"generation budget (default {d.max_new_tokens}, capped to the model's context)",
    )
    g.add_argument("--batch_size", type=int, default=d.batch_size)
    g.add_argument("--chunk_size", type=int, default=d.chunk_size)
    g.add_argument("--dtype", default=None, help="compute dtype: float32 (default) or bfloat16")
    g.add_argument("--template", default=d.template, help="prompt template, or 'file'")
    g.add_argument(
        "--max_examples",
        type=int,
        default=None,
        help="cap every benchmark at its first N examples (default: "
        "the protocol's, i.e. Unnatural Instructions at 10,000)",
    )
    distributed.add_flags(p)  # several processes: --coordinator_address ...
    return p


def protocol_from_args(args: argparse.Namespace) -> protocol_lib.EvalProtocol:
    """The protocol with the command line's overrides (before any context cap)."""
    overrides = {
        k: getattr(args, k) if getattr(args, k) is not None else getattr(protocol_lib.FINAL, k)
        for k in (
            "greedy",
            "temperature",
            "top_k",
            "top_p",
            "no_repeat_ngram_size",
            "max_prompt_length",
            "max_new_tokens",
            "batch_size",
            "chunk_size",
            "template",
        )
    }
    overrides["seeds"] = tuple(args.seeds)
    proto = dataclasses.replace(protocol_lib.FINAL, **overrides)
    if args.max_examples is not None:
        caps = tuple((b, args.max_examples) for b in _benchmarks(args))
        proto = dataclasses.replace(proto, max_examples=caps)
    return proto


def _benchmarks(args: argparse.Namespace) -> list[str]:
    names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    if not names:
        raise cli.UserError("--benchmarks is empty")
    return names


def check_model_path(path: str) -> Path:
    """Accepts a Hugging Face directory or a checkpoint; anything else gets an error
    saying why."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--model {path}: no such directory")
    if p.is_dir() and (p / "config.json").is_file():
        if not any(p.glob("*.safetensors")):
            raise FileNotFoundError(
                f"--model {path}: has config.json but no *.safetensors weights; save the "
                "model with save_pretrained(..., safe_serialization=True) or models.save_hf"
            )
        return p
    from classkd_jax.checkpoint import is_checkpoint

    if is_checkpoint(p):
        return p
    if p.is_dir() and any(c.is_dir() and c.name.isdigit() for c in p.iterdir()):
        raise FileNotFoundError(
            f"--model {path} looks like a classkd-jax checkpoint root but holds no complete "
            "step (no <step>/meta); an interrupted save leaves only a temporary directory"
        )
    raise ValueError(
        f"--model {path} is not a Hugging Face model directory (no config.json); "
        "expected config.json, *.safetensors and the tokenizer files, or a classkd-jax "
        "checkpoint (<step>/meta)"
    )


def load_benchmarks(args: argparse.Namespace, proto: protocol_lib.EvalProtocol) -> dict:
    """Loads every test set first, so a missing file fails before the model loads."""
    from classkd_jax.data.benchmarks import load_eval_set

    if not args.data_dir:
        raise cli.UserError("--data_dir is required with --model")
    if not Path(args.data_dir).is_dir():
        raise FileNotFoundError(
            f"--data_dir {args.data_dir}: no such directory (expected the benchmark layout "
            "of classkd_jax/data/benchmarks.py, e.g. DIR/dolly/valid.jsonl)"
        )
    return {
        b: load_eval_set(
            args.data_dir,
            b,
            "test",
            template=proto.template,
            max_examples=proto.max_examples_for(b),
        )
        for b in _benchmarks(args)
    }


def _parse_compare(items: Sequence[str]) -> dict[str, Path]:
    runs = {}
    for item in items:
        name, sep, path = item.partition("=")
        path = Path(path if sep else name)
        name = name if sep else path.resolve().name
        if name in runs:
            raise cli.UserError(f"--compare: two runs are named {name!r}; rename one as NAME=DIR")
        runs[name] = path
    return runs


def fit_context(
    proto: protocol_lib.EvalProtocol,
    context: int,
    explicit: Sequence[str] = (),
) -> tuple[protocol_lib.EvalProtocol, str | None]:
    """Caps the protocol's prompt and generation lengths to a model's context.

    Args:
      proto: the protocol with the command line's values.
      context: the model's max_position_embeddings.
      explicit: which of 'max_prompt_length', 'max_new_tokens' the user gave;
        only the others may be changed (the rule is in the module docstring).

    Returns:
      (the protocol that fits, a one-line warning saying what was capped, or
      None when nothing was).

    Raises:
      cli.UserError: naming the flag to lower when explicit values do not fit.
    """
    prompt, new = proto.max_prompt_length, proto.max_new_tokens
    if prompt + new <= context:
        return proto, None
    where = f"the model's context of {context} tokens (max_position_embeddings)"
    if "max_new_tokens" in explicit and new >= context:
        raise cli.UserError(
            f"--max_new_tokens {new} does not fit {where}, prompt included; lower "
            f"--max_new_tokens to at most {context - 1}"
        )
    if "max_prompt_length" in explicit and prompt >= context:
        raise cli.UserError(
            f"--max_prompt_length {prompt} leaves no room for new tokens in {where}; lower "
            f"--max_prompt_length to at most {context - 1}"
        )
    if "max_new_tokens" in explicit and "max_prompt_length" in explicit:
        raise cli.UserError(
            f"--max_prompt_length {prompt} + --max_new_tokens {new} = {prompt + new} tokens "
            f"exceed {where}; lower --max_new_tokens or --max_prompt_length"
        )
    if context < 2:
        raise cli.UserError(f"{where} cannot hold a prompt token and a new token")
    if "max_new_tokens" in explicit:
        capped = dict(max_prompt_length=context - new)
    elif "max_prompt_length" in explicit:
        capped = dict(max_new_tokens=context - prompt)
    else:
        new_capped = min(new, max(context - prompt, context // 2))
        capped = dict(max_new_tokens=new_capped, max_prompt_length=context - new_capped)
    capped = {k: v for k, v in capped.items() if v != getattr(proto, k)}
    fitted = dataclasses.replace(proto, **capped)
    given = " + ".join(
        f"{k} {getattr(proto, k)}" + (f" (--{k})" if k in explicit else " (protocol default)")
        for k in _LENGTH_FLAGS
    )
    message = (
        f"{given} exceed {where}; capped "
        + ", ".join(f"{k} to {v}" for k, v in capped.items())
        + " (set explicitly with "
        + " / ".join(f"--{k}" for k in _LENGTH_FLAGS if k not in explicit)
        + ")"
    )
    return fitted, message


def evaluate_model(
    args: argparse.Namespace,
) -> tuple[str, runner.RunResults, dict, protocol_lib.EvalProtocol]:
    """Generates and scores; returns (run name, results, per-example predictions,
    the protocol it ran: the command line's, capped to the model's context)."""
    proto = protocol_from_args(args)
    benches = load_benchmarks(args, proto)
    model_dir = check_model_path(args.model)
    # Imported only now: bad paths fail fast, without JAX start-up.
    import jax

    from classkd_jax.generate import load_model_and_tokenizer
    from classkd_jax.sharding import make_mesh

    name = args.name or model_dir.resolve().name
    logger.info(
        "devices: %d (%s); process %d of %d",
        jax.device_count(),
        jax.devices()[0].platform,
        jax.process_index(),
        jax.process_count(),
    )
    model, tokenizer = load_model_and_tokenizer(
        str(model_dir), dtype=args.dtype, role=args.role, tokenizer=args.tokenizer
    )
    explicit = [k for k in _LENGTH_FLAGS if getattr(args, k) is not None]
    proto, warning = fit_context(proto, model[0].max_position_embeddings, explicit)
    if warning and jax.process_index() == 0:
        print(f"{PROG}: warning: {warning}", file=sys.stderr, flush=True)
    # The project's mesh over every device: the batch splits over the data axes.
    mesh = make_mesh(data=-1)
    generate_fn = runner.make_generate_fn(model, tokenizer, mesh=mesh)
    model_name = str(model_dir.resolve()) + (f" (dtype={args.dtype})" if args.dtype else "")
    results = runner.run_evaluation(
        benches,
        generate_fn,
        proto,
        args.out,
        model_name=model_name,
        is_writer=jax.process_index() == 0,
    )
    preds = {}
    if jax.process_index() == 0:  # only the writer has every file on a non-shared disk
        preds = {
            b: {s: runner.load_predictions(args.out, b, s) for s in per}
            for b, per in results.items()
        }
    return name, results, preds, proto


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.model and not args.compare:
        raise cli.UserError("give --model to evaluate, --compare RUN ... to compare, or both")
    try:
        # Several processes: a parent supervises the one that evaluates (a lost
        # peer is one line, exit 75), as for the trainer; logs in --out.
        status = supervisor.run_command(
            argv, args, prog=PROG, module="classkd_jax.evaluate", **_logs(args)
        )
    except ValueError as e:  # only some of the multi-process flags
        raise cli.UserError(str(e)) from None
    if status is not None:
        return status
    try:
        return _evaluate(args)
    except RuntimeError as error:  # JAX only now: bad paths fail fast, without its start-up
        import jax

        if not isinstance(error, jax.errors.JaxRuntimeError) or jax.process_count() == 1:
            raise
        supervisor.collective_failed(error, prog=PROG, **_logs(args))


def _logs(args) -> dict:
    """Where a multi-process evaluation's logs go, and what rerunning it does."""
    return dict(
        logdir=Path(args.out).expanduser().absolute(),
        name="evaluate",
        rerun="rerunning the command resumes from the seeds already scored",
    )


def _evaluate(args) -> int:
    runs: dict[str, runner.RunResults] = {}
    preds = {}
    extra = {}
    if args.model:
        name, results, run_preds, proto = evaluate_model(args)
        runs[name], preds[name] = results, run_preds
        extra = {"model": str(Path(args.model).resolve()), "protocol": proto.to_dict()}
    for name, path in _parse_compare(args.compare).items():
        if name in runs:
            raise cli.UserError(f"two runs are named {name!r}; rename one with NAME=DIR")
        runs[name] = runner.load_results(path)
    if args.model:
        import jax

        if jax.process_index() != 0:
            return 0
    paths = report.write_reports(args.out, runs, preds, extra)
    sys.stdout.write(paths["table"].read_text(encoding="utf-8"))
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=PROG))
