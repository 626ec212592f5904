"""Running a comparison's training runs and scoring each, resumably.

    prepared = prepare(plan_runs(...))          # every run's config checked first
    results = run_all(prepared, "test", say)    # train (or resume), then score
    refs = score_references(prepared[0][1], "test", workdir, say)

Each run trains in this process through `classkd_jax.training.run.train`
(one start-up for the whole comparison; XLA's persistent cache serves the
compiles of later seeds). A run is done when `<run>/scores_<split>.json`
exists for the same train arguments: a rerun skips it. A run stopped part-way
(SIGTERM, Ctrl-C) resumes from its last checkpoint, and its wall-clock adds
up across the attempts (`<run>/timing.json`).
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from classkd_jax.cli import UserError
from classkd_jax.comparison import scoring
from classkd_jax.comparison.plan import RunSpec
from classkd_jax.evaluation.runner import write_json_atomic

Say = Callable[[str], None]


class Interrupted(Exception):
    """A run stopped before its last step (its exit status is `status`)."""

    def __init__(self, status: int, spec: RunSpec):
        super().__init__(f"{spec.row} seed {spec.seed} stopped (status {status})")
        self.status, self.spec = status, spec


@dataclasses.dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    metrics: dict  # rougeL, exact_match (0-100), n
    train_seconds: float  # the run's wall-clock in `train` (start-up and compiles included)
    steps: int


def prepare(specs: Sequence[RunSpec]) -> list[tuple[RunSpec, object]]:
    """Each run's config, parsed as `python -m classkd_jax.train` parses it and
    checked, before anything trains: a bad key or value fails the whole
    comparison at once, naming the run."""
    from classkd_jax.train import parse_flags
    from classkd_jax.training import checks

    out = []
    for spec in specs:
        try:
            config, _ = parse_flags(list(spec.argv))
            checks.validate(config)
        except (UserError, ValueError) as e:
            raise UserError(f"{spec.row} (seed {spec.seed}): {e}") from None
        out.append((spec, config))
    return out


class _Scorer:
    """Scores models on one split; the split's prompts are tokenised once per data config."""

    def __init__(self, split: str):
        self.split = split
        self._cache: dict[str, tuple] = {}

    def __call__(self, model, config, role: str = "student") -> tuple[dict, list[dict]]:
        from classkd_jax.training import roles
        from classkd_jax.training.run import make_mesh

        tokenizer, _ = roles.resolve_tokenizer(config)
        if role == "teacher" and (own := roles.resolve_teacher_tokenizer(config)):
            config, tokenizer = teacher_view(config), own[0]
        data = json.loads(config.data.to_json_best_effort())
        data.pop("seed", None)  # shuffling; not what the split holds
        key = json.dumps([data, len(tokenizer)], sort_keys=True)
        if key not in self._cache:
            self._cache[key] = scoring.split_prompts(config, tokenizer, self.split)
        examples, prompts = self._cache[key]
        return scoring.score_model(model, examples, prompts, config, tokenizer, make_mesh(config))


def teacher_view(config):
    """`config` with the data read as a teacher with its own tokenizer reads it
    (`teacher.template`, `teacher.add_bos`): its prompts for scoring it."""
    from classkd_jax.training.data import teacher_bos, teacher_template

    view = config.copy_and_resolve_references()
    view.unlock()
    view.data.template = teacher_template(config)
    view.data.add_bos = teacher_bos(config)
    return view


def _finished(workdir: Path, steps: int) -> bool:
    from classkd_jax.training.loop import exported_step

    return steps > 0 and exported_step(workdir / "student_hf") == steps


def _train(spec: RunSpec, config) -> float:
    """Trains (or resumes) the run; returns its wall-clock over every attempt."""
    from classkd_jax.training.run import train

    timing_path = spec.workdir / "timing.json"
    before = (scoring.read_json(timing_path) or {}).get("train_seconds", 0.0)
    if _finished(spec.workdir, int(config.steps)):
        return float(before)
    start = time.perf_counter()
    try:
        status = train(config, spec.workdir)
    finally:
        total = float(before) + time.perf_counter() - start
        write_json_atomic(timing_path, {"train_seconds": total})
    if status != 0:
        raise Interrupted(status, spec)
    return total


