"""SeqKD's training set: the teacher's completions of the training prompts, cached on disk.

SeqKD is SFT on teacher-generated responses. `teacher_dataset` generates them
once, in parts of `chunk_prompts` prompts, and caches every part as it
finishes, so a preempted generation resumes at the first missing part and a
rerun with every part present generates nothing:

  cache_dir/fingerprint.json   {"fingerprint": <the caller's>, "generation": <settings seen here>}
  cache_dir/part-00000.npz     tokens [sum R_i] int32 (the raw completions, concatenated),
                               offsets [n+1] int64, num_prompts [] int64,
                               prompt_digest [32] uint8 (sha256 of the part's prompts)

Part k samples with its own seed, derived from (seed, k) alone, so parts are
independent and a resumed generation equals an uninterrupted one. Files are
written atomically (a temp file in the same directory, then `os.replace`) by
process 0 only; every process reads. With several processes the cache
directory must be on a filesystem they share.

The cache holds the completions as the sampler returned them; fitting them to
`max_length` (and ending them with EOS) happens on load, identically for
cached and fresh parts.

A teacher with another tokenizer (`teacher.tokenizer`) answers prompts
rendered in its own template and tokens, and the cache holds its ids;
`retokenized` turns each answer into the student's tokens through its text
(the bytes its tokens spell), so SeqKD needs no alignment at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from classkd_jax.cli import UserError
from classkd_jax.data import vocab_map
from classkd_jax.data.tokenize import TokenizedData
from classkd_jax.sampling.completions import complete_token_ids

__all__ = ["retokenized", "teacher_dataset"]

FINGERPRINT_FILE = "fingerprint.json"


def _part_path(cache_dir: Path, part: int) -> Path:
    return cache_dir / f"part-{part:05d}.npz"


def _part_seed(seed: int, part: int) -> int:
    """A sampler seed for part `part`, a function of (seed, part) alone, in [0, 2**31)."""
    state = np.random.SeedSequence((seed, part)).generate_state(1, np.uint32)
    return int(state[0] >> 1)


def _prompt_digest(prompts: Sequence[np.ndarray]) -> np.ndarray:
    """sha256 of the prompts' lengths and ids, `[32] uint8`: ties a part to its prompts."""
    h = hashlib.sha256()
    for p in prompts:
        ids = np.asarray(p, np.int32)
        h.update(np.int64(ids.size).tobytes())
        h.update(ids.tobytes())
    return np.frombuffer(h.digest(), np.uint8)


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Calls `write(file)` on a temp file next to `path`, then renames it to `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------
# The fingerprint: what the cache was generated with.


def _differing_keys(stored: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves where two JSON values differ."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        out = []
        for key in sorted(set(stored) | set(wanted)):
            path = f"{prefix}{key}"
            if key not in stored or key not in wanted:
                out.append(path)
            else:
                out.extend(_differing_keys(stored[key], wanted[key], path + "."))
        return out
    return [] if stored == wanted else [prefix.rstrip(".") or "<root>"]


def _check_fingerprint(cache_dir: Path, wanted: dict) -> None:
    """Raises `UserError` if the cache was made with other settings; process 0 writes it
    if absent."""
    path = cache_dir / FINGERPRINT_FILE
    try:
        wanted = json.loads(json.dumps(wanted))  # as it reads back: tuples become lists
    except TypeError as e:
        raise TypeError(f"the seqkd fingerprint must be JSON-able: {e}") from None
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e}); delete {cache_dir}") from None
        keys = _differing_keys(stored, wanted)
        if keys:
            shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
            raise UserError(
                f"the seqkd cache {cache_dir} was generated with other settings ({shown} "
                f"differ); delete {cache_dir} or use another workdir"
            )
    elif jax.process_index() == 0:
        cache_dir.mkdir(parents=True, exist_ok=True)
        text = (json.dumps(wanted, indent=2, sort_keys=True) + "\n").encode()
        _write_atomic(path, lambda f: f.write(text))


# --------------------------------------------------------------------------
# Parts: the raw completions of `chunk_prompts` consecutive prompts.


def _save_part(path: Path, completions: Sequence[Sequence[int]], digest: np.ndarray) -> None:
    lengths = np.array([len(c) for c in completions], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.array([t for c in completions for t in c], np.int32)
    arrays = dict(
        tokens=tokens, offsets=offsets, num_prompts=np.int64(len(completions)), prompt_digest=digest
    )
    _write_atomic(path, lambda f: np.savez(f, **arrays))


def _load_part(path: Path, num_prompts: int, digest: np.ndarray) -> list[np.ndarray]:
    """The part's completions, `num_prompts` arrays `[R_i] int32`; a bad file is a `UserError`."""

    def corrupt(why: str) -> UserError:
        return UserError(
            f"{path}: corrupt seqkd cache part ({why}); delete it to regenerate it, "
            f"or delete {path.parent}"
        )

    try:
        with np.load(path, allow_pickle=False) as z:
            tokens, offsets = z["tokens"], z["offsets"]
            stored_count, stored_digest = int(z["num_prompts"]), z["prompt_digest"]
    except (OSError, ValueError, KeyError) as e:
        raise corrupt(f"{type(e).__name__}: {e}") from None
    if stored_count != num_prompts or offsets.shape != (num_prompts + 1,):
        raise corrupt(f"it holds {stored_count} prompts, expected {num_prompts}")
    if offsets[0] != 0 or offsets[-1] != tokens.size or np.any(np.diff(offsets) < 0):
        raise corrupt("its offsets do not index its tokens")
    if not np.array_equal(stored_digest, digest):
        raise corrupt("it was generated for other prompts")
    return [tokens[a:b].astype(np.int32) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def _present_parts(cache_dir: Path, num_parts: int) -> np.ndarray:
    """`[num_parts] bool`: which part files exist, as process 0 sees them.

    Every process must generate the same parts (generation is collective), so
    process 0's view is broadcast rather than each process looking itself.
    """
    present = np.array([_part_path(cache_dir, k).exists() for k in range(num_parts)], bool)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        present = np.asarray(multihost_utils.broadcast_one_to_all(present)).astype(bool)
    return present


def _to_response(completion: Sequence[int], budget: int, eos_id: int) -> tuple[np.ndarray, bool]:
    """A completion as a training response: ends with EOS, at most `budget` ids.

    Returns `([R] int32, cut)` with 1 <= R <= budget; `cut` when ids were dropped.
    """
    body = list(completion)
    if body and body[-1] == eos_id:
        body = body[:-1]
    cut = len(body) > budget - 1
    return np.array(body[: budget - 1] + [eos_id], np.int32), cut


def _completions(
    prompts: Sequence[np.ndarray],
    teacher: tuple[Any, Any],
    cache_dir: Path,
    sampling: dict,
    *,
    seed: int,
    chunk_prompts: int,
    batch_size: int,
    pad_id: int,
    eos_id: int,
    mesh: jax.sharding.Mesh | None,
    message: Callable[[str], None],
    decode_layout: str = "tensor",
) -> list[np.ndarray]:
    """The raw completion of every prompt, `[R_i] int32`: cached parts read, missing ones
    generated and (by process 0) written."""
    say = message if jax.process_index() == 0 else (lambda _: None)
    starts = range(0, len(prompts), chunk_prompts)
    present = _present_parts(cache_dir, len(starts))
    if present.any():
        say(f"reusing {int(present.sum())} of {len(starts)} parts from {cache_dir}")
    out: list[np.ndarray] = []
    for k, start in enumerate(starts):
        part = prompts[start : start + chunk_prompts]
        digest, path = _prompt_digest(part), _part_path(cache_dir, k)
        if present[k]:
            out.extend(_load_part(path, len(part), digest))
            continue
        say(f"generating teacher responses: part {k + 1}/{len(starts)} ({len(part)} prompts)")
        t0 = time.perf_counter()
        ids = complete_token_ids(
            teacher,
            part,
            **sampling,
            seed=_part_seed(seed, k),
            batch_size=batch_size,
            pad_id=pad_id,
            eos_ids=(eos_id,),
            mesh=mesh,
            decode_layout=decode_layout,
        )
        if jax.process_index() == 0:
            _save_part(path, ids, digest)
        out.extend(np.asarray(c, np.int32) for c in ids)
        say(f"  part {k + 1}/{len(starts)} done in {time.perf_counter() - t0:.1f}s")
    return out


# --------------------------------------------------------------------------


def retokenized(
    answers: TokenizedData,
    student: TokenizedData,
    spelling: Sequence[bytes | None],
    tokenizer: Any,
    *,
    prepends_space: bool,
    teacher_eos: int,
    eos_id: int,
    max_length: int,
) -> TokenizedData:
    """The teacher's answers in the student's tokens, on the student's prompts.

    Args:
      answers: `teacher_dataset`'s output in the teacher's tokens (each
        response ends with `teacher_eos`), entry i for `student`'s entry i.
      student: the student's tokenised training set (its prompts are kept).
      spelling: the teacher's token id -> its bytes (`vocab_map.token_bytes`;
        None for special tokens, which spell nothing).
      prepends_space: the teacher's tokenizer spells a text with a space in
        front (`vocab_map.prepends_space`): an answer's first space is dropped.
      tokenizer: the student's; `eos_id` its EOS.
      max_length: P_i + R_i <= max_length, as in `teacher_dataset`.

    Returns:
      `student` with responses `[R_i] int32`: the student's tokenisation of
      the text the teacher's answer spells (up to its last whole UTF-8
      character), then `eos_id`; `stats.response_truncated` counts answers cut
      on either side.
    """
    responses, cut_here = [], 0
    for prompt, ids in zip(student.prompts, answers.responses, strict=True):
        body = [int(t) for t in ids]
        if body and body[-1] == teacher_eos:
            body = body[:-1]
        raw = b"".join(spelling[t] or b"" for t in body)
        text = vocab_map.valid_utf8_prefix(raw).decode("utf-8")
        if prepends_space and text.startswith(" "):
            text = text[1:]
        own = list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
        response, cut = _to_response(own, max_length - len(prompt), eos_id)
        responses.append(response)
        cut_here += cut
    truncated = answers.stats.response_truncated + cut_here
    return TokenizedData(
        prompts=list(student.prompts),
        responses=responses,
        source_index=student.source_index,
        pad_id=student.pad_id,
        stats=dataclasses.replace(student.stats, response_truncated=truncated),
    )


def teacher_dataset(
    train: TokenizedData,
    teacher: tuple[Any, Any],
    *,
    cache_dir: Path,
    fingerprint: dict,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    greedy: bool,
    seed: int,
    batch_size: int,
    eos_id: int,
    pad_id: int,
    max_length: int,
    mesh: jax.sharding.Mesh | None = None,
    chunk_prompts: int = 1024,
    message: Callable[[str], None] = print,
    decode_layout: str = "tensor",
) -> TokenizedData:
    """`train` with its responses replaced by the teacher's completions of its prompts.

    Every process calls this with the same arguments (generation is collective,
    see `complete_token_ids`) and gets the whole dataset back.

    Args:
      train: N examples; its prompts (each `[P_i] int32`) are completed, its
        responses ignored.
      teacher: `(ModelConfig, params)` of the frozen teacher, params on `mesh`.
      cache_dir: where the parts are cached (created by process 0).
      fingerprint: JSON-able description of the generation (teacher source,
        sampling settings, data, tokenizer); a cache made with another one is
        an error. The settings this function sees are checked as well.
      max_new_tokens, temperature, top_k, top_p, greedy: the sampling (see
        `classkd_jax.sampling.SamplingConfig`).
      seed: part k samples with a seed derived from (seed, k); >= 0.
      batch_size: prompts per sampler call.
      eos_id: ends a completion; every response ends with it.
      pad_id: the sampler's padding id.
      max_length: P_i + R_i <= max_length; longer completions are cut, EOS kept last.
      mesh: sample sharded on this mesh; None: the default device.
      chunk_prompts: prompts per cache part.
      message: called (on process 0) with one-line progress messages.

    Returns:
      A `TokenizedData` with `train`'s prompts, source_index and pad_id, and
      responses `[R_i] int32`, 1 <= R_i <= max_length - P_i, each ending with
      `eos_id` (appended where the teacher ran out of budget; an empty
      completion is just `[eos_id]`). `stats.response_truncated` counts the
      completions cut to max_length.

    Raises:
      UserError: the cache was made with another fingerprint, or a part file
        is corrupt or belongs to other prompts.
      ValueError: a bad argument, or a prompt with no room for a response.
    """
    n = len(train)
    if chunk_prompts < 1 or batch_size < 1 or seed < 0:
        raise ValueError(
            f"chunk_prompts={chunk_prompts} and batch_size={batch_size} must be >= 1, "
            f"seed={seed} >= 0"
        )
    for i, p in enumerate(train.prompts):
        if len(p) >= max_length:
            raise ValueError(
                f"prompt {i} has {len(p)} tokens, leaving no room for a response within "
                f"max_length={max_length}"
            )
    sampling = dict(
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )
    # What changes the cached tokens or their alignment with the prompts, checked
    # even if the caller's fingerprint forgets it.
    generation = dict(
        sampling, seed=seed, eos_id=eos_id, chunk_prompts=chunk_prompts, num_prompts=n
    )
    cache_dir = Path(cache_dir)
    _check_fingerprint(cache_dir, {"fingerprint": fingerprint, "generation": generation})

    completions = _completions(
        train.prompts,
        teacher,
        cache_dir,
        sampling,
        seed=seed,
        chunk_prompts=chunk_prompts,
        batch_size=batch_size,
        pad_id=pad_id,
        eos_id=eos_id,
        mesh=mesh,
        message=message,
        decode_layout=decode_layout,
    )
    fitted = [
        _to_response(c, max_length - len(p), eos_id)
        for p, c in zip(train.prompts, completions, strict=True)
    ]
    stats = dataclasses.replace(train.stats, response_truncated=sum(cut for _, cut in fitted))
    return TokenizedData(
        prompts=list(train.prompts),
        responses=[r for r, _ in fitted],
        source_index=train.source_index,
        pad_id=train.pad_id,
        stats=stats,
    )
