"""Where a model's forward (and backward) spends its time on XLA:CPU, by thunk kind.

    python benchmarks/profile_model_cpu.py                   # the testbed's three rows
    python benchmarks/profile_model_cpu.py --role student --grad

Traces `--calls` jitted calls of the testbed's teacher or student
(`configs/demo.py` shapes, random weights, batch 32 x 160, loss: the mean
log-softmax) with `jax.profiler` and sums the XLA:CPU thunks' time by kind:
matmuls (XNNPACK fusions), copies / transposes, buffer fills (broadcasts),
dynamic slices (the layer scan), other. benchmarks/README.md, "Teacher cache",
reads it: why the cached KD step is not 3x faster than the live one on CPU.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from bench_teacher_cache import demo_config

from classkd_jax.models import Transformer
from classkd_jax.training import checks, roles
from classkd_jax.training.flops import forward_flops
from classkd_jax.training.run import build_models

KINDS = (
    ("ynn", "matmuls (XNNPACK fusions)"),
    ("copy", "copies / transposes"),
    ("broadcast", "buffer fills (broadcasts)"),
    ("dynamic", "dynamic slices"),
)
NOT_THUNKS = ("ThunkExecutor", "$", "SlinkyThreadPool", "while")


def kind(name: str) -> str:
    for key, label in KINDS:
        if name.startswith(key) or (key == "broadcast" and key in name):
            return label
    return "other"


def profile(config, grad: bool, calls: int, rows: int = 32, length: int = 160) -> dict:
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(3, config.vocab_size, (rows, length)), jnp.int32)
    positions = jnp.tile(jnp.arange(length, dtype=jnp.int32), (rows, 1))
    segments = jnp.ones((rows, length), jnp.int32)
    params = Transformer(config).init(jax.random.key(0), tokens[:1, :4])["params"]

    def loss(p):
        out = Transformer(config).apply(
            {"params": p}, tokens, positions, segments, compute_logits=True, deterministic=True
        )
        return jnp.mean(jax.nn.log_softmax(out.logits))

    fn = jax.jit(jax.grad(loss) if grad else loss)
    jax.block_until_ready(fn(params))
    where = tempfile.mkdtemp(prefix="profile-")
    with jax.profiler.trace(where, create_perfetto_trace=True):
        for _ in range(calls):
            jax.block_until_ready(fn(params))
    path = next(Path(where).rglob("perfetto_trace.json.gz"))
    trace = json.loads(gzip.decompress(path.read_bytes()))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    times = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(NOT_THUNKS):
            times[kind(e["name"])] += e.get("dur", 0) / 1e3 / calls
    flops = forward_flops(config, rows, length) * (3 if grad else 1)
    return {"ms": sum(times.values()), "gflops": flops / 1e9, "kinds": times}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=("teacher", "student", "all"), default="all")
    p.add_argument("--grad", action="store_true", help="forward + backward (default forward)")
    p.add_argument("--calls", type=int, default=3)
    args = p.parse_args()
    c = demo_config()
    tokenizer, where = roles.resolve_tokenizer(c)
    context, why = checks.context_length(c)
    models = build_models(
        c, roles.plan_roles(c, tokenizer, where, context, why), 1000, len(tokenizer)
    )
    rows = [(args.role, args.grad)]
    if args.role == "all":
        rows = [("teacher", False), ("student", False), ("student", True)]
    for role, grad in rows:
        r = profile(getattr(models, role).config, grad, args.calls)
        shares = ", ".join(f"{k} {100 * v / r['ms']:.0f}%" for k, v in r["kinds"].most_common())
        print(
            f"{role} {'forward + backward' if grad else 'forward'}: {r['ms']:.0f} ms a call, "
            f"{r['gflops'] / r['ms'] * 1e3:.1f} counted GFLOP/s; {shares}"
        )


if __name__ == "__main__":
    main()
