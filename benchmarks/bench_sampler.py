"""Tokens per second: our jitted sampler vs transformers' `generate` (PyTorch), same run.

  python benchmarks/bench_sampler.py [--family llama|gpt2] [--batch 16] [--new 128]

Builds a random model (default 6 layers, width 512, vocab 32k) with transformers,
saves it to a temp dir, loads the same weights with `classkd_jax.models.load_hf`,
and times both on the same left-padded prompts (lengths 16..48, bucket 64), with
no EOS so both produce exactly `--new` tokens per row. Our compile time is
excluded from the rate and reported separately. Prints one line per measurement
and a final JSON line. Both use every CPU core by default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from classkd_jax.models import load_hf
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


def time_hf(model, prompts, pad_id, new_tokens, do_sample, reps):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kw = dict(
        attention_mask=mask,
        do_sample=do_sample,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=pad_id,
        eos_token_id=None,
    )
    if do_sample:
        kw.update(temperature=1.0, top_k=0, top_p=1.0)
    times, out = [], None
    with torch.inference_mode():
        model.generate(ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        for _ in range(reps):
            t = time.perf_counter()
            out = model.generate(ids, **kw)
            times.append(time.perf_counter() - t)
    assert out.shape[1] == width + new_tokens
    return times, out[:, width:].numpy()


def time_ours(model, prompts, pad_id, new_tokens, greedy, reps):
    config, params = model
    tokens, mask, _ = left_pad(prompts, 64, pad_id)
    sampler = Sampler(config)
    cfg = SamplingConfig(max_new_tokens=new_tokens, greedy=greedy, pad_id=pad_id)
    t = time.perf_counter()
    out = jax.block_until_ready(sampler(params, tokens, mask, jax.random.key(0), cfg))
    first = time.perf_counter() - t
    times = []
    for i in range(reps):
        t = time.perf_counter()
        out = jax.block_until_ready(sampler(params, tokens, mask, jax.random.key(i + 1), cfg))
        times.append(time.perf_counter() - t)
    assert int(out.num_steps) == new_tokens and np.asarray(out.mask).all()
    return first - statistics.median(times), times, np.asarray(out.tokens)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="llama", choices=["llama", "gpt2"])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(
        hf_config(args.family, args.layers, args.width, args.vocab)
    ).eval()
    rng = np.random.default_rng(0)
    prompts = [
        rng.integers(3, args.vocab, rng.integers(16, 49)).tolist() for _ in range(args.batch)
    ]
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_hf(d)
    print(
        f"devices={jax.devices()} torch_threads={torch.get_num_threads()} "
        f"cpus={os.cpu_count()} family={args.family} layers={args.layers} "
        f"width={args.width} vocab={args.vocab} batch={args.batch} new={args.new}"
    )
    results = {}
    for mode, greedy in (("greedy", True), ("sample", False)):
        hf_times, hf_tokens = time_hf(hf, prompts, 0, args.new, not greedy, args.reps)
        compile_s, our_times, our_tokens = time_ours(ours, prompts, 0, args.new, greedy, args.reps)
        n = args.batch * args.new
        hf_tps, our_tps = n / min(hf_times), n / min(our_times)
        r = dict(
            hf_tokens_per_s=round(hf_tps, 1),
            ours_tokens_per_s=round(our_tps, 1),
            ratio=round(our_tps / hf_tps, 2),
            ours_compile_s=round(compile_s, 2),
            hf_times_s=[round(x, 3) for x in hf_times],
            ours_times_s=[round(x, 3) for x in our_times],
        )
        if greedy:  # same weights, float32: greedy outputs should (mostly) agree
            r["greedy_token_agreement"] = round(float((hf_tokens == our_tokens).mean()), 4)
        results[mode] = r
        print(
            f"{mode}: transformers {hf_tps:.0f} tok/s, ours {our_tps:.0f} tok/s, "
            f"ratio {our_tps / hf_tps:.2f}x (our compile {compile_s:.1f} s, excluded)"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
