"""Validation during training: dev loss and dev ROUGE-L of greedy samples.

Every `eval_every` steps the student is scored on the dev split:
  dev_loss         token-mean cross-entropy on the dev responses (what the
                   protocol selects student initialisations by);
  dev_kd           KL(teacher || student) on the same tokens (distillation methods
                   whose teacher shares the student's tokenizer; with teacher.cache
                   and no teacher loaded, the cache's unbiased estimate from its
                   draws, when its temperature is 1);
  dev_rougeL, dev_exact_match
                   of greedy completions of the first `eval.num_examples` dev
                   prompts (`eval.max_new_tokens` new tokens; the protocol
                   selects checkpoints by dev ROUGE-L), prompts tokenised
                   exactly as in training.
The completions go to `DIR/validation/step<N>.jsonl`. Generation runs in
batches and stops between two of them when the run is asked to stop, so a
preempted run is not held up (the checkpoint then records the evaluation as
pending, and the resumed run does it first).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from classkd_jax import losses, sharding
from classkd_jax.data import pipeline, to_global
from classkd_jax.evaluation import runner
from classkd_jax.sampling import complete_token_ids, data_axes
from classkd_jax.training.data import SCORED_KEYS, TrainData
from classkd_jax.training.state import params_shardings
from classkd_jax.training.step import CACHE_KEYS, LossPath, head, hidden_states


def _dev_sums(student_cfg, teacher_cfg, path: LossPath, num_samples: int = 0):
    """(student params, teacher params | None, batch) -> {'ce', 'fkl', 'count'} sums.

    `num_samples` > 0: without a teacher, 'fkl' is the teacher cache's estimate
    from the batch's `CACHE_KEYS` (N draws, c / N weights: unbiased)."""

    def token_fn(logits, ex):
        ce = losses.cross_entropy_per_token(logits[0], ex["targets"])
        aux = {"ce": ce}
        if len(logits) > 1:
            aux["fkl"] = losses.forward_kl_per_token(logits[0], logits[1])
        elif num_samples:
            w = losses.cache_weights(ex["cache_counts"], ex["cache_logp"], num_samples)
            aux["fkl"] = losses.sampled_kl_per_token(
                logits[0], ex["cache_ids"], w, ex["cache_logp"]
            )
        return ce, aux

    def sums(params, teacher, batch):
        hiddens = [hidden_states(student_cfg, params, batch)]
        heads = [head(student_cfg, params)]
        if teacher is not None:
            hiddens.append(hidden_states(teacher_cfg, teacher, batch))
            heads.append(head(teacher_cfg, teacher))
        _, count, aux = losses.token_loss(
            token_fn,
            hiddens,
            [w for w, _ in heads],
            batch["loss_mask"],
            {"targets": batch["targets"], **{k: batch[k] for k in CACHE_KEYS if k in batch}},
            impl=path.impl,
            vocab_size=path.vocab_size,
            chunk_size=path.chunk_size,
            vocab_major=[vm for _, vm in heads],
            softcaps=[student_cfg.final_logit_softcap]
            + ([teacher_cfg.final_logit_softcap] if teacher is not None else []),
        )
        return {**aux, "count": count}

    return sums


def greedy_texts(
    model,
    prompts,
    tokenizer,
    *,
    max_new_tokens: int,
    batch_size: int,
    pad_id: int,
    mesh,
    prompt_buckets,
    should_stop: Callable[[], bool] = lambda: False,
    decode_layout: str = "tensor",
) -> list[str] | None:
    """Greedy completions (stripped text) of token-id `prompts`, `batch_size` at a
    time; None when `should_stop()` turned true between two batches.

    `model` is `(ModelConfig, params)`; the prompts are tokenised exactly as in
    training (`TokenizedData.prompts`), so validation, `compare` and the demo
    score what the model was trained to answer.
    """
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        if should_stop():
            return None
        ids = complete_token_ids(
            model,
            prompts[start : start + batch_size],
            max_new_tokens=max_new_tokens,
            greedy=True,
            batch_size=batch_size,
            pad_id=pad_id,
            mesh=mesh,
            prompt_buckets=prompt_buckets,
            decode_layout=decode_layout,
        )
        texts += tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [t.strip() for t in texts]


