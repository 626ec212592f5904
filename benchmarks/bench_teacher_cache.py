"""The teacher cache on the testbed: bytes, gradient angles, KD step time.

On the shipped teacher and student initialisation (`configs/demo.py:method=kd`,
the 2000-example distillation set), builds a cache with N draws and the top
k at equal bytes, then prints:
  - bytes per scored token of the cache as stored (ragged: the distinct ids
    only) and as a fixed width of N would store it;
  - the angle between the student's KD gradient from the cache and the dense
    (live-teacher) gradient, mean over `--batches` trainer batches, for the
    sampled cache (counts and Horvitz-Thompson weights) and for top-k +
    residual at the same bytes per token;
  - the jitted step's time, interleaved in one run: KD with the live teacher,
    KD from the cache, and the student alone (SFT: the same forward, backward
    and [B, T, V] log-softmax, no teacher), the fastest a cached step could be.

  python benchmarks/bench_teacher_cache.py [--num_samples N --batches 8 --steps 20]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from classkd_jax.config_utils import load_config
from classkd_jax.teacher_cache import Lookup, SplitReader, builder, read_manifest
from classkd_jax.training import checks, objectives, roles
from classkd_jax.training import data as data_lib
from classkd_jax.training.run import build_models, initial_state
from classkd_jax.training.state import params_shardings, run_state_shardings
from classkd_jax.training.step import SCORED_KEYS, LossPath, StepBuilder, head, hidden_states
from classkd_jax.training.step import objective as role_objective

ROOT = Path(__file__).resolve().parents[1]


def demo_config(method="kd", **changes):
    c = load_config(str(ROOT / "configs" / "demo.py") + f":method={method}")
    with c.unlocked():
        for key, value in changes.items():
            *section, leaf = key.split(".")
            node = c
            for part in section:
                node = node[part]
            node[leaf] = value
    return c


def cache_bytes(root: Path) -> tuple[float, float, int]:
    """(bytes per position as stored without top-k, mean distinct ids a position,
    positions)."""
    stored, distinct, positions = 0, 0, 0
    for chunk in sorted((root / "train").iterdir()):
        positions += np.load(chunk / "lse.npy", mmap_mode="r").shape[0]
        distinct += np.load(chunk / "counts.npy", mmap_mode="r").shape[0]
        for name in ("ids", "counts", "logp", "target_logp", "lse", "entry_offsets", "offsets"):
            stored += (chunk / f"{name}.npy").stat().st_size - 128  # the .npy header
    return stored / positions, distinct / positions, positions


def angles(config, cache_dir: Path, num_batches: int, k: int, k_small: int) -> dict[str, float]:
    """Mean angle (degrees) of each cached gradient to the dense one (top-k at the
    stored bytes, `k`, and at the ragged layout's, `k_small`: the first columns)."""
    tokenizer, where = roles.resolve_tokenizer(config)
    context, why = checks.context_length(config)
    sources = roles.plan_roles(config, tokenizer, where, context, why)
    t_src, s_src = sources["teacher"], sources["student"]
    teacher = roles.load_params(t_src, _mesh(), (0, 1))
    student = roles.load_params(s_src, _mesh(), (0, 2))
    data = data_lib.build(config, tokenizer, sampling_batch=8, needs_prompts=False)
    manifest = read_manifest(cache_dir)
    sampled = Lookup(SplitReader(cache_dir, "train", manifest), data.train)
    topk = Lookup(SplitReader(cache_dir, "train", manifest), data.train, loss="topk")
    vocab = roles.scored_vocab(tokenizer, [t_src.config.vocab_size, s_src.config.vocab_size])
    path = LossPath("dense", 128, vocab)
    variants = {
        "sampled (counts)": {"teacher_cache.weights": "counts"},
        "sampled (horvitz_thompson)": {"teacher_cache.weights": "horvitz_thompson"},
        f"top-{k} + residual": {"teacher_cache.loss": "topk"},
        f"top-{k_small} + residual": {"teacher_cache.loss": "topk"},
    }
    parts = {"dense": objectives.kd_parts(config)}
    for name, change in variants.items():
        c = demo_config(**change, **{"teacher.cache": str(cache_dir)})
        with c.unlocked():
            c.teacher_cache.num_samples = config.teacher_cache.num_samples
            c.teacher_cache.top_k = k
        parts[name] = objectives.kd_parts(c)

    @functools.partial(jax.jit, static_argnums=(0,))
    def grad(name, batch, extras):
        inputs = {
            "batches": {"off": batch},
            "others": {},
            "heads": {},
            "extras": {"off": extras},
            "counts": {"off": jnp.sum(batch["loss_mask"] != 0, dtype=jnp.float32)},
        }
        if name == "dense":
            inputs["others"] = {("teacher", "off"): hidden_states(t_src.config, teacher, batch)}
            inputs["heads"] = {"teacher": head(t_src.config, teacher)[0]}
        fn = lambda p: role_objective(p, s_src.config, parts[name], inputs, path)[0]  # noqa: E731
        g = jax.grad(fn)(student)
        return jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])

    out = {name: [] for name in variants}
    for _ in range(num_batches):
        host = next(data.off)
        host = {k_: host[k_] for k_ in SCORED_KEYS}
        batch = {k_: jnp.asarray(v) for k_, v in host.items()}
        dense = grad("dense", batch, {})
        for name in variants:
            lookup = topk if "top" in name else sampled
            extras = {k_: jnp.asarray(v) for k_, v in lookup.batch_arrays(host).items()}
            if name.startswith(f"top-{k_small} "):
                extras = {k_: v[..., :k_small] for k_, v in extras.items()}
            g = grad(name, batch, extras)
            cos = float(g @ dense / jnp.linalg.norm(g) / jnp.linalg.norm(dense))
            out[name].append(float(np.degrees(np.arccos(np.clip(cos, -1, 1)))))
    return {name: float(np.mean(v)) for name, v in out.items()}


