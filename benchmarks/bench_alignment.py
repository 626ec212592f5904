"""Host cost of cross-tokenizer rows (issue 32): aligning responses and building batches.

    python benchmarks/bench_alignment.py [--teacher-tokenizer DIR] [--examples 512] [--batch 8]
    python benchmarks/bench_alignment.py --demo [--run DIR]

The student tokenizer is the shipped synthetic one and the data the built-in
synthetic task (`configs/kd.py:size=tiny`'s); the teacher's default tokenizer
is a byte-level BPE (GPT-2/Qwen style, 400 tokens) trained here on the same
task's responses, so the two segment differently. Prints the one-off
alignment time per example (`training.data.build_cross`, done once per run
before training), the per-batch time of `CrossRows.add_teacher` (every
step, on the host) and of `SampleRetokenizer.add_teacher` (GKD's and ClassKD's
on-policy batches: samples re-tokenised for the teacher; here the prompts'
own responses cut to `--new` tokens stand for samples), each the best of `--reps`.

`--demo`: the cross-tokenizer testbed's scale instead
(`configs/demo.py:method=kd,teacher_tokenizer=sp`: the 2000-example
distillation set, 64 rows a step, the shipped second tokenizer for the
teacher). `--run DIR`: a train workdir of that config; its logged median
`step_time` gives the host's share of a step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _byte_bpe(texts, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def _median_step_time(workdir: str) -> float:
    import json
    from pathlib import Path

    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    times = [json.loads(line).get("step_time") for line in lines]
    return statistics.median(t for t in times if t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher-tokenizer", default="")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--demo", action="store_true", help="the cross-tokenizer testbed's scale")
    parser.add_argument("--run", default="", help="with --demo: a train workdir to compare with")
    args = parser.parse_args()

    from classkd_jax.config_utils import import_sibling
    from classkd_jax.data import pipeline
    from classkd_jax.models import load_tokenizer
    from classkd_jax.training import data as data_lib
    from classkd_jax.training import roles

    if args.demo:
        config = import_sibling("configs/x.py", "demo").get_config("method=kd,teacher_tokenizer=sp")
        args.examples, args.batch = config.data.synthetic.num_train, config.data.batch_size
        args.teacher_tokenizer = args.teacher_tokenizer or config.teacher.tokenizer
    else:
        config = import_sibling("configs/x.py", "kd").get_config("size=tiny")
    with config.unlocked():
        config.data.synthetic.num_train = args.examples
        config.data.batch_size = args.batch
        config.data.pack = False
    student, _ = roles.resolve_tokenizer(config)
    examples = pipeline.load_split(config.data, "train")
    train = pipeline.tokenize_examples_for(config.data, student, examples)
    if args.teacher_tokenizer:
        teacher = load_tokenizer(args.teacher_tokenizer)
    else:
        teacher = _byte_bpe([e.response for e in examples], 400)
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        cross = data_lib.build_cross(config, examples, train, student, teacher)
        times.append(time.perf_counter() - start)
    n = len(train)
    chunks = [a.num_chunks for a in cross.alignments]
    s_tokens = sum(len(r) for r in train.responses)
    t_tokens = sum(len(r) for r in cross.teacher.responses)
    print(
        f"{n} examples: alignment {min(times) / n * 1e3:.3f} ms/example "
        f"({min(times):.2f} s in all); response tokens student {s_tokens}, teacher "
        f"{t_tokens}; chunks {sum(chunks)} (median {statistics.median(chunks)} per example)"
    )
    it = pipeline.make_iterator(config.data, student, "train", kind="full", data=train)
    batches = [next(it) for _ in range(20)]
    per_batch = []
    for _ in range(args.reps):
        start = time.perf_counter()
        for b in batches:
            cross.add_teacher(b, train)
        per_batch.append((time.perf_counter() - start) / len(batches))
    out = cross.add_teacher(batches[0], train)
    one_to_one = np.mean(out["exact_mask"].sum(1) / out["first_mask"].sum(1))
    print(
        f"add_teacher: {min(per_batch) * 1e3:.3f} ms per batch of {args.batch} rows "
        f"(student rows {out['tokens'].shape}, teacher rows {out['teacher_tokens'].shape}); "
        f"share of one-token-each-side chunks {one_to_one:.2f}"
    )

    if args.run:
        step = _median_step_time(args.run)
        print(
            f"{args.run}: median logged step_time {step * 1e3:.0f} ms; add_teacher is "
            f"{min(per_batch) / step:.1%} of it; the one-off alignment "
            f"{min(times) / (step * config.steps):.1%} of {config.steps} such steps"
        )

    retok = data_lib.sample_retokenizer(config, examples, train, student, teacher)
    prompts = pipeline.make_iterator(
        config.data, student, "train", kind="prompt", data=train, global_batch_size=args.batch
    )
    fake = []
    for _ in range(20):
        p = next(prompts)
        tokens = np.zeros((len(p["index"]), args.new), np.int32)
        mask = np.zeros_like(tokens, bool)
        for row, i in enumerate(p["index"]):
            ids = train.responses[i][: args.new]
            tokens[row, : len(ids)], mask[row, : len(ids)] = ids, True
        sample = {"prompt_tokens": p["tokens"], "prompt_mask": p["mask"], "tokens": tokens}
        fake.append(({**sample, "mask": mask}, p["index"]))
    per_batch = []
    for _ in range(args.reps):
        start = time.perf_counter()
        for sample, index in fake:
            retok.add_teacher(sample, index)
        per_batch.append((time.perf_counter() - start) / len(fake))
    print(
        f"samples re-tokenised for the teacher: {min(per_batch) * 1e3:.3f} ms per batch of "
        f"{args.batch} rows of {args.new} new tokens"
    )


if __name__ == "__main__":
    main()
