"""Tokens per second: our jitted sampler vs transformers' `generate` (PyTorch), same run.

  python benchmarks/bench_sampler.py [--family llama|gpt2] [--widths 512] [--batch 16]
                                     [--new 128] [--reps 3]

For each width, builds a random model (default 6 layers, vocab 32k) with
transformers, saves it to a temp dir, loads the same weights with
`classkd_jax.models.load_hf`, and times both on the same left-padded prompts
(lengths 16..48, bucket 64), with no EOS so both produce exactly `--new` tokens
per row. The two sides alternate rep by rep (so both see the same machine
load) and each keeps its best rep. Our compile time is excluded from the rate
and reported separately.

It also measures this machine's memory bandwidth (a jitted sum over 256 MiB)
and prints the weight-streaming ceiling: a decode step reads every weight but
the input embedding once, so no sampler can beat
`batch / (weight_bytes / bandwidth)` tokens per second, whatever its overheads.
And it times the step's weight products alone (every layer kernel and the head,
on `--batch` rows, as one dependent chain in a jitted loop, with the layer
kernels as the model holds them and transposed; the same chain in PyTorch for
comparison): no XLA sampler of this model on this machine can beat
`batch / products_time` tokens per second either (the products-only ceiling).
Prints one line per measurement and a final JSON line. Both sides use every CPU
core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from classkd_jax.models import lm_head, load_hf, unstack_layers
from classkd_jax.sampling import Sampler, SamplingConfig, left_pad


def hf_config(family: str, layers: int, width: int, vocab: int):
    heads = width // 64
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab, n_positions=1024, n_embd=width, n_layer=layers, n_head=heads
        )
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
    )


def hf_generate_kwargs(prompts, pad_id, new_tokens, do_sample):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kw = dict(
        input_ids=ids,
        attention_mask=mask,
        do_sample=do_sample,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=pad_id,
        eos_token_id=None,
    )
    if do_sample:
        kw.update(temperature=1.0, top_k=0, top_p=1.0)
    return width, kw


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def measure(hf, ours, prompts, new_tokens, greedy, reps):
    """Alternates transformers and our sampler `reps` times; returns both timings."""
    width, kw = hf_generate_kwargs(prompts, 0, new_tokens, not greedy)
    config, params = ours
    tokens, mask, _ = left_pad(prompts, 64, 0)
    sampler = Sampler(config)
    cfg = SamplingConfig(max_new_tokens=new_tokens, greedy=greedy, pad_id=0)
    run_ours = lambda i: jax.block_until_ready(
        sampler(params, tokens, mask, jax.random.key(i), cfg)
    )
    with torch.inference_mode():
        hf.generate(**{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        first, _ = timed(lambda: run_ours(0))  # compile + one run
        hf_times, our_times = [], []
        for i in range(reps):
            t, hf_out = timed(lambda: hf.generate(**kw))
            hf_times.append(t)
            t, out = timed(lambda i=i: run_ours(i + 1))
            our_times.append(t)
    assert hf_out.shape[1] == width + new_tokens
    assert int(out.num_steps) == new_tokens and np.asarray(out.mask).all()
    compile_s = first - statistics.median(our_times)
    return hf_times, our_times, compile_s, hf_out[:, width:].numpy(), np.asarray(out.tokens)


def memory_bandwidth(reps: int = 5) -> float:
    """Bytes per second of a jitted sum over a 256 MiB float32 array (all cores)."""
    x = jnp.ones((64 * 1024 * 1024,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    best = min(timed(lambda: total(x).block_until_ready())[0] for _ in range(reps))
    return x.nbytes / best


def streamed_weight_bytes(params) -> int:
    """Bytes a decode step must read: every parameter except the input embedding
    table, of which a step gathers only B rows (a tied embedding is read whole,
    as the head)."""
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    if "lm_head" in params:
        total -= params["embed"]["embedding"].nbytes
    return total


def step_products(params, config):
    """The weight products of one decode step, as (K, N) kernels in the sampler's
    own layouts: every layer kernel [in..., out...] flattened to [K, N] (in-major,
    as the model holds it), and the LM head [V, D] (vocabulary-major, as
    `sampling.Decoder` lays it out)."""
    layers = unstack_layers(params, config)
    kernels = []
    for i in range(config.num_layers):
        for path, w in jax.tree_util.tree_leaves_with_path(layers[f"layers_{i}"]):
            if jax.tree_util.keystr(path).endswith("['kernel']"):
                # q/k/v: [D, H, Dh]; o: [H, Dh, D]; mlp: [D, F] / [F, D].
                k = w.shape[0] if w.shape[0] == config.hidden_size else w.size // w.shape[-1]
                kernels.append(w.reshape(k, -1))
    return kernels, jnp.asarray(lm_head(params, config).T)


def products_only_seconds(
    params, config, batch: int, layout: str = "in", steps: int = 64, reps: int = 3
) -> float:
    """Seconds per decode step that XLA takes for the step's weight products
    alone, on `batch` rows: a jitted loop of `steps` steps, each a dependent chain
    through every product (nothing else: no attention, norms or sampling).

    layout: "in" keeps the layer kernels [K, N] as the model holds them; "out"
    transposes them to [N, K] (the head is [V, D] either way). The faster of
    the two bounds an XLA sampler of this model on this machine from above.
    """
    kernels, head = step_products(params, config)
    width = max(w.shape[0] for w in kernels)  # the widest contraction (D or F)
    spec = {"in": "bk,kn->bn", "out": "bk,nk->bn"}[layout]
    if layout == "out":
        kernels = [jnp.asarray(w.T) for w in kernels]

    def run(ks, h, x):
        def one_step(_, s):
            # Each product's input depends on the previous product's output (via
            # the scalar s), so none is skipped or reordered; the add fuses into
            # the product's kernel.
            for w in ks:
                k = w.shape[0] if layout == "in" else w.shape[1]
                s = 1e-9 * jnp.max(jnp.einsum(spec, x[:, :k] + s, w))
            return 1e-9 * jnp.max(jnp.einsum("bd,vd->bv", x[:, : h.shape[1]] + s, h))

        return jax.lax.fori_loop(0, steps, one_step, jnp.zeros((), x.dtype))

    run = jax.jit(run)
    x = jnp.ones((batch, width), jnp.float32)
    run(kernels, head, x).block_until_ready()
    best = min(timed(lambda: run(kernels, head, x).block_until_ready())[0] for _ in range(reps))
    return best / steps


def torch_products_only_seconds(params, config, batch: int, steps: int = 16) -> float:
    """The same chain of products in PyTorch (`F.linear` on [N, K] weights, the
    layout of transformers' `nn.Linear`), for comparison."""
    kernels, head = step_products(params, config)
    weights = [torch.from_numpy(np.asarray(w).T.copy()) for w in kernels]
    weights.append(torch.from_numpy(np.array(head)))
    width = max(w.shape[1] for w in weights)

    def run():
        x, s = torch.ones(batch, width), torch.zeros(())
        for _ in range(steps):
            for w in weights:
                s = 1e-9 * torch.nn.functional.linear(x[:, : w.shape[1]] + s, w).amax()
        return s

    with torch.inference_mode():
        run()
        return min(timed(run)[0] for _ in range(3)) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="llama", choices=["llama", "gpt2"])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--widths", default="512", help="comma-separated model widths")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()

    bandwidth = memory_bandwidth()
    print(
        f"devices={jax.devices()} torch_threads={torch.get_num_threads()} "
        f"cpus={os.cpu_count()} family={args.family} layers={args.layers} "
        f"vocab={args.vocab} batch={args.batch} new={args.new} "
        f"memory_bandwidth={bandwidth / 1e9:.1f} GB/s"
    )
    results = {"memory_bandwidth_gb_s": round(bandwidth / 1e9, 2)}
    rng = np.random.default_rng(0)
    prompts = [
        rng.integers(3, args.vocab, rng.integers(16, 49)).tolist() for _ in range(args.batch)
    ]
    for width in (int(w) for w in args.widths.split(",")):
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(
            hf_config(args.family, args.layers, width, args.vocab)
        ).eval()
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d)
            ours = load_hf(d)
        weight_bytes = streamed_weight_bytes(ours[1])
        ceiling = args.batch / (weight_bytes / bandwidth)
        products_in = products_only_seconds(ours[1], ours[0], args.batch, "in")
        products_out = products_only_seconds(ours[1], ours[0], args.batch, "out")
        products_s = min(products_in, products_out)
        products_ceiling = args.batch / products_s
        torch_products_s = torch_products_only_seconds(ours[1], ours[0], args.batch)
        print(
            f"width={width}: {weight_bytes / 2**20:.0f} MiB of weights read per decode step; "
            f"weight-streaming ceiling {ceiling:.0f} tok/s; XLA's weight products alone take "
            f"{products_in * 1e3:.1f} ms a step with the model's kernel layout, "
            f"{products_out * 1e3:.1f} ms transposed (PyTorch's: {torch_products_s * 1e3:.1f} "
            f"ms): products-only ceiling {products_ceiling:.0f} tok/s"
        )
        for mode, greedy in (("greedy", True), ("sample", False)):
            hf_times, our_times, compile_s, hf_tokens, our_tokens = measure(
                hf, ours, prompts, args.new, greedy, args.reps
            )
            n = args.batch * args.new
            hf_tps, our_tps = n / min(hf_times), n / min(our_times)
            r = dict(
                hf_tokens_per_s=round(hf_tps, 1),
                ours_tokens_per_s=round(our_tps, 1),
                ratio=round(our_tps / hf_tps, 2),
                ceiling_tokens_per_s=round(ceiling, 1),
                ceiling_over_hf=round(ceiling / hf_tps, 2),
                products_ms_per_step=round(products_in * 1e3, 2),
                products_transposed_ms_per_step=round(products_out * 1e3, 2),
                torch_products_ms_per_step=round(torch_products_s * 1e3, 2),
                hf_ms_per_step=round(min(hf_times) / args.new * 1e3, 2),
                ours_ms_per_step=round(min(our_times) / args.new * 1e3, 2),
                products_ceiling_tokens_per_s=round(products_ceiling, 1),
                products_ceiling_over_hf=round(products_ceiling / hf_tps, 2),
                ours_compile_s=round(compile_s, 2),
                hf_times_s=[round(x, 3) for x in hf_times],
                ours_times_s=[round(x, 3) for x in our_times],
            )
            if greedy:  # same weights, float32: greedy outputs should (mostly) agree
                r["greedy_token_agreement"] = round(float((hf_tokens == our_tokens).mean()), 4)
            results[f"width{width}_{mode}"] = r
            print(
                f"width={width} {mode}: transformers {hf_tps:.0f} tok/s, ours {our_tps:.0f} "
                f"tok/s, ratio {our_tps / hf_tps:.2f}x; the ceilings are "
                f"{ceiling / hf_tps:.2f}x (weight streaming) and {products_ceiling / hf_tps:.2f}x "
                f"(products only) transformers (our compile {compile_s:.1f} s, excluded)"
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
