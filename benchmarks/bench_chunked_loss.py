"""Peak memory and time of the dense vs the fused chunked ClassKD loss (value + grad).

A ClassKD-shaped student step: three heads (student, teacher, classmate) over
V = 151936 (Qwen2.5), hidden 896, 4096 tokens; loss = forward KL(teacher ||
student) + skewed misfeedback(student, classmate), gradients for the student's
hidden states and head. Memory comes from XLA's compiled memory analysis
(nothing is executed for it, so the full size is measured even where the dense
step would not fit in RAM); time is measured by running both, at
``--time-tokens`` tokens when the dense step at full size is over ``--max-gb``.

  python benchmarks/bench_chunked_loss.py                  # defaults above
  python benchmarks/bench_chunked_loss.py --time-tokens 4096 --max-gb 40
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp

from classkd_jax import losses as L


def token_fn(logits, _):
    s, t, c = logits
    return L.forward_kl_per_token(s, t) + L.misfeedback_per_token(s, c, variant="skew")


def dense_loss(hs, ws, ht, wt, hc, wc, mask):
    def logits(h, w):
        return jnp.dot(h, w, preferred_element_type=jnp.float32)

    s, t, c = logits(hs, ws), logits(ht, wt), logits(hc, wc)
    t, c = jax.lax.stop_gradient(t), jax.lax.stop_gradient(c)
    return L.masked_mean(token_fn((s, t, c), None), mask)


def chunked_loss(hs, ws, ht, wt, hc, wc, mask, *, chunk_size):
    total, count, _ = L.chunked_token_loss(
        token_fn, (hs, ht, hc), (ws, wt, wc), mask, chunk_size=chunk_size
    )
    return total / jnp.maximum(count, 1.0)


def _specs(tokens, hidden, vocab, dtype):
    h = jax.ShapeDtypeStruct((1, tokens, hidden), dtype)
    w = jax.ShapeDtypeStruct((hidden, vocab), dtype)
    return (h, w, h, w, h, w, jax.ShapeDtypeStruct((1, tokens), jnp.float32))


def compiled(fn, specs):
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*specs).compile()


def memory(comp) -> dict[str, float]:
    m = comp.memory_analysis()
    gb = 1 / 2**30
    out = {
        "temp": m.temp_size_in_bytes * gb,
        "args": m.argument_size_in_bytes * gb,
        "out": m.output_size_in_bytes * gb,
        "alias": m.alias_size_in_bytes * gb,
    }
    out["peak"] = out["temp"] + out["args"] + out["out"] - out["alias"]
    return out


def timed(comp, args, reps) -> float:
    times = []  # the caller's first call was the warm-up
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(comp(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_args(specs, seed=0):
    keys = jax.random.split(jax.random.key(seed), len(specs) - 1)
    # Unit hidden states, small head weights: logits with a std of about 1.5.
    args = [
        (1.0 if s.ndim == 3 else 0.05) * jax.random.normal(k, s.shape, s.dtype)
        for k, s in zip(keys, specs[:-1], strict=True)
    ]
    return (*args, jnp.ones(specs[-1].shape, jnp.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--chunks", default="64,128,256", help="comma-separated chunk sizes")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--time-tokens", type=int, default=512)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--skip-time", action="store_true", help="compiled memory only")
    parser.add_argument("--max-gb", type=float, default=8.0, help="largest dense peak to run")
    a = parser.parse_args()
    dtype = jnp.dtype(a.dtype)
    chunks = [int(c) for c in a.chunks.split(",")]
    variants = {"dense": dense_loss}
    for c in chunks:
        variants[f"chunk={c}"] = functools.partial(chunked_loss, chunk_size=c)

    specs = _specs(a.tokens, a.hidden, a.vocab, dtype)
    print(f"compiled memory at {a.tokens} tokens, V={a.vocab}, D={a.hidden}, {a.dtype}")
    mem = {name: memory(compiled(fn, specs)) for name, fn in variants.items()}
    dense = mem["dense"]
    for name, m in mem.items():
        line = "  ".join(f"{k}={v:.3f}GiB" for k, v in m.items())
        ratio = dense["peak"] / m["peak"]
        work = (dense["temp"] + dense["out"]) / (m["temp"] + m["out"])
        print(f"  {name:10s} {line}  peak ratio {ratio:.1f}x  (temp+out ratio {work:.1f}x)")
    if a.skip_time:
        return

    n = a.tokens if dense["peak"] <= a.max_gb else a.time_tokens
    specs = _specs(n, a.hidden, a.vocab, dtype)
    args = random_args(specs)
    print(f"time at {n} tokens, median of {a.reps} after a warm-up")
    ref = None
    for name, fn in variants.items():
        comp = compiled(fn, specs)
        value, grads = jax.block_until_ready(comp(*args))  # also the warm-up
        seconds = timed(comp, args, a.reps)
        if ref is None:
            ref = (seconds, value, grads)
            print(f"  {name:10s} {seconds:7.2f}s  loss {float(value):.6f}")
            continue
        rel = [
            float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y)))
            for x, y in zip(grads, ref[2], strict=True)
        ]
        print(
            f"  {name:10s} {seconds:7.2f}s  ratio {seconds / ref[0]:.2f}x  loss {float(value):.6f}"
            f"  rel grad diff (hidden, head) {rel[0]:.1e}, {rel[1]:.1e}"
        )


if __name__ == "__main__":
    main()