class Validator:
    """Scores the student on the dev split (see the module docstring)."""

    def __init__(self, config, data: TrainData, tokenizer, models, mesh, path: LossPath):
        self.config, self.data, self.tokenizer, self.mesh = config, data, tokenizer, mesh
        self.student_cfg = models.student.config
        # A teacher with another tokenizer scores other tokens: no dev_kd.
        shared = models.teacher is not None and getattr(models, "cross", None) is None
        self.teacher_cfg = models.teacher.config if shared else None
        n = min(int(config.eval.num_examples), len(data.dev_examples))
        self.examples = data.dev_examples[:n]
        self.prompts = [data.dev.prompts[i] for i in range(n)]
        rows = NamedSharding(mesh, P(data_axes(mesh) or None))
        self.rows = rows
        student_sh = params_shardings(self.student_cfg, mesh)
        teacher_sh = params_shardings(self.teacher_cfg, mesh) if self.teacher_cfg else None
        # the dev split's cached draws stand in for an unloaded teacher (`dev_loss`)
        self.dev_cache = data.dev_cache if self.teacher_cfg is None else None
        draws = int(config.teacher_cache.num_samples) if self.dev_cache is not None else 0
        self._sums = sharding.mesh_jit(
            _dev_sums(self.student_cfg, self.teacher_cfg, path, draws),
            mesh,
            in_shardings=(student_sh, teacher_sh, rows),
            out_shardings=NamedSharding(mesh, P()),
        )

    def dev_loss(self, params, teacher) -> dict[str, float]:
        it = pipeline.make_iterator(
            self.config.data, self.tokenizer, "dev", kind="full", data=self.data.dev
        )
        totals: dict[str, Any] = {}
        for batch in it:
            batch = {k: batch[k] for k in SCORED_KEYS}
            if self.dev_cache is not None:
                batch.update(self.dev_cache.batch_arrays(batch))
            batch = to_global(batch, self.rows)
            out = self._sums(params, teacher, batch)
            totals = out if not totals else jax.tree.map(jnp.add, totals, out)
        totals = {k: float(v) for k, v in jax.device_get(totals).items()}
        count = max(totals.pop("count"), 1.0)
        result = {"dev_loss": totals["ce"] / count}
        if "fkl" in totals:
            result["dev_kd"] = totals["fkl"] / count
        return result

    def generate(self, params, should_stop: Callable[[], bool]) -> list[str] | None:
        """Greedy completions of the dev prompts; None when stopped part-way."""
        e = self.config.eval
        return greedy_texts(
            (self.student_cfg, params),
            self.prompts,
            self.tokenizer,
            max_new_tokens=int(e.max_new_tokens),
            batch_size=int(e.batch_size),
            pad_id=int(self.data.train.pad_id),
            mesh=self.mesh,
            prompt_buckets=tuple(self.config.data.prompt_buckets),
            should_stop=should_stop,
            decode_layout=str(self.config.sampling.decode_layout),
        )

    def run(self, params, teacher, step: int, workdir: Path, is_writer: bool, should_stop):
        """All dev metrics at `step`, or None when the run was asked to stop meanwhile."""
        texts = self.generate(params, should_stop) if self.examples else []
        if texts is None:
            return None
        metrics = self.dev_loss(params, teacher if self.teacher_cfg is not None else None)
        if self.examples:
            records = runner.score_predictions(self.examples, texts)
            scores = runner.aggregate(records)
            metrics["dev_rougeL"] = scores["rougeL"]
            metrics["dev_exact_match"] = scores["exact_match"]
            if is_writer:
                out = Path(workdir) / "validation" / f"step{step}.jsonl"
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("w", encoding="utf-8") as f:
                    for r in records:
                        f.write(json.dumps(r, ensure_ascii=False) + "\n")
        return metrics