def teacher_cache_dir(root: Path, config) -> Path:
    """`root/teacher_cache/<key>`: the cache of what a run's teacher cache depends on
    (teacher, data but its shuffling seeds, loss temperature, draws; the run's seed
    only for a random-init teacher), so methods and seeds that agree share it."""
    from classkd_jax.teacher_cache.builder import cache_temperature

    teacher = {k: v for k, v in json.loads(config.teacher.to_json_best_effort()).items()}
    teacher.pop("cache", None)
    data = json.loads(config.data.to_json_best_effort())
    c = config.teacher_cache
    key = {
        "teacher": teacher,
        "teacher_seed": None if config.teacher.path else int(config.seed),
        "data": {k: v for k, v in data.items() if k not in ("seed", "lm_seed")},
        "temperature": cache_temperature(config),
        "draws": [int(c.num_samples), int(c.top_k), int(c.seed)],
    }
    digest = zlib.crc32(json.dumps(key, sort_keys=True).encode())
    return Path(root) / "teacher_cache" / f"{digest:08x}"


def _resolve_cache(spec: RunSpec, config, say: Say) -> None:
    """`teacher.cache=auto`: the shared cache's directory, built if not yet whole."""
    from classkd_jax.teacher_cache import builder

    if config.teacher.cache != "auto":
        return
    where = teacher_cache_dir(spec.workdir.parents[2], config)
    with config.unlocked():
        config.teacher.cache = str(where)
    result = builder.build(config, where, message=lambda line: say(f"teacher cache: {line}"))
    if result["built"]:
        say(f"teacher cache: {builder.describe(where)}")


def run_all(prepared, split: str, say: Say) -> list[RunResult]:
    """Trains and scores every run not done yet; returns all results, in plan order."""
    from classkd_jax.models import load_hf

    score = _Scorer(split)
    results = []
    for i, (spec, config) in enumerate(prepared, 1):
        where = f"[{i}/{len(prepared)}] {spec.row} seed {spec.seed}"
        path = spec.workdir / f"scores_{split}.json"
        done = scoring.read_json(path)
        if done and done.get("argv") == list(spec.argv):
            say(f"{where}: done ({path})")
            metrics = {k: done[k] for k in ("rougeL", "exact_match", "n")}
            results.append(RunResult(spec, metrics, done["train_seconds"], done["steps"]))
            continue
        _resolve_cache(spec, config, say)
        say(f"{where}: training -> {spec.workdir}")
        seconds = _train(spec, config)
        steps = int(json.loads((spec.workdir / "config.json").read_text())["steps"])
        say(f"{where}: scoring the {split} split")
        metrics, records = score(load_hf(spec.workdir / "student_hf"), config)
        write_json_atomic(
            path,
            {
                "argv": list(spec.argv),
                "split": split,
                **metrics,
                "train_seconds": seconds,
                "steps": steps,
                "records": records,
            },
        )
        say(
            f"{where}: ROUGE-L {metrics['rougeL']:.2f}, exact match "
            f"{metrics['exact_match']:.2f} (n={metrics['n']}), trained in {seconds:.0f} s"
        )
        results.append(RunResult(spec, metrics, seconds, steps))
    return results


REFERENCES = (("teacher", "teacher"), ("student_init", "student"))


def score_references(config, split: str, workdir: Path, say: Say) -> dict[str, dict]:
    """The teacher's and the student initialisation's scores, when the config
    loads them from Hugging Face directories (random-init roles have none).

    `train_seconds` is read from the model directory's TRAINED.json when it
    has one (the shipped demo models do)."""
    from classkd_jax.models import load_hf

    score = _Scorer(split)
    out = {}
    for name, role in REFERENCES:
        model_dir = Path(config[role].path).expanduser() if config[role].path else None
        if model_dir is None or not (model_dir / "config.json").is_file():
            continue
        path = workdir / "references" / name / f"scores_{split}.json"
        evaluation = json.loads(config.eval.to_json_best_effort())
        key = {"model": str(model_dir.resolve()), "eval": evaluation}
        if role == "teacher" and config.teacher.tokenizer:  # scored in its own tokens
            key["tokenizer"] = str(config.teacher.tokenizer)
        done = scoring.read_json(path)
        if not (done and done.get("key") == key):
            say(f"scoring the {name} ({model_dir}) on the {split} split")
            metrics, records = score(load_hf(model_dir), config, role)
            trained = scoring.read_json(model_dir / "TRAINED.json") or {}
            done = {
                "key": key,
                **metrics,
                "train_seconds": trained.get("train_seconds"),
                "steps": trained.get("steps"),
                "records": records,
            }
            write_json_atomic(path, done)
        out[name] = {k: done[k] for k in ("rougeL", "exact_match", "n", "train_seconds", "steps")}
    return out
