"""Train-step throughput of the baselines (GKD, DistiLLM, MiniLLM, SeqKD) against TRL's GKDTrainer.

  python benchmarks/bench_baselines.py [--reps 3] [--steps 20] [--warmup 3] [--replay-steps 40]
                                       [--replay-capacity 32] [--rollouts 64] [--wait-idle 60]

The shapes, data and TRL side are `bench_train.py`'s (imported from it): GPT-2
teacher (4 layers, d=256) and student (2 layers, d=128), random init,
float32, a ~1000-token byte-level BPE on the synthetic task, batch 8,
prompt + response <= 128 tokens, 32 new tokens at temperature 0.9, one
device. Every side runs the trainer's own per-step code, built in-process as
`classkd_jax.training.run` builds it (`bench_train.Ours`, each method's
`configs/<method>.py:size=tiny` with those overrides): the step's batch from
`BatchPlan.batch(step, state, frozen)`, then the jitted step, blocking on its
outputs. Compiles are excluded (every reachable program is compiled first).
The sides alternate rep by rep, each rep running every side once:

- TRL GKDTrainer and our GKD (lambda 0.5, beta 0.5, the reference): `--steps`
  steps each, as `bench_train.py` part 1; both rates are taken at exactly
  lambda = 0.5 from each side's mean on- and off-policy step.
- DistiLLM (skew forward KL, alpha 0.1), phi = 1 fixed (`adaptive=False`:
  the phi the adaptive rule climbs to), the reference 'decreasing' replay
  rule (`classkd_jax.training.distillm`), a run of horizon T =
  `--replay-steps` timed from step 0 with an empty buffer each rep (a new
  plan, its draws seeded by the rep), two settings reading the same batches:
  (a) sample every step: capacity 10^9, so the buffer is never full and,
      by the reference rule, every draw below phi = 1 samples;
  (b) the reference schedule: capacity `--replay-capacity` rows, so after
      capacity / batch sampled steps the step samples with probability
      1 - t/T and replays a buffer batch otherwise.
  (b)'s wall time over (a)'s for the same T steps is the replay saving.
- MiniLLM (teacher mix 0.2, `ppo_epochs` 4): each rep times one whole phase,
  the rollout collection (`--rollouts` teacher-mixed samples in sampler
  calls of the batch size, each scored by the jitted scorer, stored on the
  host) and its ppo_epochs * rollouts / batch optimizer steps; the share of
  collection in a phase does not depend on `--rollouts` (both parts scale
  with it), only on ppo_epochs.
- SeqKD: the teacher's generation of responses to every training prompt
  (`run.seqkd_data`, the trainer's path, `--seqkd-batch` prompts a
  sampler call; its sampler compiled first) timed once and reported apart;
  then `--steps` SFT steps a rep on those responses (no teacher in the step).
  An amortised rate over one epoch (generation + one epoch of steps) is
  printed as well.

Tokens are the non-padding tokens the student trains on (the step's
`train_tokens` metric: prompt + response of every row, dataset rows,
samples, replayed samples or rollouts alike); a method's rate is its tokens
over the wall time of its timed steps. The sampling share is the time spent
sampling (and, for MiniLLM, scoring rollouts: `BatchPlan`'s `sampling_s`)
over that wall time. Ratios: tokens/s over our GKD's and over TRL's (both at
lambda 0.5), pooled over the reps and per rep. The machine's load from other
processes is recorded per side and rep ("other cores", /proc/stat).
Prints tables and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train as bt  # noqa: E402 (sets the environment before jax loads)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from classkd_jax import sharding  # noqa: E402
from classkd_jax.data import synthetic, to_global  # noqa: E402
from classkd_jax.sampling import complete_token_ids  # noqa: E402
from classkd_jax.sampling.sampler import bucket_length, default_buckets  # noqa: E402
from classkd_jax.training import run as run_lib  # noqa: E402
from classkd_jax.training.minillm import RolloutStore  # noqa: E402
from classkd_jax.training.rollout import BatchPlan, step_key  # noqa: E402

GKD, TRL = "ours (GKD)", "TRL GKDTrainer"
DL_A, DL_B = "DistiLLM (a) sample every step", "DistiLLM (b) reference replay"
MINI, SEQ = "MiniLLM (whole phases)", "SeqKD (SFT steps)"


# ----- running steps ------------------------------------------------------------------------


def run_steps(ours: bt.Ours, plan: BatchPlan, start: int, steps: int) -> list[dict]:
    """Steps `start .. start + steps - 1` of the trainer's per-step code with `plan`;
    per step: seconds, batch_s (the plan's part), sampling_s, tokens and the batch kind."""
    out = []
    kinds = getattr(plan, "kinds", None)
    for t in range(start, start + steps):
        before = dict(kinds) if kinds is not None else None
        begin = time.perf_counter()
        batch, host = plan.batch(t, ours.state, ours.frozen)
        batch_s = time.perf_counter() - begin
        ours.state, metrics = ours.step_fn(
            ours.state, ours.frozen, batch, step_key(ours.root, t, "step")
        )
        metrics = jax.device_get(jax.block_until_ready(metrics))
        jax.block_until_ready(ours.state)
        seconds = time.perf_counter() - begin
        if before is not None:
            kind = next(k for k in kinds if kinds[k] != before.get(k, 0))
        else:
            kind = "collect" if host["sampling_s"] else "step"
        out.append(
            dict(
                on=kind in ("sample", "collect"),
                seconds=seconds,
                batch_s=batch_s,
                sampling_s=float(host["sampling_s"]),
                tokens=float(metrics["train_tokens"]),
                flops=float(metrics["flops"]) + float(host["flops"]),
                kind=kind,
            )
        )
    return out


# ----- set-up per method --------------------------------------------------------------------


def setup_distillm(args, tok_dir, data_path) -> bt.Ours:
    changes = {"distillm.init_phi": 1.0, "distillm.adaptive": False}
    ours = bt.Ours(bt.our_config("distillm", args, tok_dir, data_path, **changes))
    ours.precompile()
    return ours


def distillm_plan(ours: bt.Ours, args, capacity: int, rep: int) -> BatchPlan:
    """A fresh plan (empty buffer) for a run of horizon `--replay-steps`."""
    changes = {"steps": args.replay_steps, "distillm.capacity": capacity, "seed": 1000 + rep}
    return ours.plan_with(**changes)


def setup_minillm(args, tok_dir, data_path) -> bt.Ours:
    changes = {"minillm.num_rollouts": args.rollouts, "minillm.ppo_epochs": args.ppo_epochs}
    ours = bt.Ours(bt.our_config("minillm", args, tok_dir, data_path, **changes))
    assert ours.plan.phases.epochs == args.ppo_epochs  # size=tiny's own is 2
    plan, params, teacher = ours.plan, ours.state.student.params, ours.frozen["teacher"]
    mixed = float(ours.config.minillm.teacher_mix) > 0
    store = RolloutStore(plan.store.width)
    store.begin(0)
    for tokens, mask in ours.padded_prompts():  # the sampler and scorer per prompt bucket
        kw = {"teacher_params": teacher} if mixed else {}
        out = plan.student_sampler(
            params, tokens, mask, jax.random.key(0), plan.mixed_sampling, **kw
        )
        samples = {k: getattr(out, k) for k in ("prompt_tokens", "prompt_mask", "tokens", "mask")}
        store.add(sharding.fetch(plan.scorer(params, teacher, samples)))
    store.finish()
    rows = store.minibatch(np.arange(int(ours.config.data.batch_size)))
    batch = {"on": to_global(rows, ours.builder.rows)}  # the step has one shape: the store's
    ours.state, metrics = ours.step_fn(ours.state, ours.frozen, batch, jax.random.key(0))
    jax.block_until_ready(metrics)
    return ours


def setup_seqkd(args, tok_dir, data_path, work: Path) -> tuple[bt.Ours, dict]:
    """SeqKD as `run.train` runs it: the teacher's responses generated (timed, its
    sampler compiled first), the teacher dropped, then the SFT programs compiled."""
    ours = bt.Ours(
        bt.our_config("seqkd", args, tok_dir, data_path, **{"seqkd.batch_size": args.seqkd_batch})
    )
    c = ours.config
    teacher = (ours.sources["teacher"].config, ours.frozen["teacher"])
    compile_s = warm_seqkd_sampler(ours, teacher)
    start = time.perf_counter()
    ours.data = run_lib.seqkd_data(
        c, work, ours.data, ours.sources, ours.frozen["teacher"], ours.tokenizer, ours.mesh
    )
    gen_s = time.perf_counter() - start
    ours.frozen, ours.frozen_sh = {}, {}  # as run.train: the teacher's job ends here
    ours.step_fn = ours.builder.jit(ours.state_sh, {})
    ours.plan = ours.make_plan(c)
    ours.precompile()
    train = ours.data.train
    generated = sum(len(r) for r in train.responses)
    gen = {
        "seconds": gen_s,
        "sampler_compile_s": compile_s,
        "prompts": len(train),
        "prompts_per_s": len(train) / gen_s,
        "response_tokens": generated,
        "response_tokens_per_s": generated / gen_s,
        "batch_size": int(c.seqkd.batch_size),
        "steps_per_epoch": ours.data.off.batches_in_epoch(0),
    }
    return ours, gen


def warm_seqkd_sampler(ours: bt.Ours, teacher) -> float:
    """Compiles the teacher sampler `complete_token_ids` reuses, for every prompt bucket
    SeqKD's generation reaches (one call on one batch of each); returns seconds."""
    start = time.perf_counter()
    c, tok = ours.config, ours.tokenizer
    s, k = c.sampling, c.seqkd
    new = int(s.max_new_tokens)
    buckets = default_buckets(teacher[0].max_position_embeddings - new)
    prompts, size = ours.data.train.prompts, int(k.batch_size)
    seen = {}
    for i in range(0, len(prompts), size):
        chunk = prompts[i : i + size]
        seen.setdefault(bucket_length(max(len(p) for p in chunk), buckets), chunk)
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    for chunk in seen.values():
        complete_token_ids(
            teacher,
            chunk,
            max_new_tokens=new,
            greedy=bool(k.greedy),
            temperature=float(s.temperature),
            top_k=int(s.top_k),
            top_p=float(s.top_p),
            batch_size=size,
            pad_id=int(pad),
            eos_ids=(int(eos),),
            mesh=ours.mesh,
        )
    return time.perf_counter() - start


# ----- the reps -----------------------------------------------------------------------------


def measure(args, sides: dict, meter: bt.CpuMeter) -> tuple[dict, dict]:
    """Every side once a rep, alternating; returns ({side: [records per rep]}, loads)."""
    recs = {k: [] for k in sides}
    loads = {k: [] for k in sides}
    for rep in range(args.reps):
        if args.wait_idle:
            bt.wait_idle(meter, args.wait_idle)
        for name, run in sides.items():
            s = meter.start()
            recs[name].append(run(rep))
            loads[name].append(meter.other_cores(s))
        line = ", ".join(
            f"{n} {bt.summarize(r[-1])['tokens_per_s']:.0f} tok/s" for n, r in recs.items()
        )
        print(f"rep {rep}: {line}", flush=True)
    return recs, loads


def make_sides(args, gkd, trl, dl, mini, seq) -> dict:
    sides = {}
    if trl is not None:
        sides[TRL] = lambda rep: trl.run(args.steps)
    sides[GKD] = lambda rep: gkd.run(args.steps)
    position = {}

    def distillm(capacity, restore):
        def run(rep):
            if restore:  # (b) reads the batches (a) read this rep
                dl.data.restore(position["a"])
            else:
                position["a"] = dl.data.state()
            return run_steps(dl, distillm_plan(dl, args, capacity, rep), 0, args.replay_steps)

        return run

    sides[DL_A] = distillm(10**9, restore=False)
    sides[DL_B] = distillm(args.replay_capacity, restore=True)

    def minillm(rep):
        per = mini.plan.phases.steps_per_phase
        return run_steps(mini, mini.plan, rep * per, per)

    sides[MINI] = minillm

    def seqkd(rep):
        return run_steps(seq, seq.plan, rep * args.steps, args.steps)

    sides[SEQ] = seqkd
    return sides


# ----- summaries ----------------------------------------------------------------------------


def rate(records: list[dict], name: str, lmbda: float) -> dict:
    """summarize() plus the rate and sampling share this benchmark compares (GKD sides:
    at exactly lambda)."""
    s = bt.summarize(records, lmbda if name in (GKD, TRL) else None)
    s["rate"] = s.get("lambda_tokens_per_s", s["tokens_per_s"])
    s["share"] = s.get("lambda_sampling_share", s["sampling_share"])
    s["tokens_per_step"] = statistics.fmean(r["tokens"] for r in records)
    return s


def summaries(args, recs: dict, loads: dict) -> dict:
    out = {}
    for name, per_rep in recs.items():
        pooled = rate([x for r in per_rep for x in r], name, args.lmbda)
        pooled["per_rep"] = [rate(r, name, args.lmbda)["rate"] for r in per_rep]
        pooled["other_cores"] = loads[name]
        out[name] = pooled
    for ref, key in ((GKD, "vs_gkd"), (TRL, "vs_trl")):
        if ref not in out:
            continue
        for s in out.values():
            s[key] = s["rate"] / out[ref]["rate"]
            s[key + "_per_rep"] = [
                a / b for a, b in zip(s["per_rep"], out[ref]["per_rep"], strict=True)
            ]
    return out


def seqkd_amortised(seq: dict, gen: dict, epochs: float = 1.0) -> dict:
    """SeqKD over `epochs` epochs of the 4000 prompts, its one-off generation included."""
    steps = epochs * gen["steps_per_epoch"]
    train_s = steps * seq["ms_per_step"] / 1e3
    return {
        "epochs": epochs,
        "seconds": gen["seconds"] + train_s,
        "tokens_per_s": steps * seq["tokens_per_step"] / (gen["seconds"] + train_s),
        "generation_share": gen["seconds"] / (gen["seconds"] + train_s),
    }


def ratio_text(s: dict, key: str) -> str:
    if key not in s:
        return "-"
    per = s[key + "_per_rep"]
    return f"**{s[key]:.2f}x** ({min(per):.2f}-{max(per):.2f})"


def main_table(args, sums: dict, gen: dict, amort: dict) -> str:
    what = {
        TRL: f"lambda {args.lmbda}: {args.steps} steps a rep",
        GKD: f"lambda {args.lmbda}: {args.steps} steps a rep",
        DL_A: f"phi 1, capacity 1e9: runs of T={args.replay_steps} steps",
        DL_B: f"phi 1, capacity {args.replay_capacity}: runs of T={args.replay_steps} steps",
        MINI: f"{args.rollouts} rollouts, {args.ppo_epochs} PPO epochs: one phase a rep",
        SEQ: f"{args.steps} steps a rep, generation excluded",
    }
    rows = []
    for name, s in sums.items():
        rows.append(
            [
                name,
                what[name],
                str(s["steps"]),
                bt.fmt(s["ms_per_step"], ".1f"),
                bt.fmt(s["tokens_per_step"]),
                bt.fmt(s["rate"]),
                f"{100 * s['share']:.0f}%",
                ratio_text(s, "vs_gkd"),
                ratio_text(s, "vs_trl"),
                ", ".join(bt.fmt(x, ".2f") for x in s["other_cores"]),
            ]
        )
    if SEQ in sums:
        s = sums[SEQ]
        vs = lambda ref: (
            "-" if ref not in sums else f"**{amort['tokens_per_s'] / sums[ref]['rate']:.2f}x**"
        )
        rows.append(
            [
                "SeqKD, amortised",
                f"generation + 1 epoch ({gen['steps_per_epoch']} steps)",
                "-",
                "-",
                bt.fmt(s["tokens_per_step"]),
                bt.fmt(amort["tokens_per_s"]),
                f"{100 * amort['generation_share']:.0f}% (generation)",
                vs(GKD),
                vs(TRL),
                "-",
            ]
        )
    header = [
        "method",
        "timed",
        "steps",
        "ms/step",
        "tok/step",
        "tok/s",
        "sampling share",
        "tok/s / our GKD (per rep)",
        "tok/s / TRL GKDTrainer (per rep)",
        "other cores per rep",
    ]
    return bt.table(header, rows)


def replay_part(args, recs: dict) -> dict:
    """DistiLLM (b) against (a): wall time of the same T steps, the sampled share."""
    a = [x for r in recs[DL_A] for x in r]
    b = [x for r in recs[DL_B] for x in r]
    t_a = sum(x["seconds"] for x in a)
    t_b = sum(x["seconds"] for x in b)
    kind_ms = lambda rs, k: (
        1e3 * statistics.fmean(x["seconds"] for x in rs if x["kind"] == k)
        if any(x["kind"] == k for x in rs)
        else None
    )
    sampled = sum(x["kind"] == "sample" for x in b) / len(b)
    share_a = sum(x["sampling_s"] for x in a) / t_a
    per_rep = [
        sum(x["seconds"] for x in rb) / sum(x["seconds"] for x in ra)
        for ra, rb in zip(recs[DL_A], recs[DL_B], strict=True)
    ]
    # The best any replay rule could do here: each replayed step saves its sampling time only.
    floor = 1 - (1 - sampled) * share_a
    return {
        "T": args.replay_steps,
        "capacity": args.replay_capacity,
        "time_ratio_b_over_a": t_b / t_a,
        "time_ratio_per_rep": per_rep,
        "speedup_a_over_b": t_a / t_b,
        "sampled_share_b": sampled,
        "expected_sampled_share_b": expected_sampled(args),
        "sampling_share_a": sampling_share(a),
        "sample_step_ms_a": kind_ms(a, "sample"),
        "sample_step_ms_b": kind_ms(b, "sample"),
        "replay_step_ms_b": kind_ms(b, "replay"),
        "ideal_time_ratio": floor,
    }


def sampling_share(records) -> float:
    return sum(x["sampling_s"] for x in records) / sum(x["seconds"] for x in records)


def expected_sampled(args) -> float:
    """E[share of sampled steps] under the reference rule at phi = 1 (a run of T steps)."""
    t_total, fill = args.replay_steps, -(-args.replay_capacity // args.batch)
    probs = [1.0 if t < fill else 1 - (t + 1) / t_total for t in range(t_total)]
    return statistics.fmean(probs)


def print_replay(r: dict) -> None:
    print(
        f"\nDistiLLM replay (phi 1, T = {r['T']} steps from an empty buffer, the same batches): "
        f"(b) capacity {r['capacity']} / (a) never replay, wall time "
        f"**{r['time_ratio_b_over_a']:.2f}x** (per rep "
        f"{', '.join(f'{x:.2f}' for x in r['time_ratio_per_rep'])}; speedup "
        f"{r['speedup_a_over_b']:.2f}x); (b) sampled on {100 * r['sampled_share_b']:.0f}% of "
        f"its steps (expected {100 * r['expected_sampled_share_b']:.0f}%: every step until "
        f"the buffer is full, then 1 - t/T), (a) on 100%; sampling is "
        f"{100 * r['sampling_share_a']:.0f}% of (a)'s time; a sampled step "
        f"{bt.fmt(r['sample_step_ms_a'], '.1f')} ms in (a), {bt.fmt(r['sample_step_ms_b'], '.1f')}"
        f" ms in (b), a replay step {bt.fmt(r['replay_step_ms_b'], '.1f')} ms; if a replayed "
        f"step saved exactly its sampling time: {r['ideal_time_ratio']:.2f}x",
        flush=True,
    )


def minillm_parts(recs: list[list[dict]]) -> dict:
    """A phase's collection (the first step's batch time) and its PPO steps."""
    collect = [r[0]["batch_s"] for r in recs]
    sampling = [r[0]["sampling_s"] for r in recs]
    phase = [sum(x["seconds"] for x in r) for r in recs]
    steps = [x["seconds"] for r in recs for x in r[1:]]
    return {
        "phase_s": statistics.fmean(phase),
        "collection_s": statistics.fmean(collect),
        "collection_sampling_scoring_s": statistics.fmean(sampling),
        "collection_share": sum(collect) / sum(phase),
        "ppo_step_ms": 1e3 * statistics.fmean(steps),
        "steps_per_phase": len(recs[0]),
    }


# ----- main ---------------------------------------------------------------------------------


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=3, help="alternations of the sides")
    p.add_argument("--steps", type=int, default=20, help="timed steps a rep (GKD, TRL, SeqKD)")
    p.add_argument("--warmup", type=int, default=3, help="TRL steps a rep before timing")
    p.add_argument("--replay-steps", type=int, default=40, help="DistiLLM's horizon T")
    p.add_argument("--replay-capacity", type=int, default=32, help="DistiLLM (b)'s buffer rows")
    p.add_argument("--rollouts", type=int, default=64, help="MiniLLM rollouts a phase")
    p.add_argument("--ppo-epochs", type=int, default=4, help="MiniLLM epochs a phase")
    p.add_argument(
        "--seqkd-batch",
        type=int,
        default=64,
        help="SeqKD prompts a sampler call (size=tiny's value; the base config's is 16)",
    )
    bt.add_shape_args(p)
    p.add_argument("--skip-trl", action="store_true")
    return p.parse_args()


def main():
    args = parse_args()
    meter = bt.CpuMeter()
    device = jax.devices()[0]
    print(
        f"jax {jax.__version__} on {device.platform} ({device.device_kind}), {os.cpu_count()} "
        f"cpus; batch {args.batch}, <= {args.max_length} tokens, {args.new} new at T=0.9; "
        f"teacher {args.teacher_layers}L d={args.teacher_width}, student {args.student_layers}L "
        f"d={args.student_width}",
        flush=True,
    )
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_baselines_"))
    examples = bt.make_examples(args.examples)
    tok_dir = bt.build_tokenizer(examples, args.vocab, work / "tokenizer")
    data_path = synthetic.write_dolly_jsonl(work / "train.jsonl", examples)

    gkd = bt.Ours(bt.our_config("gkd", args, tok_dir, data_path))
    gkd.precompile()
    dl = setup_distillm(args, tok_dir, data_path)
    mini = setup_minillm(args, tok_dir, data_path)
    seq, gen = setup_seqkd(args, tok_dir, data_path, work / "seqkd")
    trl = None
    if not args.skip_trl:
        trl = bt.TRLSide(args, tok_dir, examples, gkd.tokenizer)
        if trl.mismatches:
            print(f"WARNING: {trl.mismatches}/64 examples tokenise differently in TRL")
    print(
        f"set-up (compiles, SeqKD's generation) {time.perf_counter() - start:.1f} s; SeqKD "
        f"generation: {gen['prompts']} prompts in {gen['seconds']:.1f} s "
        f"({gen['prompts_per_s']:.0f} prompts/s, {gen['response_tokens_per_s']:.0f} response "
        f"tokens/s, {gen['batch_size']} prompts a call; its sampler's compile "
        f"{gen['sampler_compile_s']:.1f} s excluded)",
        flush=True,
    )

    recs, loads = measure(args, make_sides(args, gkd, trl, dl, mini, seq), meter)
    sums = summaries(args, recs, loads)
    amort = seqkd_amortised(sums[SEQ], gen)
    gen["equivalent_steps"] = gen["seconds"] / (sums[SEQ]["ms_per_step"] / 1e3)
    print()
    print(main_table(args, sums, gen, amort))
    mp = minillm_parts(recs[MINI])
    print(
        f"\nMiniLLM phase ({mp['steps_per_phase']} steps): {mp['phase_s']:.2f} s, of which the "
        f"rollout collection {mp['collection_s']:.2f} s ({100 * mp['collection_share']:.0f}%; "
        f"its teacher-mixed sampling and scoring {mp['collection_sampling_scoring_s']:.2f} s); "
        f"a PPO step {mp['ppo_step_ms']:.1f} ms",
        flush=True,
    )
    print(
        f"SeqKD: the one-off generation ({gen['seconds']:.1f} s) is the time of "
        f"{gen['equivalent_steps']:.0f} SFT steps ({100 * amort['generation_share']:.0f}% of "
        f"one epoch of {gen['steps_per_epoch']} steps with it)",
        flush=True,
    )
    replay = replay_part(args, recs)
    print_replay(replay)
    results = {
        "args": vars(args),
        "device": device.device_kind,
        "sides": sums,
        "seqkd_generation": gen,
        "seqkd_amortised_1_epoch": amort,
        "minillm_phase": mp,
        "distillm_replay": replay,
        "wall_s": time.perf_counter() - start,
    }
    print(json.dumps(results, default=float))


if __name__ == "__main__":
    sys.exit(main())
