r"""Train a student: SFT, KD, GKD, ClassKD, SeqKD, DistiLLM or MiniLLM in one jitted, sharded step.

    python -m classkd_jax.train --config configs/<method>.py[:variant] --workdir DIR \
        [--config.key=value ...]

Methods: configs/sft.py, kd.py, gkd.py, classkd.py and the baselines seqkd.py,
distillm.py, minillm.py (their docstrings say what each does and how to
launch it; `:size=tiny` runs in seconds on a CPU).
A rerun of the same command on the same DIR resumes from the newest
checkpoint that restores (a damaged newer one is renamed aside, one line
says so); SIGTERM or Ctrl-C saves one and exits (status 143 / 130). A second
run on a DIR that a live run holds is refused at start (docs/training.md,
"What survives what").

What lands in DIR:
  config.json        the resolved config (steps included)
  metrics.jsonl      one JSON object per logged step (and per validation)
  tensorboard/       the same scalars as TensorBoard events
  train.log          library logs (JAX, Orbax, transformers) and any traceback
  workdir.lock       the live run's host, pid, start and heartbeat (removed at its end)
  checkpoints/<N>/   the last `checkpoint_keep` steps: student, classmate,
                     optimizer states, counters, data positions, and the
                     batch plan's state (DistiLLM's replay buffer and phi,
                     MiniLLM's rollout store)
  checkpoints/<N>.damaged-<reason>/  a step that did not restore, kept aside
  seqkd/             SeqKD's teacher responses (generated once, reused)
  best/<N>/          the best step by `best_metric` (models only)
  validation/        greedy dev completions of each validation
  student_hf/        the final student as a Hugging Face directory (+ tokenizer)

Several processes (one per host; `classkd_jax.distributed`): on a TPU
slice, under `srun` or `mpirun` the same command runs on every host and
`jax.distributed` starts by itself; elsewhere add `--coordinator_address
HOST:PORT --num_processes N --process_id I` (`launch/local.sh` does it on one
machine). Each process reads its rows of every batch; process 0 alone writes
metrics, TensorBoard, config.json and the export; all take part in
checkpoints, which restore onto another mesh or process count. SIGTERM to
any one process stops them all after the same step (JAX's preemption
notice); a process that dies (or whose host stops responding) ends the
others within `--heartbeat_timeout` seconds with one line and exit status 75
(each trainer process runs under a small parent that reports how it ended:
`classkd_jax.supervisor`).

Reads top to bottom: flags -> config -> mesh -> tokenizer, models planned
(checked before anything loads) -> data -> states -> jitted step, sampler,
validation -> loop -> export.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from classkd_jax.supervisor import EXIT_PEER_LOST  # noqa: F401 (75: rerun; it resumes)

PROG = "python -m classkd_jax.train"


def parse_flags(argv: Sequence[str], *, workdir: bool = True):
    """(config, workdir) from the command line; every mistake is a `UserError`.

    `workdir=False` (`classkd_jax.compile`): no --workdir flag; the path returned is None.
    """
    from absl import flags
    from ml_collections import config_flags

    from classkd_jax.cli import UserError

    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file(
        "config",
        None,
        "a configs/<method>.py file",
        flag_values=fv,
        lock_config=True,
        sys_argv=[PROG, *argv],  # where it looks for --config.key overrides
    )
    wants_workdir = workdir
    if wants_workdir:
        workdir = flags.DEFINE_string("workdir", None, "the run's directory", flag_values=fv)
    path = _config_path(argv)
    if path is None:
        raise UserError("--config is required, e.g. --config configs/classkd.py:size=tiny")
    if not Path(path).is_file():
        raise UserError(f"--config {path}: no such config file")
    try:
        fv([PROG, *argv])
    except AttributeError as e:  # a key the locked config does not have
        raise UserError(f"config has no key {_unknown_key(e, argv)}") from None
    except KeyError as e:  # an override whose parent group does not exist
        raise UserError(f"config has no key {_missing_parent(e, argv, path)}") from None
    except flags.Error as e:
        raise UserError(_flag_error(e)) from None
    _refuse_unused(holder.value, argv, path, training=wants_workdir)
    if not wants_workdir:
        return holder.value, None
    if not workdir.value:
        raise UserError("--workdir is required (the run's directory)")
    if "://" in workdir.value:  # before Path() folds 'gs://b' into 'gs:/b'
        raise UserError(
            f"--workdir {workdir.value}: the trainer writes plain files; mount the bucket "
            "(gcsfuse, launch/tpu_pod.sh --bucket) and pass a path under the mount"
        )
    return holder.value, Path(workdir.value)


def _refuse_unused(config, argv: Sequence[str], path: str, training: bool = True) -> None:
    """A command-line override the method would ignore is a `UserError`: every
    key that `checks.refuse_unused` knows to be without effect (misfeedback.*,
    classmate.*, cross_tokenizer.*, teacher.template / add_bos, and the
    divergences a teacher.tokenizer replaces), judged against the config file's
    own values; so is, in a training run, a teacher_cache.* override without
    teacher.cache."""
    from classkd_jax.cli import UserError
    from classkd_jax.config_utils import load_config
    from classkd_jax.training import checks

    if training and not config.teacher.cache:
        given = [a for a in argv if a.startswith("--config.teacher_cache.")]
        if given:
            key = given[0].split("=", 1)[0][len("--config.") :]
            raise UserError(
                f"{key} has no effect without teacher.cache (this run's teacher is live); "
                "set --config.teacher.cache=DIR or drop it"
            )
    if not any(a.startswith("--config.") for a in argv):
        return  # the file's own values are its defaults
    spec = next(
        (argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"),
        next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), path),
    )
    checks.refuse_unused(config, load_config(spec))


def _config_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":", 1)[0]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":", 1)[0]
    return None


def _unknown_key(error: AttributeError, argv: Sequence[str] = ()) -> str:
    """'misfeedback.wieght (did you mean misfeedback.weight?)' from ml_collections'
    error, with the full dotted key of the override that named it."""
    inner = error.args[0] if error.args else error
    inner = inner.args[0] if isinstance(inner, KeyError) and inner.args else str(inner)
    lines = [line.strip().strip("'\"") for line in str(inner).splitlines() if line.strip()]
    leaf = lines[0] if lines else str(error)
    hint = re.search(r'Did you mean "([^"]+)"', str(inner))
    for arg in argv:
        key = arg[len("--config.") :].split("=", 1)[0] if arg.startswith("--config.") else ""
        if key == leaf or key.endswith(f".{leaf}"):
            parent = key[: -len(leaf)]
            return f"{key}" + (f" (did you mean {parent}{hint.group(1)}?)" if hint else "")
    return leaf + (f" (did you mean {hint.group(1)}?)" if hint else "")


def _missing_parent(error: KeyError, argv: Sequence[str], path: str) -> str:
    """The whole dotted key of the override whose group ml_collections did not find,
    with the nearest existing keys ('optim.learning_rate (no key 'optim' in the
    config; nearest: classmate.lr, student.lr)')."""
    from classkd_jax.config_utils import describe_missing_key, load_config

    inner = error.args[0] if error.args else ""
    name = str(inner).splitlines()[0].strip().strip("'\"") if str(inner).strip() else ""
    keys = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    key = next((k for k in keys if name in k.split(".")), name)
    spec = next(
        (argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"),
        next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), path),
    )
    try:
        return describe_missing_key(load_config(spec), key)
    except Exception:  # noqa: BLE001 - the hint is a courtesy; the key alone still helps
        return key


