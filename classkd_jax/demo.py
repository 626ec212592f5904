"""The quick-start job: SFT teacher -> word-level KD student, with SFT as reference.

    python -m classkd_jax.demo --config configs/demo.py [--config.workdir=runs/demo]

Reads top to bottom: config -> mesh -> data -> models and states -> jitted
steps -> loops -> evaluation -> export. See `configs/demo.py` for what it
shows and how long it takes. Writes to `workdir`: `config.json`,
`metrics.jsonl` (training curves), `results.json` and `results.md` (test
ROUGE-L / exact match of each model), `student_hf/` (the distilled student
as a Hugging Face directory that `transformers` loads) and `checkpoints/` (every
trained model by role, `teacher`, `student` and `sft_student`, as a
`classkd_jax.checkpoint` that `python -m classkd_jax.generate --model` reads).
A rerun in the same workdir replaces these once its own models are trained.
Library logs (JAX, Orbax, transformers) go to `demo.log` there; the terminal
shows the training progress and the results.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import sys
import time
from typing import Any

import jax
from absl import app, logging
from ml_collections import config_flags

from classkd_jax import checkpoint, steps
from classkd_jax.data import (
    BatchIterator,
    EvalExample,
    format_prompt,
    synthetic,
    to_global,
    tokenize_examples,
)
from classkd_jax.evaluation import protocol as eval_protocol
from classkd_jax.evaluation import runner as eval_runner
from classkd_jax.models import ModelConfig, get_preset, load_tokenizer, save_hf
from classkd_jax.sharding import make_mesh
from classkd_jax.training import logs

_DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Demo config file.")


def model_config(role: Any, tokenizer: Any, context: int) -> ModelConfig:
    """A role's `ModelConfig`: its preset and overrides, vocabulary from the tokenizer.

    `context` (the longest prompt plus the generation budget, or the longest
    training row) sets `max_position_embeddings`, which the sampler checks.
    """
    return get_preset(
        role.preset,
        **dict(role.overrides),
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=context,
    )


def train_role(name, config, cfg_train, train_data, mesh, rng, writer, *, log_every, **step_kw):
    """Trains one model for `cfg_train.steps` steps; returns its final `TrainState`.

    Every role iterates the same data order (same seed), so KD and SFT
    students see identical batches.
    """
    optimizer = steps.make_optimizer(
        cfg_train.lr, cfg_train.steps, warmup_steps=cfg_train.warmup_steps
    )
    teacher_params = step_kw.pop("teacher_params", None)
    state = steps.init_state(config, optimizer, rng, mesh)
    step_fn = steps.make_train_step(config, optimizer, mesh, **step_kw)
    batches = train_data()
    start = time.perf_counter()
    for i in range(1, cfg_train.steps + 1):
        batch = to_global(next(batches), steps.batch_sharding(mesh))
        batch = {
            k: batch[k] for k in ("tokens", "positions", "segment_ids", "targets", "loss_mask")
        }
        state, metrics = step_fn(state, teacher_params, batch)
        if i % log_every == 0 or i == cfg_train.steps:
            m = jax.device_get(metrics)  # the only host sync: once per log step
            loss = float(m["loss_sum"]) / max(float(m["tokens"]), 1.0)
            if not math.isfinite(loss):
                raise FloatingPointError(f"{name}: loss is {loss} at step {i}")
            rate = i / (time.perf_counter() - start)
            _say(f"{name} step {i}/{cfg_train.steps} loss {loss:.4f} ({rate:.1f} steps/s)")
            writer.write(json.dumps({"role": name, "step": i, "loss": loss}) + "\n")
            writer.flush()
    return state


def evaluate(models: dict, examples, tokenizer, mesh, cfg_eval, max_prompt_length: int):
    """Greedy test-set ROUGE-L and exact match of each `(ModelConfig, params)`."""
    protocol = eval_protocol.EvalProtocol(
        max_prompt_length=max_prompt_length,
        max_new_tokens=cfg_eval.max_new_tokens,
        greedy=True,
        no_repeat_ngram_size=0,
        seeds=(0,),
        batch_size=cfg_eval.batch_size,
    )
    results = {}
    for name, model in models.items():
        generate = eval_runner.make_generate_fn(model, tokenizer, mesh=mesh)
        metrics, _ = eval_runner.evaluate_with_generate(examples, generate, protocol, seed=0)
        results[name] = metrics
        _say(
            f"{name}: ROUGE-L {metrics['rougeL']:.2f}  EM {metrics['exact_match']:.2f}  "
            f"(n={metrics['n']})"
        )
    return results


ROLES = {"teacher-sft": "teacher", "student-kd": "student", "student-sft": "sft_student"}


def save_models(directory: pathlib.Path, step: int, models: dict) -> None:
    """Writes the trained models as one checkpoint step, by role (replacing an
    earlier run's checkpoints only now that this run's models exist)."""
    if directory.exists():
        shutil.rmtree(directory)
    meta = {
        "models": {ROLES[name]: checkpoint.model_meta(cfg) for name, (cfg, _) in models.items()},
        "tokenizer": str(synthetic.synthetic_tokenizer_path()),
    }
    items = {f"{ROLES[name]}_params": params for name, (_, params) in models.items()}
    checkpoint.save_checkpoint(directory, step, items, meta)


def results_table(results: dict[str, dict], steps_by_model: dict[str, int]) -> str:
    """A Markdown table of the test metrics."""
    lines = ["| model | train steps | ROUGE-L | exact match | n |", "|---|---|---|---|---|"]
    for name, m in results.items():
        lines.append(
            f"| {name} | {steps_by_model[name]} | {m['rougeL']:.2f} | "
            f"{m['exact_match']:.2f} | {m['n']} |"
        )
    return "\n".join(lines) + "\n"


def _say(line: str) -> None:
    """A progress line on the terminal (library logs go to `workdir/demo.log`)."""
    print(line, file=sys.stderr, flush=True)


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    workdir = pathlib.Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with logs.to_file(workdir / "demo.log"):
        run(config, workdir)


def run(config, workdir: pathlib.Path) -> None:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    mesh = make_mesh(**config.mesh)
    logging.info(
        "process %d/%d, %d devices, mesh %s, global batch %d rows",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
        dict(mesh.shape),
        config.data.batch_size,
    )

    tokenizer = load_tokenizer(synthetic.synthetic_tokenizer_path())
    task = synthetic.make_synthetic_task(
        config.data.seed,
        num_train=config.data.num_train,
        num_dev=8,
        num_test=config.data.num_test,
    )
    template = synthetic.DEFAULT_TEMPLATE
    train = tokenize_examples(
        task["train"],
        tokenizer,
        template=template,
        max_prompt_length=config.data.max_prompt_length,
        max_length=config.data.max_length,
    )
    test = [
        EvalExample(
            ex.uid,
            format_prompt(ex.instruction, ex.input, template),
            list(ex.responses),
            ex.instruction,
            ex.input,
        )
        for ex in task["test"]
    ]

    def train_data():
        return BatchIterator(
            train,
            kind="full",
            global_batch_size=config.data.batch_size,
            seed=config.data.seed,
            length_buckets=(config.data.max_length,),
            pack=True,
        )

    context = max(
        config.data.max_length, config.data.max_prompt_length + config.eval.max_new_tokens
    )
    teacher_cfg = model_config(config.teacher, tokenizer, context)
    student_cfg = model_config(config.student, tokenizer, context)
    rng = jax.random.key(config.seed)
    with open(workdir / "metrics.jsonl", "w") as writer:
        common = dict(train_data=train_data, mesh=mesh, writer=writer, log_every=config.log_every)
        teacher = train_role(
            "teacher-sft",
            teacher_cfg,
            config.teacher_train,
            rng=jax.random.fold_in(rng, 0),
            loss="sft",
            **common,
        )
        models = {"teacher-sft": (teacher_cfg, teacher.params)}
        student = train_role(
            "student-kd",
            student_cfg,
            config.student_train,
            rng=jax.random.fold_in(rng, 1),
            loss="kd",
            teacher_config=teacher_cfg,
            teacher_params=teacher.params,
            divergence=config.kd.divergence,
            temperature=config.kd.temperature,
            **common,
        )
        models["student-kd"] = (student_cfg, student.params)
        if config.compare_sft:
            sft = train_role(
                "student-sft",
                student_cfg,
                config.student_train,
                rng=jax.random.fold_in(rng, 1),
                loss="sft",
                **common,
            )
            models["student-sft"] = (student_cfg, sft.params)

    # Export first: the trained models are kept whatever happens in evaluation.
    save_hf(workdir / "student_hf", student_cfg, jax.device_get(student.params), tokenizer)
    save_models(workdir / "checkpoints", config.student_train.steps, models)
    results = evaluate(models, test, tokenizer, mesh, config.eval, config.data.max_prompt_length)
    steps_by_model = {"teacher-sft": config.teacher_train.steps}
    steps_by_model.update({k: config.student_train.steps for k in models if k != "teacher-sft"})
    table = results_table(results, steps_by_model)
    (workdir / "results.md").write_text(table)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(table)
    print(f"distilled student (Hugging Face format): {workdir / 'student_hf'}")
    print(f"all trained models (classkd-jax checkpoint, by role): {workdir / 'checkpoints'}")


if __name__ == "__main__":
    app.run(main)