def _mesh():
    from classkd_jax.sharding import make_mesh

    return make_mesh(data=1, devices=jax.devices()[:1])


def _step_setup(config, cache_dir: Path, variant: str):
    """(jitted step, state, frozen, batches fn) of one timed variant: 'live' (KD,
    the teacher's forward in the step), 'cache' (KD from the cache) or 'sft' (the
    student alone: its forward and backward with CE, the same [B, T, V] log-softmax,
    no teacher: the fastest a cached KD step could be)."""
    method = "sft" if variant == "sft" else "kd"
    c = demo_config(method, **{"teacher.cache": str(cache_dir) if variant == "cache" else ""})
    with c.unlocked():
        c.teacher_cache.num_samples = config.teacher_cache.num_samples
        c.teacher_cache.top_k = config.teacher_cache.top_k
    tokenizer, where = roles.resolve_tokenizer(c)
    context, why = checks.context_length(c)
    sources = roles.plan_roles(c, tokenizer, where, context, why)
    mesh = _mesh()
    models = build_models(c, sources, 1000, len(tokenizer))
    data = data_lib.build(c, tokenizer, sampling_batch=8, needs_prompts=False)
    frozen, frozen_sh = {}, {}
    if variant == "cache":
        manifest = read_manifest(cache_dir)
        data.cache = Lookup(SplitReader(cache_dir, "train", manifest), data.train)
    elif variant == "live":
        frozen = {"teacher": roles.load_params(sources["teacher"], mesh, (0, 1))}
        frozen_sh = {"teacher": params_shardings(models.teacher.config, mesh)}
    builder_ = StepBuilder(c, models, mesh)
    opt = (models.student.config, models.student.optimizer)
    step = builder_.jit(run_state_shardings(mesh, opt, None), frozen_sh)
    state = initial_state(c, models, sources, mesh)
    return step, state, frozen, lambda: data.next_off(builder_.rows)