def _flag_error(error: Exception) -> str:
    text = str(error)
    if "Traceback" in text:  # the config file's own error, inside absl's message
        last = [line for line in text.splitlines() if line.strip()][-1]
        head = text.split(":", 1)[0]
        message = re.sub(r"^\w+Error: ", "", last.strip())
        return f"{head}: {message}"
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from classkd_jax import distributed, supervisor
    from classkd_jax.cli import UserError
    from classkd_jax.training import logs

    logs.quiet_libraries()
    multi, rest = distributed.split_flags(argv)
    config, workdir = parse_flags(rest)  # flag errors first: before waiting for peers
    try:
        several = distributed.requested(multi)
    except ValueError as e:
        raise UserError(str(e)) from None
    if several and supervisor.wanted():  # this process only watches the one that trains
        startup = supervisor.Startup(
            multi.coordinator_address, multi.num_processes, multi.process_id, multi.init_timeout
        )
        return supervisor.supervise(
            argv, prog=PROG, workdir=workdir, module="classkd_jax.train", startup=startup
        )
    child = supervisor.child_start(workdir) if several else None
    distributed.initialize(multi)
    import jax

    from classkd_jax.training.run import log_path, train

    index = jax.process_index()
    supervisor.started(child, index, jax.process_count(), log_path(workdir, index))
    try:
        return train(config, workdir)
    except jax.errors.JaxRuntimeError as error:
        if jax.process_count() == 1:
            raise
        _peer_lost(error, workdir)


def _peer_lost(error: Exception, workdir: Path) -> None:
    """A collective with the other processes failed (one died or was cut off): one
    line naming this process and where to look, then exit at once. Leaving through
    Python's normal exit would wait in `jax.distributed`'s shutdown barrier for
    the process that is gone."""
    import os

    import jax

    from classkd_jax import checkpoint, cli, supervisor
    from classkd_jax.training.run import log_path

    cli._record_traceback(error)
    resume = supervisor.resume_hint(checkpoint.latest_step(workdir / "checkpoints"))
    first = " ".join(str(error).split())[:100]  # the whole error is in the log
    index = jax.process_index()
    print(
        f"{PROG}: error: process {index} of {jax.process_count()}: a collective with the "
        f"other processes failed ({first}); another process died or stopped responding "
        f"(this one's log: {log_path(workdir, index)}); {resume}",
        file=sys.stderr,
        flush=True,
    )
    os._exit(EXIT_PEER_LOST)


if __name__ == "__main__":
    from classkd_jax import cli

    sys.exit(cli.run(main, prog=PROG))
