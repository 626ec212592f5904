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

from classkd_jax.cli import UserError
from classkd_jax.data import (
    BatchIterator,
    EvalExample,
    format_prompt,
    pipeline,
    to_global,
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
        out = {k: batch[k] for k in SCORED_KEYS}
        if self.cache is not None:
            out.update(self.cache.batch_arrays(out))
        return to_global(out, rows)

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


def build(config, tokenizer, *, sampling_batch: int, needs_prompts: bool) -> TrainData:
    """Loads, tokenises and wraps the splits (errors name the config key)."""
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
    return TrainData(train, off, prompts, dev, dev_examples, lm)


def _empty_train_message(cfg) -> str:
    if cfg.source == "benchmark":
        return (
            f"data.source={cfg.source} ({cfg.name} under data.data_dir={cfg.data_dir}): the "
            "training split is empty (its raw.jsonl holds no more lines than the dev split: "
            "1000 for Dolly, or meta.json's dev_num)"
        )
    return f"data.source={cfg.source}, data.path={cfg.path}: no training examples"
