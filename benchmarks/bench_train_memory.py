"""Peak memory and time of the full ClassKD train step: chunked vs dense losses, same run.

  python benchmarks/bench_train_memory.py [--chunks 1024,256,128,64] [--batch 8] [--off-len 128]
                                          [--prompt-len 96] [--new 32] [--reps 2]

The whole jitted step of `classkd_jax.training.step.StepBuilder` (what the
trainer runs), with three models at Qwen2.5's vocabulary (151936) and few
layers (`tiny-qwen2` presets: teacher 2 layers d=128, student and classmate 2
layers d=64, tied heads, float32): the teacher's forwards on both batches, the
student's forward + backward on the dataset batch (`--batch` x `--off-len`)
and on its samples (`--prompt-len` + `--new`), the classmate's forward on the
samples (misfeedback) and its own update on the dataset batch (gap control
off, so it updates), AdamW for both. Batches are hand-made token rows (some
padding, samples of varying length); no tokenizer is involved (the models'
configs set the vocabulary).

`config.loss.impl='dense'` forms `[B, T, V]` logits of every model;
'chunked' (`loss.chunk_size` tokens per chunk) never does. Memory is XLA's
compiled memory analysis of each variant's step (`step.jitted(batch).lower(
state, frozen, batch, rng).compile().memory_analysis()`; nothing is executed
for it): peak ~ temp + arguments + outputs - aliased (the donated state). Time
is the median of `--reps` executed steps per variant, the variants alternating
step by step (so all see the same machine load); compiles are excluded and
printed. Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import jax
import numpy as np

from classkd_jax import sharding
from classkd_jax.config_utils import import_sibling
from classkd_jax.data import to_global
from classkd_jax.models import get_preset
from classkd_jax.sampling import data_axes
from classkd_jax.training import objectives, optim, roles
from classkd_jax.training.state import init_run_state, params_shardings, run_state_shardings
from classkd_jax.training.step import Models, Role, StepBuilder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30


def model_config(width: int, layers: int, vocab: int, context: int):
    heads = max(width // 32, 1)
    return get_preset(
        "tiny-qwen2",
        vocab_size=vocab,
        hidden_size=width,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(heads // 2, 1),
        head_dim=width // heads,
        intermediate_size=4 * width,
        max_position_embeddings=context,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def step_config(impl: str, chunk: int, steps: int):
    config = import_sibling(os.path.join(ROOT, "configs", "x.py"), "classkd").get_config(
        "size=tiny"
    )
    config = copy.deepcopy(config)
    with config.unlocked():
        config.loss.impl = impl
        config.loss.chunk_size = chunk
        config.steps = steps
        config.classkd.lmbda = 1.0
        config.classmate.min_gap = -1.0  # gap control off: the classmate updates every step
    return config


def make_batch(args, vocab: int, rows, seed: int = 0) -> dict:
    """{'off': a right-padded dataset batch, 'on': samples as the sampler returns them}."""
    rng = np.random.default_rng(seed)
    b, t = args.batch, args.off_len
    lengths = rng.integers(t // 2, t + 1, size=b)
    valid = np.arange(t)[None] < lengths[:, None]
    tokens = np.where(valid, rng.integers(3, vocab, size=(b, t)), 0).astype(np.int32)
    prompt_len = rng.integers(4, t // 2, size=b)
    loss_mask = valid & (np.arange(t)[None] >= prompt_len[:, None] - 1)
    loss_mask[np.arange(b), lengths - 1] = False  # the last token predicts nothing
    targets = np.concatenate([tokens[:, 1:], np.zeros((b, 1), np.int32)], axis=1)
    off = {
        "tokens": tokens,
        "positions": np.where(valid, np.arange(t)[None], 0).astype(np.int32),
        "segment_ids": valid.astype(np.int32),
        "targets": targets,
        "loss_mask": loss_mask.astype(np.float32),
    }
    p, n = args.prompt_len, args.new
    plen = rng.integers(p // 4, p + 1, size=b)
    prompt_mask = np.arange(p)[None] >= (p - plen)[:, None]  # left-padded
    new_len = rng.integers(1, n + 1, size=b)
    mask = np.arange(n)[None] < new_len[:, None]
    on = {
        "prompt_tokens": np.where(prompt_mask, rng.integers(3, vocab, size=(b, p)), 0).astype(
            np.int32
        ),
        "prompt_mask": prompt_mask,
        "tokens": np.where(mask, rng.integers(3, vocab, size=(b, n)), 0).astype(np.int32),
        "mask": mask,
    }
    return {"off": to_global(off, rows), "on": to_global(on, rows)}


class Variant:
    def __init__(self, name, config, models, mesh, params, teacher, batch):
        self.name = name
        self.mesh = mesh
        self.builder = StepBuilder(config, models, mesh)
        opt = lambda r: (r.config, r.optimizer)
        state_sh = run_state_shardings(mesh, opt(models.student), opt(models.classmate))
        frozen_sh = {"teacher": params_shardings(models.teacher.config, mesh)}
        self.step = self.builder.jit(state_sh, frozen_sh)
        s, c = models.student, models.classmate
        self.state = init_run_state(
            mesh, (s.config, s.optimizer, params), (c.config, c.optimizer, params)
        )
        self.frozen = {"teacher": teacher}
        self.batch = {**batch, "control": objectives.control(config, 0)}
        self.rng = jax.random.key(0)

    def compile(self):
        start = time.perf_counter()
        with sharding.activation_sharding(self.mesh):
            lowered = self.step.jitted(self.batch).lower(
                self.state, self.frozen, self.batch, self.rng
            )
        compiled = lowered.compile()
        self.compile_s = time.perf_counter() - start
        m = compiled.memory_analysis()
        self.mem = {
            "temp": m.temp_size_in_bytes,
            "args": m.argument_size_in_bytes,
            "out": m.output_size_in_bytes,
            "alias": m.alias_size_in_bytes,
        }
        self.mem["peak"] = self.mem["temp"] + self.mem["args"] + self.mem["out"] - self.mem["alias"]
        return self

    def run_once(self) -> float:
        start = time.perf_counter()
        self.state, metrics = self.step(self.state, self.frozen, self.batch, self.rng)
        jax.block_until_ready((self.state, metrics))
        self.metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chunks", default="1024,256,128,64", help="chunk sizes (tokens)")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--teacher-width", type=int, default=128)
    p.add_argument("--student-width", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--off-len", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=96)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--reps", type=int, default=2, help="timed steps per variant (after one)")
    p.add_argument("--max-gb", type=float, default=16.0, help="skip timing a variant above this")
    p.add_argument("--skip-time", action="store_true")
    args = p.parse_args()

    device = jax.devices()[0]
    mesh = sharding.make_mesh(data=1, devices=[device])
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(data_axes(mesh) or None))
    context = max(args.off_len, args.prompt_len + args.new)
    t_cfg = model_config(args.teacher_width, args.layers, args.vocab, context)
    s_cfg = model_config(args.student_width, args.layers, args.vocab, context)
    print(
        f"jax {jax.__version__} on {device.platform} ({device.device_kind}); vocab {args.vocab}; "
        f"teacher {args.layers}L d={args.teacher_width}, student/classmate {args.layers}L "
        f"d={args.student_width}; off batch {args.batch}x{args.off_len}, on-policy batch "
        f"{args.batch}x({args.prompt_len}+{args.new})",
        flush=True,
    )
    student_params = roles.host_init(s_cfg, (0, 2))
    teacher = sharding.put(roles.host_init(t_cfg, (0, 1)), params_shardings(t_cfg, mesh))
    batch = make_batch(args, args.vocab, rows)
    variants = [("dense", 0)] + [("chunked", int(c)) for c in args.chunks.split(",") if c]
    built = []
    for impl, chunk in variants:
        config = step_config(impl, chunk or 1024, 1000)
        opt = lambda block: Role(s_cfg, *optim.make_optimizer(block, 1000))
        models = Models(opt(config.student), Role(t_cfg), opt(config.classmate), args.vocab)
        name = "dense" if impl == "dense" else f"chunked, chunk={chunk}"
        v = Variant(name, config, models, mesh, student_params, teacher, batch).compile()
        m = v.mem
        print(
            f"{name}: compiled in {v.compile_s:.1f} s; temp {m['temp'] / GIB:.3f} GiB, args "
            f"{m['args'] / GIB:.3f}, out {m['out'] / GIB:.3f}, aliased {m['alias'] / GIB:.3f}, "
            f"peak {m['peak'] / GIB:.3f} GiB",
            flush=True,
        )
        built.append(v)

    times = {v.name: [] for v in built}
    timed = [v for v in built if not args.skip_time and v.mem["peak"] / GIB <= args.max_gb]
    for v in timed:  # first execution (allocations), not counted
        v.run_once()
    for _ in range(args.reps):
        for v in timed:
            times[v.name].append(v.run_once())
    dense = built[0]
    d_time = statistics.median(times["dense"]) if times["dense"] else None
    header = [
        "variant", "temp GiB", "args GiB", "out GiB", "aliased GiB", "peak GiB", "peak ratio",
        "temp ratio", "step s (median)", "time ratio", "loss",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    results = {"args": vars(args), "device": device.device_kind, "variants": {}}
    for v in built:
        m = v.mem
        t = statistics.median(times[v.name]) if times[v.name] else None
        loss = v.metrics.get("loss") if hasattr(v, "metrics") else None
        row = [
            v.name,
            *(f"{m[k] / GIB:.3f}" for k in ("temp", "args", "out", "alias", "peak")),
            f"{dense.mem['peak'] / m['peak']:.1f}x",
            f"{dense.mem['temp'] / m['temp']:.1f}x",
            "-" if t is None else f"{t:.2f}",
            "-" if t is None or d_time is None else f"{t / d_time:.2f}x",
            "-" if loss is None else f"{loss:.5f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
        results["variants"][v.name] = {
            **{k: m[k] for k in m},
            "compile_s": v.compile_s,
            "times_s": times[v.name],
            "loss_last": loss,
        }
    print()
    print("\n".join(lines))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
