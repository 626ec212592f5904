"""The trainer's data: the packed off-policy stream, the prompt stream for
sampling, and the dev split, from the config's `data` block (`configs/data.py`).

Both training streams iterate the same tokenised training split; the prompt
stream (its own shuffling seed) advances only on steps that sample, the
off-policy stream only on steps that read dataset responses, so each
method's batches are a function of the seed and the step alone. Their
positions are part of every checkpoint (`state()` / `restore()`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from classkd_jax.cli import UserError
from classkd_jax.data import (
    BatchIterator,
    EvalExample,
    cross_rows,
    cross_samples,
    format_prompt,
    pipeline,
    to_global,
    tokenize,
)
from classkd_jax.data.tokenize import TokenizedData
from classkd_jax.training import checks

SCORED_KEYS = ("tokens", "positions", "segment_ids", "targets", "loss_mask")
PROMPT_SEED_OFFSET = 1_000_003  # the prompt stream's shuffling seed is data.seed + this
LM_METHODS = ("minillm", "distillm")  # the methods that add the plain-text LM loss


@dataclasses.dataclass
class TrainData:
    """Attributes:
    train: the tokenised training split.
    off: packed prompt+response batches of `data.batch_size` rows.
    prompts: left-padded prompt batches of the sampling batch size, or None.
    dev: the tokenised dev split, or None; dev_examples its prompts and references.
    """

    train: TokenizedData
    off: BatchIterator
    prompts: BatchIterator | None
    dev: TokenizedData | None
    dev_examples: list[EvalExample]
    lm: BatchIterator | None = None  # the plain-text stream (data.lm_path), if any
    cross: cross_rows.CrossRows | None = None  # a teacher with another tokenizer's rows
    cross_samples: cross_samples.SampleRetokenizer | None = None  # ... and the samples'
    # teacher.cache: adds the cached teacher's `cache_*` [B, T, W] arrays to every
    # off-policy batch (`classkd_jax.teacher_cache.Lookup`); None: the live teacher
    cache: Any = None
    dev_cache: Any = None  # the same for the dev split (the validation's dev KD), if cached

    def state(self) -> dict[str, Any]:
        out = {"off": self.off.get_state()}
        if self.prompts is not None:
            out["prompts"] = self.prompts.get_state()
        if self.lm is not None:
            out["lm"] = self.lm.get_state()
        return out

    def restore(self, state: dict[str, Any]) -> None:
        self.off.set_state(state["off"])
        if self.prompts is not None:
            self.prompts.set_state(state["prompts"])
        if self.lm is not None:
            self.lm.set_state(state["lm"])

    def next_lm(self, rows) -> dict:
        """The next packed plain-text batch as global arrays."""
        batch = next(self.lm)
        return to_global({k: batch[k] for k in SCORED_KEYS}, rows)

    def with_train(self, config, tokenizer, train: TokenizedData) -> TrainData:
        """The same streams over another tokenised training set (SeqKD's teacher
        responses for the same prompts): fresh iterators at position 0."""
        off = pipeline.make_iterator(config.data, tokenizer, "train", kind="full", data=train)
        return dataclasses.replace(self, train=train, off=off)

    def next_off(self, rows) -> dict:
        """The next off-policy batch as global arrays, rows sharded by `rows`."""
        batch = next(self.off)
        keys = SCORED_KEYS
        if self.cross is not None:
            batch = self.cross.add_teacher(batch, self.train)
            keys = SCORED_KEYS + cross_rows.CROSS_KEYS
        out = {k: batch[k] for k in keys}
        if self.cache is not None:
            out.update(self.cache.batch_arrays(out))
        return to_global(out, rows)

    def add_teacher_to_samples(self, samples: dict, index, rows) -> dict:
        """The student's samples (global device arrays) plus the teacher's rows and
        the chunk arrays (`cross_samples`), as global arrays sharded by `rows`
        (one process: its rows are the global batch)."""
        import jax

        host = {k: np.asarray(jax.device_get(v)) for k, v in samples.items()}
        return to_global(self.cross_samples.add_teacher(host, index), rows)

    def next_prompts_indexed(self, rows) -> tuple[Any, Any, np.ndarray]:
        """`next_prompts` and the host's `[B] int32` training entries of its rows."""
        batch = next(self.prompts)
        out = to_global({"tokens": batch["tokens"], "mask": batch["mask"].astype(bool)}, rows)
        return out["tokens"], out["mask"], batch["index"]

    def next_prompts(self, rows) -> tuple[Any, Any]:
        """The next prompt batch: (tokens [B, P] int32, mask [B, P] bool) global arrays."""
        batch = next(self.prompts)
        out = to_global({"tokens": batch["tokens"], "mask": batch["mask"].astype(bool)}, rows)
        return out["tokens"], out["mask"]


