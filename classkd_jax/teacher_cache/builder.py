"""Runs the teacher once over a run's fixed rows and writes the cache (`store`).

    build(config, out_dir)   # what `python -m classkd_jax.teacher_cache` does

The rows are the run's tokenised training split (and the dev split when the
run validates), one entry per example, so one cache serves every seed,
shuffle and packing of the same data: a batch finds an example's positions
by its tokens (`lookup`). Examples are packed into rows of the largest length
bucket for the teacher's forward (packing does not change a position's
logits: segments do not attend to each other and positions restart), then
`compute.position_stats` runs over the scored positions in fixed-size
groups, so no `[B, T, V]` logits are formed.
"""

from __future__ import annotations

import functools
import json
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from classkd_jax import sharding
from classkd_jax.data import batching, pipeline
from classkd_jax.data.tokenize import TokenizedData
from classkd_jax.models.layers import softcap
from classkd_jax.teacher_cache import compute, store
from classkd_jax.training import checks, roles
from classkd_jax.training.step import head, hidden_states

SPLIT_IDS = {"train": 0, "dev": 1}


def cache_temperature(config) -> float:
    """The loss temperature the cache's distributions are taken at."""
    section = {"kd": "kd", "distillm": "distillm"}.get(config.method, "classkd")
    return float(config[section].temperature)


def data_fingerprint(data: TokenizedData) -> dict:
    """The examples' count, tokens and a CRC of their prompt and response ids."""
    crc = 0
    for p, r in zip(data.prompts, data.responses, strict=True):
        crc = zlib.crc32(np.asarray(p, np.int32).tobytes(), crc)
        crc = zlib.crc32(np.asarray(r, np.int32).tobytes(), crc)
    return {"examples": len(data), "tokens": int(data.lengths().sum()), "crc32": crc}


def teacher_files(source) -> dict | None:
    """Names and sizes of the teacher's weight files (cheap; checked without loading them)."""
    if source.kind not in ("hf", "checkpoint") or not Path(source.path).is_dir():
        return None
    files = sorted(p for p in Path(source.path).rglob("*") if p.is_file())
    return {str(p.relative_to(source.path)): p.stat().st_size for p in files}


def fingerprint(config, source, tokenizer, tokenizer_where: str, splits: dict) -> dict:
    """What the cache depends on (`store.CHECKED`), computed without loading weights."""
    c = config.teacher_cache
    m = source.config
    return {
        "format": store.FORMAT,
        "teacher": source.describe(),
        "teacher_model": f"{m.family} {m.num_layers}L d={m.hidden_size} V={m.vocab_size} {m.dtype}",
        # the seed makes a random-init teacher's weights; a loaded one ignores it
        "teacher_seed": int(config.seed) if source.kind == "random" else None,
        "teacher_files": teacher_files(source),
        "tokenizer": f"{tokenizer_where} ({len(tokenizer)} tokens)",
        "template": str(config.data.template),
        "temperature": cache_temperature(config),
        "num_samples": int(c.num_samples),
        "top_k": int(c.top_k),
        "seed": int(c.seed),
        "data": {name: data_fingerprint(d) for name, d in splits.items()},
    }


def load_splits(config, tokenizer) -> dict[str, TokenizedData]:
    """The run's tokenised training split, and its dev split when the run validates."""
    cfg = config.data
    out = {
        "train": pipeline.tokenize_examples_for(cfg, tokenizer, pipeline.load_split(cfg, "train"))
    }
    if checks.validates(config):
        dev = pipeline.load_split(cfg, "dev")
        if dev:
            out["dev"] = pipeline.tokenize_examples_for(cfg, tokenizer, dev)
    return out


def params_fingerprint(params) -> str:
    """A CRC of every leaf's sum and sum of squares (recorded, for the record only)."""
    flat = np.concatenate([np.ravel(v) for v in jax.tree.leaves(_leaf_stats(params))])
    return f"{zlib.crc32(flat.astype(np.float32).tobytes()):08x}"