def step_times(config, cache_dir: Path, steps: int) -> dict[str, dict[str, float]]:
    """Per variant (`_step_setup`) the median seconds of a jitted step and of its host
    batch assembly, and the step's counted FLOPs. The variants' steps run in turn
    (live, cache, sft, live, ...) after one warm-up (compile) each, so a load that
    moves during the run moves all three alike."""
    setups = {v: _step_setup(config, cache_dir, v) for v in ("live", "cache", "sft")}
    states, batches, out = {}, {}, {}
    for name, (step, state, frozen, next_batch) in setups.items():
        start = time.perf_counter()
        batches[name] = [next_batch() for _ in range(steps + 1)]
        batch_s = (time.perf_counter() - start) / (steps + 1)
        state, m = step(state, frozen, {"off": batches[name][0]}, jax.random.key(0))
        out[name] = {"batch": batch_s, "flops": float(m["flops"]), "times": []}
        states[name] = state
    for t in range(steps):
        for name, (step, _, frozen, _) in setups.items():
            start = time.perf_counter()
            states[name], m = step(
                states[name], frozen, {"off": batches[name][t + 1]}, jax.random.key(t)
            )
            jax.block_until_ready((states[name], m))
            out[name]["times"].append(time.perf_counter() - start)
    for value in out.values():
        value["step"] = float(np.median(value.pop("times")))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_samples", type=int, default=0, help="N draws (0: the config's default)")
    p.add_argument(
        "--batches", type=int, default=8, help="batches for the gradient angles (0: skip them)"
    )
    p.add_argument("--steps", type=int, default=20, help="timed steps of each variant")
    p.add_argument("--out", default="", help="cache directory ('' = a temporary one)")
    args = p.parse_args()
    n = args.num_samples or int(demo_config().teacher_cache.num_samples)
    k = (10 * n) // 8  # top-k entries (id int32 + log p float32) at the sampled cache's bytes
    config = demo_config(**{"teacher_cache.num_samples": n, "teacher_cache.top_k": k})
    out = Path(args.out or tempfile.mkdtemp(prefix="teacher-cache-"))
    start = time.perf_counter()
    result = builder.build(config, out, message=lambda _: None)
    build_s = time.perf_counter() - start
    stored, distinct, positions = cache_bytes(out)
    print(
        f"device: {jax.devices()[0].device_kind}; cache {out}: {positions} scored tokens, "
        f"built in {build_s:.1f} s ({result['built']} chunk(s))"
    )
    k_small = max(int(round((stored - 8) / 8)), 1)
    print(
        f"bytes per token, N={n}: {stored:.1f} as stored (ragged: {distinct:.2f} distinct ids a "
        f"token), {10 * n + 8} at a fixed width of N; top-k + residual at those bytes: "
        f"k={k_small} ({8 * k_small + 8} bytes), k={k} ({8 * k + 8} bytes)"
    )
    for name, angle in (
        angles(config, out, args.batches, k, k_small) if args.batches else {}
    ).items():
        print(
            f"gradient angle to the dense KD gradient, mean over {args.batches} batches: "
            f"{name}: {angle:.2f} deg"
        )
    times = step_times(config, out, args.steps)
    live, cache, sft = (times[k] for k in ("live", "cache", "sft"))
    print(
        f"jitted step, batch {config.data.batch_size} x {config.data.max_length}, median of "
        f"{args.steps} interleaved: KD live {live['step'] * 1e3:.1f} ms, KD from the cache "
        f"{cache['step'] * 1e3:.1f} ms, the student alone (SFT) {sft['step'] * 1e3:.1f} ms"
    )
    print(
        f"live / cache {live['step'] / cache['step']:.2f}x; live / student alone (the ceiling "
        f"of a cached step) {live['step'] / sft['step']:.2f}x; cache / student alone "
        f"{cache['step'] / sft['step']:.2f}"
    )
    print(
        "counted FLOPs a step (GFLOP/s achieved): "
        + ", ".join(
            f"{k} {v['flops'] / 1e9:.2f} G ({v['flops'] / v['step'] / 1e9:.1f})"
            for k, v in times.items()
        )
        + f"; live / cache FLOPs {live['flops'] / cache['flops']:.2f}x"
    )
    print(
        f"host batch assembly (not in the step times): live {live['batch'] * 1e3:.1f} ms, "
        f"with the cache lookup {cache['batch'] * 1e3:.1f} ms per batch"
    )


if __name__ == "__main__":
    main()