def eval_examples(examples, data: TokenizedData, template: str) -> list[EvalExample]:
    """The prompts (formatted as in training) and references of the examples
    that survived tokenisation, in `data`'s order."""
    out = []
    for i in data.source_index:
        ex = examples[int(i)]
        prompt = format_prompt(ex.instruction, ex.input, template)
        out.append(EvalExample(ex.uid, prompt, list(ex.responses), ex.instruction, ex.input))
    return out


def teacher_template(config) -> str:
    """The teacher's prompt template (`teacher.template`, else `data.template`)."""
    return config.teacher.template or config.data.template


def teacher_bos(config) -> bool:
    """Whether the teacher's prompts start with its BOS (`teacher.add_bos`, else `data.add_bos`)."""
    own = config.teacher.get("add_bos")
    return bool(config.data.add_bos if own is None else own)


def teacher_tokenized(config, examples, train: TokenizedData, teacher_tokenizer):
    """The examples the student kept, in the teacher's template and tokens (prompts
    cut from the left rather than dropped, so both keep the same ones), entry i
    for `train`'s entry i."""
    cfg = config.data
    kept = [examples[int(i)] for i in train.source_index]
    try:
        return tokenize.tokenize_examples(
            kept,
            teacher_tokenizer,
            template=teacher_template(config),
            max_prompt_length=cfg.max_prompt_length,
            max_length=cfg.max_length,
            add_bos=teacher_bos(config),
            long_prompts="truncate",
        )
    except ValueError as e:  # e.g. add_bos with a tokenizer that has no BOS
        raise UserError(f"teacher.tokenizer={config.teacher.tokenizer}: {e}") from None


def build_cross(config, examples, train: TokenizedData, tokenizer, teacher_tokenizer):
    """The teacher's tokenisation of the examples the student kept (`teacher.template`,
    prompts cut from the left rather than dropped, so both keep the same ones) and
    every response's alignment (`data.cross_rows`)."""
    from classkd_jax.data import vocab_map

    kept = [examples[int(i)] for i in train.source_index]
    teacher = teacher_tokenized(config, examples, train, teacher_tokenizer)
    eos = (tokenize.special_ids(tokenizer)[0], tokenize.special_ids(teacher_tokenizer)[0])
    spellings = (vocab_map.token_bytes(tokenizer), vocab_map.token_bytes(teacher_tokenizer))
    aligns = [
        cross_rows.response_alignment(
            ex.response,
            train.responses[i],
            teacher.responses[i],
            (tokenizer, teacher_tokenizer),
            eos,
            spellings,
        )
        for i, ex in enumerate(kept)
    ]
    return cross_rows.CrossRows(teacher, aligns, tuple(config.data.length_buckets))


