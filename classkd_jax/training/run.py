"""One training run, top to bottom: what `python -m classkd_jax.train` does.

    train(config, workdir) -> exit status

config -> mesh -> tokenizer and the roles' sources (checked before any weight
loads) -> data -> steps -> config.json -> states (fresh or restored) -> the
jitted step, the sampler plan, the validator -> the loop -> the export of the
student to `workdir/student_hf`. `classkd_jax/train.py` lists what lands in
the workdir.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np

from classkd_jax import checkpoint, cli, sharding, supervisor
from classkd_jax.data import pipeline, vocab_map
from classkd_jax.data.tokenize import special_ids
from classkd_jax.models import save_hf
from classkd_jax.sampling import data_axes
from classkd_jax.training import checks, logs, optim, roles, workdir_lock
from classkd_jax.training import data as data_lib
from classkd_jax.training import flops as flops_lib
from classkd_jax.training import seqkd as seqkd_lib
from classkd_jax.training.checkpoints import RunCheckpoints
from classkd_jax.training.loop import Run, StopSignal, exported_step, run_loop
from classkd_jax.training.reporting import Reporter
from classkd_jax.training.rollout import BatchPlan
from classkd_jax.training.state import (
    abstract_run_state,
    init_run_state,
    params_shardings,
    run_state_shardings,
)
from classkd_jax.training.step import Models, Role, StepBuilder
from classkd_jax.training.validation import Validator

EXIT_STOPPED = {"SIGTERM": 143, "SIGINT": 130}
PROG = "python -m classkd_jax.train"


def make_mesh(config, devices=None) -> jax.sharding.Mesh:
    """The config's mesh over `devices` (default all of JAX's; compile-only devices
    of another topology for `classkd_jax.compile`)."""
    m = config.mesh
    count = jax.device_count() if devices is None else len(devices)
    try:
        return sharding.make_mesh(data=m.data, fsdp=m.fsdp, tensor=m.tensor, devices=devices)
    except ValueError as e:
        raise cli.UserError(
            f"mesh.data={m.data}, mesh.fsdp={m.fsdp}, mesh.tensor={m.tensor} does not fit the "
            f"{count} devices: {e}"
        ) from None


def check_batch_sizes(config, mesh, processes: int | None = None) -> int:
    """The sampling batch size; both batch sizes must split over the data shards
    and the `processes` (default this job's process count)."""
    shards = math.prod(mesh.shape[a] for a in data_axes(mesh))
    processes = jax.process_count() if processes is None else int(processes)
    sampling = int(config.sampling.batch_size) or int(config.data.batch_size)
    for key, value in (
        ("data.batch_size", config.data.batch_size),
        ("sampling.batch_size", sampling),
    ):
        if value % shards or value % processes:
            raise cli.UserError(
                f"{key}={value} does not split over the mesh's {shards} data shards "
                f"(mesh {dict(mesh.shape)}) and {processes} process(es)"
            )
    if str(config.sampling.decode_layout) == "replicated" and sampling % mesh.size:
        raise cli.UserError(
            f"sampling.decode_layout=replicated splits the sampling batch over all {mesh.size} "
            f"devices; sampling.batch_size={sampling} is not a multiple (or use 'tensor')"
        )
    rows = config.data.batch_size // shards
    if config.grad_accum > 1 and rows % config.grad_accum:
        raise cli.UserError(
            f"grad_accum={config.grad_accum} does not divide the {rows} rows per data shard "
            "(data.batch_size / data shards)"
        )
    return sampling


def resolve(config, total: int, eval_every: int | None = None) -> dict:
    """The config as written to config.json: `steps` and `eval_every` (steps
    between validations, `checks.eval_interval`) resolved."""
    with config.unlocked():
        config.steps = total
        if eval_every is not None:
            config.eval_every = eval_every
    return json.loads(config.to_json_best_effort())


def build_models(config, sources: dict, total: int, vocab: int, cross=None) -> Models:
    """The roles (`cross`: a teacher with another tokenizer, `cross_tokenizer`)."""

    def trained(name):
        optimizer, schedule = optim.make_optimizer(config[name], _role_steps(config, name, total))
        return Role(sources[name].config, optimizer, schedule)

    teacher = Role(sources["teacher"].config) if "teacher" in sources else None
    classmate = trained("classmate") if "classmate" in sources else None
    return Models(trained("student"), teacher, classmate, vocab_size=vocab, cross=cross)


def cross_tokenizer(config, sources: dict, vocab: int, student_tokenizer, teacher_tokenizer):
    """The step's static view of a teacher with another tokenizer (`vocab`: the
    student's scored vocabulary)."""
    from classkd_jax.training.cross_objectives import CrossTokenizer

    t_vocab = roles.scored_vocab(teacher_tokenizer, [sources["teacher"].config.vocab_size])
    s_ids, t_ids = np.zeros(0, np.int32), np.zeros(0, np.int32)
    if config.cross_tokenizer.loss == "exact":
        s_ids, t_ids = vocab_map.shared_vocabulary(student_tokenizer, teacher_tokenizer)
        keep = (s_ids < vocab) & (t_ids < t_vocab)
        s_ids, t_ids = s_ids[keep], t_ids[keep]
        if not len(s_ids):
            raise cli.UserError(
                "cross_tokenizer.loss='exact': the two tokenizers spell no vocabulary entry "
                "alike; use 'alm' or 'uld'"
            )
    projection = None
    if config.cross_tokenizer.loss == "projected":
        projection = vocab_map.first_token_map(student_tokenizer, teacher_tokenizer)
        projection = np.where(projection < vocab, projection, -1)[:t_vocab].astype(np.int32)
        if len(projection) < t_vocab:  # a head wider than the tokenizer: padding rows
            projection = np.pad(projection, (0, t_vocab - len(projection)), constant_values=-1)
    tau = float(config.cross_tokenizer.binarization_temp)
    loss = str(config.cross_tokenizer.loss)
    inner_ce = bool(config.cross_tokenizer.inner_ce)
    return CrossTokenizer(loss, t_vocab, s_ids, t_ids, tau, projection, inner_ce)


def _role_steps(config, name: str, total: int) -> int:
    """The horizon of a role's schedule in its own optimizer steps."""
    if name != "classmate":
        return total
    cm = config.classmate
    stop = int(cm.stop_step) or total
    span = max(min(stop, total) - int(cm.start_step), 1)
    return max(-(-span // int(cm.update_every)), 1)


def initial_state(config, models: Models, sources: dict, mesh):
    """A fresh `RunState`: the student (and classmate) from their sources."""
    seed = int(config.seed)
    student = roles.load_params(sources["student"], mesh, (seed, 2))
    classmate = None
    if models.classmate is not None:
        src = sources["classmate"]
        cm_params = (
            student if src.kind == "student_init" else roles.load_params(src, mesh, (seed, 3))
        )
        if src.kind == "student_init":  # the student's weights in the classmate's dtype
            cm_params = jax.tree.map(lambda x: x.astype(src.config.params_dtype), cm_params)
        classmate = (models.classmate.config, models.classmate.optimizer, cm_params)
    return init_run_state(
        mesh, (models.student.config, models.student.optimizer, student), classmate
    )


def header(config, workdir, sources, params_count, mesh, total, sampling_batch) -> str:
    lines = [f"classkd_jax.train: {config.method} for {total} steps -> {workdir}"]
    for name, src in sources.items():
        cfg = src.config
        size = f"{params_count[name] / 1e6:.2f}M params" if name in params_count else "not loaded"
        lines.append(
            f"  {name:9s} {cfg.family} {cfg.num_layers}L d={cfg.hidden_size} "
            f"({size}, {cfg.dtype}) from {src.describe()}"
            + (
                f", read from teacher.cache={config.teacher.cache}"
                if name == "teacher" and config.teacher.cache
                else ""
            )
        )
    lines.append(
        f"  mesh {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s), process {jax.process_index()}/{jax.process_count()}; batch "
        f"{config.data.batch_size} rows"
        + (
            f", {sampling_batch} prompts sampled per on-policy step"
            if checks.samples_prompts(config)
            else ""
        )
    )
    return "\n".join(lines)


def export_student(run_dir: Path, state, models: Models, tokenizer, step: int) -> Path:
    """Writes the student to `run_dir/student_hf` (every process gathers, process 0 writes)."""
    params = sharding.fetch(state.student.params)
    out = run_dir / "student_hf"
    if jax.process_index() == 0:
        save_hf(out, models.student.config, params, tokenizer)
        (out / "EXPORTED_FROM.json").write_text(json.dumps({"step": step}) + "\n")
    return out


def log_path(workdir: Path, process: int) -> Path:
    """One log per process: train.log (process 0), train.<i>.log (the others)."""
    return supervisor.process_log(workdir, process, "train")


def train(config, workdir: Path) -> int:
    """Runs (or resumes) the training `config` describes in `workdir`; returns the exit status.

    The workdir's lock (`workdir_lock`) is held throughout: a second run on it is
    refused at once, and an unwritable workdir is refused before anything loads."""
    workdir = Path(workdir)
    lock = hold_workdir(workdir)
    try:
        log = log_path(workdir, jax.process_index())
        previous = cli.log_file()
        cli.set_log_file(log)
        with logs.to_file(log):
            status = _train(config, workdir)
        # Finished: a later command in this process (a test, a notebook) must not
        # name this run's log. On an error the log stays set, so that the CLI's
        # handler writes the traceback into it (cli.run forgets it afterwards).
        cli.set_log_file(previous)
        return status
    finally:
        if lock is not None:
            lock.release()


def hold_workdir(workdir: Path) -> workdir_lock.WorkdirLock | None:
    """Process 0 takes the workdir's lock (the others share it); returns the lock held here.

    On several processes a refusal ends process 0 at once, after its line (status
    2): leaving through Python's exit would wait in `jax.distributed`'s shutdown
    barrier for the others, which then learn that process 0 is gone as they
    would of any lost process (one line, status 75). No collective runs here, so
    a process lost during start-up is still named by JAX's coordination service.
    """
    if jax.process_index() != 0:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise workdir_lock.unwritable(workdir, e) from None
        return None
    try:
        return workdir_lock.acquire(workdir, say=_say)
    except cli.UserError as error:
        if jax.process_count() == 1:
            raise
        print(cli.error_line(PROG, str(error), None), file=sys.stderr, flush=True)
        os._exit(2)


def _say(line: str) -> None:
    print(f"classkd_jax.train: {line}", file=sys.stderr, flush=True)


def _train(config, workdir: Path) -> int:
    checks.validate(config)
    if config.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", str(Path(config.compilation_cache)))
    mesh = make_mesh(config)
    sampling_batch = check_batch_sizes(config, mesh)
    tokenizer, tokenizer_where = roles.resolve_tokenizer(config)
    teacher_tok = roles.resolve_teacher_tokenizer(config)
    context, why = checks.context_length(config)
    sources = roles.plan_roles(
        config, tokenizer, tokenizer_where, context, why, teacher_tokenizer=teacher_tok
    )
    seqkd = config.method == "seqkd"  # SeqKD reads the teacher's answers as text: no rows
    data = data_lib.build(
        config,
        tokenizer,
        sampling_batch=sampling_batch,
        needs_prompts=checks.samples_prompts(config),
        teacher_tokenizer=teacher_tok[0] if teacher_tok and not seqkd else None,
    )
    frozen = {}
    if config.teacher.cache:  # the dataset rows' teacher, read from the cache
        data.cache, data.dev_cache = open_cache(
            config, sources["teacher"], tokenizer, tokenizer_where, data
        )
    if "teacher" in sources and checks.live_teacher(config):
        frozen["teacher"] = roles.load_params(sources["teacher"], mesh, (int(config.seed), 1))
    if seqkd:  # SFT on the teacher's responses: the teacher's job ends here
        teacher = frozen.pop("teacher")
        data = seqkd_data(config, workdir, data, sources, teacher, tokenizer, mesh, teacher_tok)
        sources = {k: v for k, v in sources.items() if k != "teacher"}
        teacher_tok = None
    epoch = data.off.batches_in_epoch(0)
    total = checks.total_steps(config, epoch)
    resolved = resolve(config, total, checks.eval_interval(config, epoch))
    checks.check_resume(workdir, resolved)
    if jax.process_index() == 0:  # atomically: a kill mid-write must not leave half a file
        tmp = workdir / "config.json.tmp"
        tmp.write_text(json.dumps(resolved, indent=2) + "\n")
        tmp.replace(workdir / "config.json")

    student_sources = [s for r, s in sources.items() if not (teacher_tok and r == "teacher")]
    vocab = roles.scored_vocab(tokenizer, [s.config.vocab_size for s in student_sources])
    cross = None
    if teacher_tok is not None:
        cross = cross_tokenizer(config, sources, vocab, tokenizer, teacher_tok[0])
    models = build_models(config, sources, total, vocab, cross)
    checkpoints = RunCheckpoints(workdir, int(config.checkpoint_keep))
    run = make_run(config, workdir, models, mesh, data, frozen, checkpoints, tokenizer, total)
    state, start, meta, damaged = load_state(config, models, sources, mesh, checkpoints, run)
    if start > total:
        raise cli.UserError(
            f"{workdir} holds a checkpoint at step {start}, past steps={total}: rerun with "
            f"--config.steps >= {start} to continue it, or use a new --workdir"
        )
    run.reporter = make_reporter(config, workdir, start, total)
    counts = {"teacher": frozen.get("teacher"), "student": state.student.params}
    if state.classmate is not None:
        counts["classmate"] = state.classmate.params
    counts = {k: roles.count_params(v) for k, v in counts.items() if v is not None}
    start_lines = header(config, workdir, sources, counts, mesh, total, sampling_batch)
    logging.info("%s", start_lines)
    run.reporter.message(start_lines)
    for line in damaged:
        run.reporter.message(f"  {line}")
    if start:
        run.reporter.message(f"  resuming from step {start} ({checkpoints.directory / str(start)})")
    run.meta = run_meta(models, tokenizer_where, config.method)
    run.stop.install()
    try:
        state, outcome = run_loop(run, state, start, meta)
    finally:
        run.stop.uninstall()
        checkpoints.close()
        run.reporter.close()
    if outcome == "stopped":
        step = checkpoints.latest_step()
        run.reporter.message(
            f"stopped by {run.stop.name} at step {step}; checkpoint "
            f"{checkpoints.directory / str(step)}; rerun the same command to resume"
        )
        return EXIT_STOPPED.get(run.stop.name, 1)
    out = workdir / "student_hf"
    if exported_step(out) != total:
        out = export_student(workdir, state, models, tokenizer, total)
    _summary(workdir, out)
    return 0


def open_cache(config, teacher, tokenizer, tokenizer_where: str, data):
    """The `teacher.cache` lookups of the off-policy batches and of the dev split (None
    when not cached at temperature 1), after checking that the cache was built from
    this run's teacher, data and settings (one line if not)."""
    from classkd_jax.teacher_cache import Lookup, SplitReader, builder, check, read_manifest

    if config.teacher.cache == "auto":
        raise cli.UserError(
            "teacher.cache=auto is resolved by python -m classkd_jax.compare --teacher_cache; "
            "give the trainer the cache's directory"
        )
    root = Path(config.teacher.cache)
    splits = {"train": data.train} if data.dev is None else {"train": data.train, "dev": data.dev}
    expected = builder.fingerprint(config, teacher, tokenizer, tokenizer_where, splits)
    found = read_manifest(root)
    # a cache that also holds a dev split serves a run without validation too
    expected["data"] = {**found.get("data", {}), **expected["data"]}
    manifest = check(root, expected)
    train = Lookup(SplitReader(root, "train", manifest), data.train, str(config.teacher_cache.loss))
    dev = None  # the dev KD is KL at temperature 1: from a cache drawn at 1 only
    if data.dev is not None and "dev" in manifest["splits"] and manifest["temperature"] == 1.0:
        dev = Lookup(SplitReader(root, "dev", manifest), data.dev)
    return train, dev


def seqkd_data(config, workdir: Path, data, sources, teacher_params, tokenizer, mesh, teacher_tok):
    """The training streams over the teacher's responses to the training prompts,
    generated once into `seqkd.cache_dir` (default `workdir/seqkd`) and reused.
    `teacher_tok`: (tokenizer, where) of a teacher with its own tokenizer, or None:
    it then answers its own rendering of the prompts, and its answers' text is
    tokenised for the student (`seqkd.retokenized`)."""
    k = config.seqkd
    cache = Path(k.cache_dir) if k.cache_dir else workdir / "seqkd"
    teacher = sources["teacher"]
    prompts, t_tokenizer = data.train, tokenizer
    if teacher_tok is not None:
        t_tokenizer = teacher_tok[0]
        examples = pipeline.load_split(config.data, "train")
        prompts = data_lib.teacher_tokenized(config, examples, data.train, t_tokenizer)
    fingerprint = seqkd_fingerprint(config, teacher, t_tokenizer, prompts.prompts)
    eos, pad = (int(i) for i in special_ids(t_tokenizer)[:2])
    train = seqkd_lib.teacher_dataset(
        prompts,
        (teacher.config, teacher_params),
        cache_dir=cache,
        fingerprint=fingerprint,
        max_new_tokens=int(config.sampling.max_new_tokens),
        temperature=float(config.sampling.temperature),
        top_k=int(config.sampling.top_k),
        top_p=float(config.sampling.top_p),
        greedy=bool(k.greedy),
        seed=int(k.seed),
        batch_size=int(k.batch_size),
        eos_id=eos,
        pad_id=pad,
        max_length=int(config.data.max_length),
        mesh=mesh,
        chunk_prompts=int(k.chunk_prompts),
        message=lambda line: print(f"seqkd: {line}", file=sys.stderr),
        decode_layout=str(config.sampling.decode_layout),
    )
    if teacher_tok is not None:
        spelling = vocab_map.token_bytes(t_tokenizer)
        train = seqkd_lib.retokenized(
            train,
            data.train,
            spelling,
            tokenizer,
            prepends_space=vocab_map.prepends_space(t_tokenizer, spelling),
            teacher_eos=eos,
            eos_id=int(special_ids(tokenizer)[0]),
            max_length=int(config.data.max_length),
        )
    return data.with_train(config, tokenizer, train)


def seqkd_fingerprint(config, teacher, tokenizer, prompts) -> dict:
    """What SeqKD's teacher answers depend on: a cache made under another is refused.

    Not the run's seeds when the teacher is loaded (the answers are drawn with
    `seqkd.seed`, and the data's shuffling seeds only order the batches), so
    the runs of a comparison's seeds share one generation."""
    digest = zlib.crc32(b"".join(np.asarray(p, np.int32).tobytes() for p in prompts))
    data = json.loads(config.data.to_json_best_effort())
    return {
        "teacher": teacher.describe(),
        # the seed makes a random-init teacher's weights; a loaded one ignores it
        "teacher_seed": int(config.seed) if teacher.kind == "random" else None,
        "tokenizer": len(tokenizer),
        "data": {key: v for key, v in data.items() if key not in ("seed", "lm_seed")},
        "prompts": {"count": len(prompts), "crc32": digest},
    }


def load_state(config, models: Models, sources, mesh, checkpoints: RunCheckpoints, run: Run):
    """(state, start step, checkpoint meta, lines about damaged steps): restored from
    the newest checkpoint that restores (straight into its shardings, the data
    positions and the batch plan's host state included), else fresh."""
    student = (models.student.config, models.student.optimizer)
    classmate = None
    if models.classmate is not None:
        classmate = (models.classmate.config, models.classmate.optimizer)
    if checkpoints.latest_step() is None:
        return initial_state(config, models, sources, mesh), 0, {}, []

    def accept(meta: dict) -> None:
        run.data.restore(meta["data"])
        if "plan" in meta:
            run.plan.restore(meta["plan"])

    abstract = abstract_run_state(mesh, student, classmate)
    state, meta, step, damaged = checkpoints.restore_newest(abstract, accept)
    return state, int(step), meta, damaged


def make_run(config, workdir, models, mesh, data, frozen, checkpoints, tokenizer, total) -> Run:
    """The jitted step, the batch plan and the validator, for the loop (the reporter
    comes once the start step is known)."""
    builder = StepBuilder(config, models, mesh)
    student = (models.student.config, models.student.optimizer)
    classmate = None
    if models.classmate is not None:
        classmate = (models.classmate.config, models.classmate.optimizer)
    frozen_sh = {k: params_shardings(models.teacher.config, mesh) for k in frozen}
    student_sh = params_shardings(models.student.config, mesh)
    step_fn = builder.jit(run_state_shardings(mesh, student, classmate), frozen_sh)
    rng = jax.random.key(int(config.seed))
    validator = None
    if config.eval_every > 0:
        # with teacher.cache no teacher is loaded: the validation has no dev KD
        seen = dataclasses.replace(models, teacher=None) if "teacher" not in frozen else models
        validator = Validator(config, data, tokenizer, seen, mesh, builder.path)
    scorer = None
    if config.method == "minillm":
        scorer = builder.scorer(student_sh, frozen_sh["teacher"])
    is_writer = jax.process_index() == 0
    return Run(
        config=config,
        workdir=workdir,
        total_steps=total,
        step_fn=step_fn,
        frozen=frozen,
        plan=BatchPlan(
            config,
            data,
            models,
            mesh,
            builder.rows,
            tokenizer,
            rng,
            total_steps=total,
            scorer=scorer,
        ),
        data=data,
        validator=validator,
        checkpoints=checkpoints,
        reporter=None,  # once the start step is known: `make_reporter`
        stop=StopSignal(synchronized=jax.process_count() > 1),
        root_key=rng,
        meta={},
        devices=jax.device_count(),
        peak_tflops=flops_lib.peak_tflops(jax.devices()[0].device_kind, config.peak_tflops),
        is_writer=is_writer,
    )


def make_reporter(config, workdir: Path, start: int, total: int) -> Reporter:
    """Metrics, TensorBoard and progress from step `start` (later records are dropped)."""
    return Reporter(
        workdir,
        start_step=start,
        total_steps=total,
        is_writer=jax.process_index() == 0,
        progress=bool(config.progress),
    )


def run_meta(models: Models, tokenizer_where: str, method: str) -> dict:
    """The static part of every checkpoint's metadata: the models by role, the tokenizer."""
    meta = {
        "models": {"student": checkpoint.model_meta(models.student.config)},
        "tokenizer": tokenizer_where,
        "method": method,
    }
    if models.classmate is not None:
        meta["models"]["classmate"] = checkpoint.model_meta(models.classmate.config)
    return meta


def _summary(workdir: Path, out: Path) -> None:
    if jax.process_index() != 0:
        return
    last: dict[str, Any] = {}
    dev: dict[str, Any] = {}
    path = workdir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            (dev if "dev_loss" in record else last).update(record)
    parts = [f"loss {last['loss']:.4f}"] if "loss" in last else []
    parts += [f"{k} {v:.4f}" for k, v in dev.items() if k.startswith("dev_")]
    print(f"done: {', '.join(parts)}; student exported to {out}", file=sys.stderr)