@jax.jit
def _leaf_stats(params):
    def one(x):
        x = x.astype(jnp.float32)
        return jnp.stack([jnp.sum(x), jnp.sum(jnp.square(x))])

    return jax.tree.map(one, params)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _hidden(cfg, params, batch):
    return hidden_states(cfg, params, batch)


@functools.partial(jax.jit, static_argnames=("cfg", "vocab", "temperature", "num_samples", "top_k"))
def _stats(
    cfg,
    params,
    hidden,
    rows,
    cols,
    targets,
    example,
    position,
    split_key,
    *,
    vocab,
    temperature,
    num_samples,
    top_k,
):
    h = hidden[rows, cols]
    w, vocab_major = head(cfg, params)
    spec = "md,vd->mv" if vocab_major else "md,dv->mv"
    z = jnp.einsum(spec, h.astype(w.dtype), w, preferred_element_type=jnp.float32)[:, :vocab]
    z = softcap(z, cfg.final_logit_softcap)
    keys = jax.vmap(lambda e, j: jax.random.fold_in(jax.random.fold_in(split_key, e), j))(
        example, position
    )
    return compute.position_stats(
        z, targets, keys, temperature=temperature, num_samples=num_samples, top_k=top_k
    )


def chunk_arrays(
    teacher: tuple,
    data: TokenizedData,
    examples: range,
    *,
    row_length: int,
    rows: int,
    group: int,
    split_key,
    vocab: int,
    temperature: float,
    num_samples: int,
    top_k: int,
) -> dict[str, np.ndarray]:
    """The stored fields of the contiguous `examples` (`store` layout: fields over
    their scored positions in example order, and `offsets`)."""
    cfg, params = teacher
    idx = np.asarray(examples)
    order = np.arange(len(idx))
    plan = batching.plan_packing(data.lengths()[idx], order, row_length)
    plan = [[int(idx[i]) for i in row] for row in plan]
    parts: dict[str, list] = {"example": [], "position": []}
    kw = dict(vocab=vocab, temperature=temperature, num_samples=num_samples, top_k=top_k)
    for start in range(0, len(plan), rows):
        block = plan[start : start + rows]
        pairs = [[(data.prompts[e], data.responses[e]) for e in row] for row in block]
        batch = batching.pack_rows(pairs + [[]] * (rows - len(block)), row_length, data.pad_id)
        hidden = _hidden(cfg, params, {k: jnp.asarray(v) for k, v in batch.items()})
        r, t = np.nonzero(batch["loss_mask"])
        seg = batch["segment_ids"][r, t]
        ex = np.array([block[ri][s - 1] for ri, s in zip(r, seg, strict=True)], np.int32)
        pos = batch["positions"][r, t].astype(np.int32)
        targets = batch["targets"][r, t].astype(np.int32)
        for g in range(0, len(r), group):
            n = len(r[g : g + group])

            def pad(a, g=g, n=n):
                return jnp.asarray(np.concatenate([a[g : g + n], np.zeros(group - n, a.dtype)]))

            out = _stats(
                cfg,
                params,
                hidden,
                pad(r),
                pad(t),
                pad(targets),
                pad(ex),
                pad(pos),
                split_key,
                **kw,
            )
            for k, v in jax.device_get(out).items():
                parts.setdefault(k, []).append(np.asarray(v)[:n])
            parts["example"].append(ex[g : g + n])
            parts["position"].append(pos[g : g + n])
    cat = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}
    sort = np.lexsort((cat.pop("position"), cat["example"]))
    local = cat.pop("example")[sort] - int(idx[0])
    arrays = {k: v[sort] for k, v in cat.items()}
    counts = np.bincount(local, minlength=len(idx)) if len(local) else np.zeros(len(idx), int)
    arrays["offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return arrays


def build(
    config,
    out_dir: Path,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    max_chunks: int | None = None,
    message: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> dict[str, int]:
    """Writes (or finishes) the cache of `config`'s rows under `out_dir`.

    Process `process_index` of `process_count` (default JAX's) writes its
    chunks (`store`); chunks already whole are skipped, so a rerun of a killed
    job resumes. `max_chunks` stops after building that many (tests: a kill).
    An existing manifest that does not match `config` is refused in one line;
    one that lacks a split `config` reads (the dev split of a run that
    validates) but matches otherwise gets that split added.

    Returns:
      {'built': chunks written now, 'skipped': chunks found whole}.
    """
    out_dir = Path(out_dir)
    p = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    c = config.teacher_cache
    tokenizer, where = roles.resolve_tokenizer(config)
    context, why = checks.context_length(config)
    source = roles.plan_roles(config, tokenizer, where, context, why)["teacher"]
    splits = load_splits(config, tokenizer)
    expected = fingerprint(config, source, tokenizer, where, splits)
    chunk_examples = int(c.chunk_examples)
    expected["splits"] = {
        name: {"examples": len(d), "chunk_examples": chunk_examples} for name, d in splits.items()
    }
    found = {}
    if (out_dir / store.MANIFEST).is_file():
        # splits are added, never dropped: a cache built for a run that did not validate
        # grows the dev split a validating run needs, and one that has it serves a run
        # that does not (compare: KD's rows, then DistiLLM's); the rest must match
        found = store.check(out_dir, expected, common_splits=True)
    elif p == 0:
        store.write_manifest(out_dir, expected)
    todo = [
        (name, chunk)
        for name, d in splits.items()
        for chunk in range(store.num_chunks(len(d), chunk_examples))
        if chunk % count == p
    ]
    pending = [(n, ch) for n, ch in todo if not store.chunk_done(out_dir, n, ch)]
    result = {"built": 0, "skipped": len(todo) - len(pending)}
    if not pending:
        return result
    mesh = sharding.make_mesh(devices=jax.local_devices())
    params = roles.load_params(source, mesh, (int(config.seed), 1))
    vocab = roles.scored_vocab(tokenizer, [source.config.vocab_size])
    root = jax.random.key(int(c.seed))
    kw = dict(
        row_length=int(max(config.data.length_buckets)),
        rows=int(c.batch_rows),
        group=int(c.positions_per_group),
        vocab=vocab,
        temperature=cache_temperature(config),
        num_samples=int(c.num_samples),
        top_k=int(c.top_k),
    )
    for name, chunk in pending:
        if max_chunks is not None and result["built"] >= max_chunks:
            break
        d = splits[name]
        lo = chunk * chunk_examples
        examples = range(lo, min(lo + chunk_examples, len(d)))
        arrays = chunk_arrays(
            (source.config, params),
            d,
            examples,
            split_key=jax.random.fold_in(root, SPLIT_IDS[name]),
            **kw,
        )
        store.write_chunk(out_dir, name, chunk, store.ragged(arrays))
        result["built"] += 1
        message(f"{name} chunk {chunk}: {len(examples)} examples, {len(arrays['lse'])} positions")
    if p == 0:
        info = dict(expected, teacher_params=params_fingerprint(params))
        for key in ("data", "splits"):
            info[key] = {**found.get(key, {}), **expected[key]}
        store.write_manifest(out_dir, info)
    return result


def describe(out_dir: Path) -> str:
    """One line on a cache: positions and bytes per position."""
    manifest = store.read_manifest(out_dir)
    total, positions = 0, 0
    for path in Path(out_dir).rglob("*.npy"):
        total += path.stat().st_size
        if path.name == "lse.npy":
            positions += int(np.load(path, mmap_mode="r").shape[0])
    per = total / max(positions, 1)
    return (
        f"{out_dir}: {positions} positions, {total / 2**20:.1f} MiB ({per:.0f} bytes per position; "
        f"N={manifest['num_samples']}, top_k={manifest['top_k']})"
    )


def manifest_json(out_dir: Path) -> str:
    return json.dumps(store.read_manifest(out_dir), indent=2)