def build(
    config, tokenizer, *, sampling_batch: int, needs_prompts: bool, teacher_tokenizer=None
) -> TrainData:
    """Loads, tokenises and wraps the splits (errors name the config key);
    `teacher_tokenizer`: a teacher's own tokenizer (cross-tokenizer KD rows)."""
    cfg = config.data
    train_examples = pipeline.load_split(cfg, "train")
    if not train_examples:
        raise UserError(_empty_train_message(cfg))
    train = pipeline.tokenize_examples_for(cfg, tokenizer, train_examples)
    off = pipeline.make_iterator(cfg, tokenizer, "train", kind="full", data=train)
    prompts = None
    if needs_prompts:
        prompts = pipeline.make_iterator(
            cfg,
            tokenizer,
            "train",
            kind="prompt",
            data=train,
            global_batch_size=sampling_batch,
            seed=int(cfg.seed) + PROMPT_SEED_OFFSET,
        )
    dev, dev_examples = None, []
    if checks.validates(config):
        examples = pipeline.load_split(cfg, "dev")
        if not examples:
            raise UserError(
                f"eval_every={config.eval_every} / eval_every_epochs="
                f"{config.eval_every_epochs} but the dev split is empty "
                f"(data.dev_num={cfg.dev_num}, data.dev_path={cfg.dev_path!r}); give a dev "
                "split or set eval_every=0"
            )
        dev = pipeline.tokenize_examples_for(cfg, tokenizer, examples)
        dev_examples = eval_examples(examples, dev, cfg.template)
    lm = None
    if config.method in LM_METHODS and cfg.lm_path:
        try:
            lm = pipeline.make_lm_iterator(cfg, tokenizer)
        except (OSError, ValueError) as e:
            message = str(e)
            if "data.lm_path" not in message:
                message = f"data.lm_path={cfg.lm_path!r}: {message}"
            raise UserError(message) from None
    cross = samples = None
    if teacher_tokenizer is not None:
        cross = build_cross(config, train_examples, train, tokenizer, teacher_tokenizer)
        if needs_prompts:
            samples = sample_retokenizer(
                config, train_examples, train, tokenizer, teacher_tokenizer
            )
    return TrainData(train, off, prompts, dev, dev_examples, lm, cross, samples)


def sample_retokenizer(config, examples, train: TokenizedData, tokenizer, teacher_tokenizer):
    """Re-tokenises the student's samples for a teacher with another tokenizer."""
    from classkd_jax.data import vocab_map

    cfg = config.data
    spellings = (vocab_map.token_bytes(tokenizer), vocab_map.token_bytes(teacher_tokenizer))
    return cross_samples.SampleRetokenizer(
        examples=list(examples),
        source_index=train.source_index,
        student=tokenizer,
        teacher=teacher_tokenizer,
        spellings=spellings,
        template=teacher_template(config),
        add_bos=teacher_bos(config),
        eos=(tokenize.special_ids(tokenizer)[0], tokenize.special_ids(teacher_tokenizer)[0]),
        pad=tokenize.special_ids(teacher_tokenizer)[1],
        max_prompt_length=int(cfg.max_prompt_length),
        buckets=teacher_sample_buckets(config),
        student_prepends=vocab_map.prepends_space(tokenizer, spellings[0]),
    )


def teacher_sample_buckets(config) -> tuple[int, ...]:
    """The teacher's padded row lengths of the student's samples re-tokenised for it
    (`cross_samples`): each prompt bucket plus twice `sampling.max_new_tokens` (the
    teacher's completion may take more tokens than the student's)."""
    new = int(config.sampling.max_new_tokens)
    return tuple(int(b) + 2 * new for b in config.data.prompt_buckets)


def _empty_train_message(cfg) -> str:
    if cfg.source == "benchmark":
        return (
            f"data.source={cfg.source} ({cfg.name} under data.data_dir={cfg.data_dir}): the "
            "training split is empty (its raw.jsonl holds no more lines than the dev split: "
            "1000 for Dolly, or meta.json's dev_num)"
        )
    return f"data.source={cfg.source}, data.path={cfg.path}: no training examples"
