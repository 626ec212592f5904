"""Train-step throughput: our GKD vs TRL's GKDTrainer, and the ClassKD step's cost, same run.

  python benchmarks/bench_train.py [--reps 3] [--steps 20] [--warmup 3] [--cost-steps 10]
                                   [--vocab 1000] [--batch 8] [--new 32] [--torch-threads 2]

Shapes (the issue's): GPT-2 teacher (4 layers, d=256) and student (2 layers,
d=128), random init, float32; a ~1000-token byte-level BPE trained here on the
built-in synthetic task (`classkd_jax.data.make_synthetic_task`), whose
examples are written to a JSONL that our trainer reads (`data.source=jsonl`)
and TRL reads as chat `messages` (the same token ids: checked); batch 8,
prompt + response <= 128 tokens, GKD lambda 0.5, beta 0.5, 32 new tokens at
temperature 0.9.

Part 1, ours vs TRL (the two sides alternate rep by rep, `--steps` timed
optimizer steps each after `--warmup` steps; our compiles are excluded):
- TRL: `trl.experimental.gkd.GKDTrainer` with transformers GPT2LMHeadModel
  student and teacher, float32 (`bf16=False`: TRL's SFTConfig defaults to
  bf16 autocast, ~30x slower on this CPU), in its fastest correct
  configuration for these shapes (`--trl-config fastest`, the default):
  `gradient_checkpointing=False` (GKDConfig defaults it to True, which both
  recomputes every block in the backward and makes GKDTrainer generate with
  `use_cache=False`, re-running the whole prefix for every new token), sdpa
  attention, `optim='adamw_torch_fused'`; `--trl-config default` keeps
  GKDConfig's defaults (but float32) for the labelled second row. Both sides'
  students drop out at `--dropout` (GPT-2's 0.1: TRL trains in
  `model.train()`). `trainer.train()` per rep; a step
  is the time between two `on_step_end` callbacks (data loading, collation, generation, forwards,
  backward, optimizer: all of it); `generate_on_policy_outputs` is timed by a
  wrapper (the sampling share) and `compute_loss` counts the batch's
  attention-mask tokens.
- ours: the trainer's own per-step code, built in-process as
  `classkd_jax.training.run.train` builds it (`configs/gkd.py:size=tiny` with
  the overrides above): `BatchPlan.batch(step, state, frozen)` (dataset rows
  or the jitted sampler's samples), then the jitted step, blocking on its
  outputs; `train_tokens` (non-padding tokens the student trains on) from its
  metrics, the sampling time from the plan.
Both draw on-policy steps at random with probability lambda (TRL:
`random.random()`, ours: from the seed and step), so over 20 steps the two see
different numbers of on-policy steps. Besides the raw rates the table gives
the rate at exactly lambda = 0.5 from each side's mean on- and off-policy
step: (l * tokens_on + (1 - l) * tokens_off) / (l * t_on + (1 - l) * t_off),
the headline ratio.

Part 2, our on-policy steps (lambda = 1: every step samples), alternating:
GKD (the trainer's code: sampler program, sync, step program); GKD with no sync
between the two programs; GKD *fused* (one `jax.jit` whose body runs
`classkd_jax.sampling.sample_loop` and then `StepBuilder.student_step` on its
samples); ClassKD (classmate = the student's shape, lambda 1, the gap control
off so the classmate updates every step); ClassKD with the classmate's update
skipped (gap control closed: it still runs its forwards); ClassKD with no
classmate at all (misfeedback weight 0, no classmate in the state). Within a
rep every variant reads the same dataset and prompt batches (the data streams
restart from one position). The classmate's share is 1 - t(no classmate) /
t(ClassKD).

Machine load: each side's time also records the CPU time other processes used
meanwhile (from /proc/stat, minus this process's own), printed as "other
cores"; PyTorch with 2 threads slows down far more than XLA when another
process holds a core, so a rep with other load is not a fair comparison
(`--wait-idle` waits for a quiet machine before each rep). MFU is printed
where `classkd_jax.training.flops.peak_tflops` knows the device (n/a on CPU).
Runs unchanged on a GPU/TPU (our side on `jax.devices()[0]`; TRL on CUDA when
torch has it, else CPU). Prints tables and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from classkd_jax import sharding  # noqa: E402
from classkd_jax.config_utils import import_sibling, with_changes  # noqa: E402
from classkd_jax.data import synthetic, templates, to_global  # noqa: E402
from classkd_jax.data.batching import pick_bucket  # noqa: E402
from classkd_jax.models import init_cache  # noqa: E402
from classkd_jax.sampling import sample_loop  # noqa: E402
from classkd_jax.training import checks, roles  # noqa: E402
from classkd_jax.training import data as data_lib  # noqa: E402
from classkd_jax.training import flops as flops_lib  # noqa: E402
from classkd_jax.training.rollout import BatchPlan, step_key  # noqa: E402
from classkd_jax.training.run import build_models, initial_state  # noqa: E402
from classkd_jax.training.state import params_shardings, run_state_shardings  # noqa: E402
from classkd_jax.training.step import (  # noqa: E402
    SAMPLE_KEYS,
    Models,
    StepBuilder,
    head,
    hidden_states,
    scored_batch,
)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = synthetic.DEFAULT_TEMPLATE
SPECIALS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)


# ----- machine load -------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds that other processes used while a block ran (Linux /proc/stat)."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _busy(self) -> float | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / self.hz

    def start(self):
        t = os.times()
        return (self._busy(), t.user + t.system, time.perf_counter())

    def other_cores(self, start) -> float | None:
        """Average number of cores other processes kept busy since `start`."""
        busy0, own0, wall0 = start
        busy1, t = self._busy(), os.times()
        wall = time.perf_counter() - wall0
        if busy0 is None or busy1 is None or wall <= 0:
            return None
        return max((busy1 - busy0) - (t.user + t.system - own0), 0.0) / wall


def wait_idle(meter: CpuMeter, limit_s: float, threshold: float = 0.3) -> float | None:
    """Waits (up to `limit_s`) until other processes use < `threshold` cores over 1 s."""
    deadline = time.perf_counter() + limit_s
    while True:
        s = meter.start()
        time.sleep(1.0)
        load = meter.other_cores(s)
        if load is None or load < threshold or time.perf_counter() > deadline:
            return load


# ----- shared data --------------------------------------------------------------------------


def make_examples(num: int, seed: int = 0):
    return synthetic.make_synthetic_task(seed, num_train=num, num_dev=0, num_test=0)["train"]


def build_tokenizer(examples, vocab: int, out: Path) -> Path:
    """A byte-level BPE (digits split, as the shipped synthetic tokenizer) on the examples."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from classkd_jax.data.build_tokenizer import save_hf_tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = (prompt_text(e) + e.response for e in examples)
    tok.train_from_iterator(texts, trainer=trainer)
    return save_hf_tokenizer(tok, out)


def prompt_text(example) -> str:
    return templates.format_prompt(example.instruction, example.input, TEMPLATE)


def override(config, changes: dict):
    """A copy of `config` with dotted keys replaced (locked again)."""
    return with_changes(config, changes)


def gpt2_shape(width: int, layers: int) -> dict:
    heads = max(width // 64, 1)
    return dict(
        hidden_size=width,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=width // heads,
        intermediate_size=4 * width,
    )


def our_config(method: str, args, tokenizer_dir: Path, data_path: Path, **changes):
    base = import_sibling(str(ROOT / "configs" / "x.py"), method).get_config("size=tiny")
    values = {
        "steps": 100_000,  # the schedule's horizon only; nothing runs that long
        "eval_every": 0,
        "mesh.data": 1,
        "tokenizer": str(tokenizer_dir),
        "data.source": "jsonl",
        "data.path": str(data_path),
        "data.dev_path": "",
        "data.dev_num": 0,
        "data.template": TEMPLATE,
        "data.batch_size": args.batch,
        "data.max_length": args.max_length,
        "data.max_prompt_length": args.max_length - args.new,
        "data.length_buckets": tuple(args.length_buckets),
        "data.prompt_buckets": tuple(args.prompt_buckets),
        "data.pack": bool(args.pack),
        "sampling.max_new_tokens": args.new,
        "sampling.temperature": 0.9,
        "gkd.lmbda": args.lmbda,
        "gkd.beta": 0.5,
        "student.dropout": args.dropout,  # TRL's GPT-2 students drop at the same rates
        "classmate.dropout": args.dropout,
    }
    for role, (width, layers) in (
        ("teacher", (args.teacher_width, args.teacher_layers)),
        ("student", (args.student_width, args.student_layers)),
        ("classmate", (args.student_width, args.student_layers)),
    ):
        values[f"{role}.preset"] = "tiny-gpt2"
        for key, value in gpt2_shape(width, layers).items():
            values[f"{role}.shape.{key}"] = value
    values.update(changes)
    config = override(base, values)
    checks.validate(config)
    return config


# ----- our side -----------------------------------------------------------------------------


def _blocked(tree):
    return jax.block_until_ready(tree)


class Ours:
    """One config built as `classkd_jax.training.run.train` builds it (no loop, no files)."""

    def __init__(self, config, *, classmate: bool = True):
        self.config = config
        devices = jax.devices()[: int(config.mesh.data)]
        self.mesh = sharding.make_mesh(data=len(devices), devices=devices)
        self.tokenizer, where = roles.resolve_tokenizer(config)
        context, why = checks.context_length(config)
        self.sources = roles.plan_roles(config, self.tokenizer, where, context, why)
        uses = checks.uses_sampling(config)
        self.data = data_lib.build(
            config, self.tokenizer, sampling_batch=int(config.data.batch_size), needs_prompts=uses
        )
        models = build_models(config, self.sources, int(config.steps), len(self.tokenizer))
        if not classmate:
            models = Models(models.student, models.teacher, None, vocab_size=models.vocab_size)
        self.models = models
        self.frozen = {"teacher": roles.load_params(self.sources["teacher"], self.mesh, (0, 1))}
        self.state = initial_state(config, models, self.sources, self.mesh)
        self.builder = StepBuilder(config, models, self.mesh)
        opt = lambda r: None if r is None else (r.config, r.optimizer)
        self.state_sh = run_state_shardings(self.mesh, opt(models.student), opt(models.classmate))
        self.frozen_sh = {"teacher": params_shardings(models.teacher.config, self.mesh)}
        self.step_fn = self.builder.jit(self.state_sh, self.frozen_sh)
        self.root = jax.random.key(int(config.seed))
        self.plan = self.make_plan(config)
        self.t = 0  # the next 0-based step
        self.sampler = self.plan.student_sampler

    def make_plan(self, config) -> BatchPlan:
        """A `BatchPlan` as `run.make_run` builds it (MiniLLM's scorer included)."""
        scorer = None
        if config.method == "minillm":
            student_sh = params_shardings(self.models.student.config, self.mesh)
            scorer = self.builder.scorer(student_sh, self.frozen_sh["teacher"])
        return BatchPlan(
            config,
            self.data,
            self.models,
            self.mesh,
            self.builder.rows,
            self.tokenizer,
            self.root,
            total_steps=int(config.steps),
            scorer=scorer,
        )

    def plan_with(self, **changes) -> BatchPlan:
        """Another `BatchPlan` over the same data and models with host-side config changes."""
        plan = self.make_plan(override(self.config, changes))
        plan.student_sampler = self.sampler  # its compiled programs (a new Sampler compiles anew)
        return plan

    def reachable_buckets(self) -> tuple[list[int], list[int]]:
        """(length buckets, prompt buckets) a batch of this data can land in."""
        d = self.data.train
        c = self.config.data
        lengths = [len(p) + len(r) for p, r in zip(d.prompts, d.responses, strict=True)]
        full = {pick_bucket(n, c.length_buckets) for n in lengths}
        if c.pack:  # packed rows fill up to the largest bucket
            full = {b for b in c.length_buckets if b >= min(full)}
        prompt = {pick_bucket(len(p), c.prompt_buckets) for p in d.prompts}
        return sorted(full), sorted(prompt)

    def padded_prompts(self) -> list[tuple[jax.Array, jax.Array]]:
        """One real prompt batch (tokens, mask) padded to each reachable prompt bucket."""
        _, buckets = self.reachable_buckets()
        real = next(self.data.prompts)
        out = []
        for p in buckets:
            tok = real["tokens"][:, -p:]
            mask = real["mask"][:, -p:].astype(bool)
            pad = p - tok.shape[1]
            tok = np.pad(tok, ((0, 0), (pad, 0)))
            mask = np.pad(mask, ((0, 0), (pad, 0)))
            g = to_global({"tokens": tok, "mask": mask}, self.builder.rows)
            out.append((g["tokens"], g["mask"]))
        return out

    def precompile(self) -> float:
        """Compiles every program the timed steps can reach (each bucket the data
        allows: dataset batches and sampled batches); returns the seconds it took."""
        start = time.perf_counter()
        rows = self.builder.rows
        lengths, _ = self.reachable_buckets()
        real = next(self.data.off)
        method = self.config.method
        offs = []
        for t in lengths:
            b = {}
            for k in data_lib.SCORED_KEYS:
                x = real[k][:, :t]
                b[k] = np.pad(x, ((0, 0), (0, t - x.shape[1])))
            offs.append(to_global(b, rows))
        ons = []
        if method in ("gkd", "classkd", "distillm"):
            for tokens, mask in self.padded_prompts():
                out = self.sampler(
                    self.state.student.params, tokens, mask, jax.random.key(0), self.plan.sampling
                )
                ons.append({k: getattr(out, k) for k in SAMPLE_KEYS})
        batches = []
        if method in ("gkd", "distillm"):  # DistiLLM's replay batches: the samples' shapes
            batches = [{"off": b} for b in offs] + [{"off": s} for s in ons]
        elif method in ("sft", "kd", "seqkd"):
            batches = [{"off": b} for b in offs]
        elif method == "classkd":
            from classkd_jax.training import objectives

            control = objectives.control(self.config, 0)
            batches = [{"off": b, "on": s, "control": control} for b in offs for s in ons]
        for b in batches:
            self.state, metrics = self.step_fn(self.state, self.frozen, b, jax.random.key(0))
            _blocked(metrics)
        return time.perf_counter() - start

    def run(self, steps: int, plan: BatchPlan | None = None, mode: str = "trainer") -> list[dict]:
        """`steps` timed steps of the trainer's per-step code. mode: 'trainer' (BatchPlan:
        sampler, sync, step), 'nosync' (on-policy GKD: sampler then step, no sync)."""
        plan = plan or self.plan
        out = []
        for _ in range(steps):
            t = self.t
            start = time.perf_counter()
            if mode == "trainer":
                batch, host = plan.batch(t, self.state, self.frozen)
            else:
                tokens, mask = self.data.next_prompts(self.builder.rows)
                key = step_key(self.root, t, "sample_student")
                s = self.sampler(self.state.student.params, tokens, mask, key, plan.sampling)
                batch = {"off": {k: getattr(s, k) for k in SAMPLE_KEYS}}
                host = {"sampling_s": 0.0, "flops": 0.0}  # counted after the step: no sync
            self.state, metrics = self.step_fn(
                self.state, self.frozen, batch, step_key(self.root, t, "step")
            )
            metrics = jax.device_get(_blocked(metrics))
            _blocked(self.state)
            seconds = time.perf_counter() - start
            if mode != "trainer":
                host["flops"] = self._sampling_flops(tokens.shape, s)
            on = "on" in batch or "mask" in batch["off"]
            out.append(
                dict(
                    on=bool(on),
                    seconds=seconds,
                    sampling_s=float(host["sampling_s"]),
                    tokens=float(metrics["train_tokens"]),
                    flops=float(metrics["flops"]) + float(host["flops"]),
                )
            )
            self.t += 1
        return out

    def _sampling_flops(self, shape, samples):
        rows, prompt = shape
        return flops_lib.sampling_flops(
            self.models.student.config,
            rows,
            prompt,
            self.plan.sampling.max_new_tokens,
            int(samples.num_steps),
        )


class Fused:
    """GKD on-policy as ONE program: `sample_loop` then `StepBuilder.student_step`."""

    def __init__(self, ours: Ours):
        self.ours = ours
        b, models, mesh = ours.builder, ours.models, ours.mesh
        cfg = ours.plan.sampling
        student = models.student.config

        def cache_sharding(config, batch, slots):
            shapes = jax.eval_shape(lambda: init_cache(config, batch, slots))
            return sharding.cache_shardings(shapes, mesh)

        def fused(state, frozen, tokens, mask, key):
            s = sample_loop(
                student,
                state.student.params,
                tokens,
                mask,
                key,
                cfg,
                cache_sharding=cache_sharding,
            )
            batch = {"off": {k: getattr(s, k) for k in SAMPLE_KEYS}}
            new, metrics = b.student_step(state, frozen, batch, key)
            metrics["num_steps"] = s.num_steps
            return new, metrics

        self.program = jax.jit(
            fused,
            in_shardings=(ours.state_sh, ours.frozen_sh, b.rows, b.rows, b.replicated),
            out_shardings=(ours.state_sh, b.replicated),
            donate_argnums=(0,),
        )

    def _call(self, tokens, mask, key):
        o = self.ours
        with sharding.activation_sharding(o.mesh):
            o.state, metrics = self.program(o.state, o.frozen, tokens, mask, key)
        return metrics

    def precompile(self) -> float:
        start = time.perf_counter()
        o = self.ours
        _, prompts = o.reachable_buckets()
        real = next(o.data.prompts)
        for p in prompts:
            tok = np.pad(real["tokens"][:, -p:], ((0, 0), (max(p - real["tokens"].shape[1], 0), 0)))
            mask = np.pad(
                real["mask"][:, -p:].astype(bool), ((0, 0), (max(p - real["mask"].shape[1], 0), 0))
            )
            g = to_global({"tokens": tok, "mask": mask}, o.builder.rows)
            _blocked(self._call(g["tokens"], g["mask"], jax.random.key(0)))
        return time.perf_counter() - start

    def run(self, steps: int) -> list[dict]:
        o = self.ours
        out = []
        for _ in range(steps):
            start = time.perf_counter()
            tokens, mask = o.data.next_prompts(o.builder.rows)
            metrics = self._call(tokens, mask, step_key(o.root, o.t, "sample_student"))
            metrics = jax.device_get(_blocked(metrics))
            _blocked(o.state)
            seconds = time.perf_counter() - start
            rows, prompt = tokens.shape
            sampling = flops_lib.sampling_flops(
                o.models.student.config,
                rows,
                prompt,
                o.plan.sampling.max_new_tokens,
                int(metrics["num_steps"]),
            )
            out.append(
                dict(
                    on=True,
                    seconds=seconds,
                    sampling_s=0.0,
                    tokens=float(metrics["train_tokens"]),
                    flops=float(metrics["flops"]) + sampling,
                )
            )
            o.t += 1
        return out


# ----- TRL side -----------------------------------------------------------------------------


TRL_LABELS = {
    "fastest": "TRL GKDTrainer (fastest: no checkpointing, KV cache, sdpa, fused AdamW)",
    "default": "TRL GKDTrainer (GKDConfig defaults but float32: checkpointing, no KV cache)",
}


class TRLSide:
    """TRL's GKDTrainer on transformers GPT-2 models of the same shapes."""

    def __init__(self, args, tokenizer_dir: Path, examples, our_tokenizer):
        import torch
        from datasets import Dataset
        from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, TrainerCallback
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        torch.set_num_threads(args.torch_threads)
        torch.manual_seed(0)
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        tok.chat_template = CHAT_TEMPLATE
        self.tokenizer = tok
        rows = [
            {
                "messages": [
                    {"role": "user", "content": prompt_text(e)},
                    {"role": "assistant", "content": e.response},
                ]
            }
            for e in examples
        ]
        self.mismatches = check_same_tokens(tok, our_tokenizer, examples[:64])
        cuda = torch.cuda.is_available()
        self.device = "cuda" if cuda else "cpu"
        fastest = args.trl_config == "fastest"
        self.label = TRL_LABELS[args.trl_config]

        def gpt2(width, layers):
            heads = max(width // 64, 1)
            cfg = GPT2Config(
                vocab_size=len(tok),
                n_positions=args.max_length,
                n_embd=width,
                n_layer=layers,
                n_head=heads,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                embd_pdrop=args.dropout,
                attn_pdrop=args.dropout,
                resid_pdrop=args.dropout,
            )
            if fastest:  # PyTorch's fused attention kernel (GPT-2 supports it)
                cfg._attn_implementation = "sdpa"
            return GPT2LMHeadModel(cfg)

        student = gpt2(args.student_width, args.student_layers)
        teacher = gpt2(args.teacher_width, args.teacher_layers)
        self.out_dir = tempfile.mkdtemp(prefix="bench_train_trl_")
        self.warmup = args.warmup
        records = self.records = {"ends": [], "gen": {}, "tokens": {}, "step": 0}

        class Clock(TrainerCallback):
            def on_step_begin(self, targs, state, control, **kw):
                records["step"] = state.global_step + 1

            def on_step_end(self, targs, state, control, **kw):
                if cuda:
                    torch.cuda.synchronize()
                records["ends"].append(time.perf_counter())

        class TimedGKD(GKDTrainer):
            def generate_on_policy_outputs(self, model, inputs, generation_config):
                start = time.perf_counter()
                out = GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)
                if cuda:
                    torch.cuda.synchronize()
                step = records["step"]
                records["gen"][step] = records["gen"].get(step, 0.0) + time.perf_counter() - start
                return out

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                step = records["step"]
                n = float(inputs["attention_mask"].sum())
                records["tokens"][step] = records["tokens"].get(step, 0.0) + n
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        self.config_kwargs = dict(
            output_dir=self.out_dir,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            learning_rate=3e-3,
            weight_decay=0.01,
            max_grad_norm=1.0,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            use_cpu=not cuda,
            dataloader_num_workers=0,
            max_new_tokens=args.new,
            temperature=0.9,
            lmbda=args.lmbda,
            beta=0.5,
            max_length=args.max_length,
            seed=0,
            # float32 as our side: TRL's SFTConfig defaults bf16=True, which on a CPU
            # without bf16 matmuls runs every product ~30x slower under autocast.
            bf16=False,
            fp16=False,
        )
        if fastest:
            # A tuned user's choices for these shapes (memory is no concern): TRL's
            # GKDConfig defaults gradient_checkpointing=True, which recomputes each
            # block's forward in the backward AND makes the trainer generate with
            # use_cache=False (GKDTrainer's generation_kwargs), so every new token
            # re-runs the whole prefix; off, generation keeps its KV cache.
            # PyTorch's fused AdamW runs on CPU too.
            self.config_kwargs.update(gradient_checkpointing=False, optim="adamw_torch_fused")
        self.GKDConfig = GKDConfig
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.trainer = TimedGKD(
                model=student,
                teacher_model=teacher,
                args=GKDConfig(**self.config_kwargs, max_steps=args.warmup + args.steps),
                train_dataset=Dataset.from_list(rows),
                processing_class=tok,
                callbacks=[Clock()],
            )
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        for cb in (PrinterCallback, ProgressCallback):  # no end-of-train prints
            self.trainer.remove_callback(cb)
        assert not self.trainer.args.bf16 and not self.trainer.args.fp16
        assert self.trainer.args.gradient_checkpointing == (not fastest)
        self.calls = 0

    def run(self, steps: int) -> list[dict]:
        """One `trainer.train()` of warmup + steps; the last `steps` are returned."""
        r = self.records
        r["ends"].clear()
        r["gen"].clear()
        r["tokens"].clear()
        self.trainer.args.max_steps = self.warmup + steps
        self.trainer.args.seed = self.calls  # other data order and lambda draws each rep
        self.calls += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.trainer.train()
        ends = r["ends"]
        out = []
        for i in range(self.warmup + 1, self.warmup + steps + 1):  # 1-based global steps
            gen = r["gen"].get(i, 0.0)
            out.append(
                dict(
                    on=i in r["gen"],
                    seconds=ends[i - 1] - ends[i - 2],
                    sampling_s=gen,
                    tokens=r["tokens"].get(i, 0.0),
                    flops=0.0,
                )
            )
        return out


def check_same_tokens(hf_tok, our_tok, examples) -> int:
    """Examples whose TRL token ids (chat template) differ from our pipeline's."""
    from classkd_jax.data.tokenize import tokenize_examples

    ours = tokenize_examples(
        examples, our_tok, template=TEMPLATE, max_prompt_length=10_000, max_length=20_000
    )
    bad = 0
    for e, p, r in zip(examples, ours.prompts, ours.responses, strict=True):
        msgs = [
            {"role": "user", "content": prompt_text(e)},
            {"role": "assistant", "content": e.response},
        ]
        full = hf_tok.apply_chat_template(msgs, tokenize=False)
        ids = hf_tok(full, add_special_tokens=False)["input_ids"]
        bad += ids != list(p) + list(r)
    return bad


# ----- summaries ----------------------------------------------------------------------------


def summarize(records: list[dict], lmbda: float | None = None) -> dict:
    seconds = sum(r["seconds"] for r in records)
    out = {
        "steps": len(records),
        "on_steps": sum(r["on"] for r in records),
        "seconds": seconds,
        "steps_per_s": len(records) / seconds,
        "tokens_per_s": sum(r["tokens"] for r in records) / seconds,
        "sampling_share": sum(r["sampling_s"] for r in records) / seconds,
        "ms_per_step": 1e3 * seconds / len(records),
        "tflops_per_s": sum(r["flops"] for r in records) / seconds / 1e12,
    }
    on = [r for r in records if r["on"]]
    off = [r for r in records if not r["on"]]
    mean = lambda rs, k: statistics.fmean(r[k] for r in rs) if rs else None
    out.update(
        on_ms=None if not on else 1e3 * mean(on, "seconds"),
        off_ms=None if not off else 1e3 * mean(off, "seconds"),
        on_tokens=mean(on, "tokens"),
        off_tokens=mean(off, "tokens"),
        on_sampling_share=None if not on else mean(on, "sampling_s") / mean(on, "seconds"),
    )
    for kind in (on, off):  # a step 5x its kind's median: a compile or a load spike
        if len(kind) > 2:
            median = statistics.median(r["seconds"] for r in kind)
            out["outliers"] = out.get("outliers", 0) + sum(r["seconds"] > 5 * median for r in kind)
    if lmbda is not None and on and off:
        t = lmbda * mean(on, "seconds") + (1 - lmbda) * mean(off, "seconds")
        n = lmbda * mean(on, "tokens") + (1 - lmbda) * mean(off, "tokens")
        g = lmbda * mean(on, "sampling_s")
        out.update(lambda_tokens_per_s=n / t, lambda_steps_per_s=1 / t, lambda_sampling_share=g / t)
    return out


def fmt(x, spec=".0f", none="-"):
    return none if x is None else format(x, spec)


def mfu(tflops: float, peak: float | None, devices: int) -> str:
    return "n/a" if peak is None else f"{100 * tflops / (peak * devices):.2f}%"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ----- main ---------------------------------------------------------------------------------


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=3, help="alternations of the sides")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per rep (part 1)")
    p.add_argument("--warmup", type=int, default=3, help="TRL steps per rep before timing")
    p.add_argument("--cost-steps", type=int, default=10, help="timed steps per rep (part 2)")
    add_shape_args(p)
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--skip-cost", action="store_true")
    return p.parse_args()


def add_shape_args(p: argparse.ArgumentParser) -> None:
    """The shapes, data and machine options every train-step benchmark shares."""
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--examples", type=int, default=4000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--lmbda", type=float, default=0.5)
    p.add_argument("--teacher-width", type=int, default=256)
    p.add_argument("--teacher-layers", type=int, default=4)
    p.add_argument("--student-width", type=int, default=128)
    p.add_argument("--student-layers", type=int, default=2)
    p.add_argument(
        "--length-buckets", type=lambda s: [int(x) for x in s.split(",")], default=[64, 96, 128]
    )
    p.add_argument(
        "--prompt-buckets", type=lambda s: [int(x) for x in s.split(",")], default=[64, 96]
    )
    p.add_argument("--pack", action="store_true", help="pack our dataset rows (TRL cannot)")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument(
        "--trl-config",
        choices=("fastest", "default"),
        default="fastest",
        help="TRL's side: a tuned user's configuration (gradient_checkpointing=False, "
        "so generation keeps its KV cache; sdpa attention; fused AdamW) or GKDConfig's "
        "defaults (checkpointing on); float32 either way",
    )
    p.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="the students' dropout on both sides (GPT-2's 0.1: TRL trains in model.train())",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="before each rep, wait up to this many seconds for a quiet machine",
    )


def main():
    args = parse_args()
    meter = CpuMeter()
    device = jax.devices()[0]
    peak = flops_lib.peak_tflops(device.device_kind)
    print(
        f"jax {jax.__version__} on {device.platform} ({device.device_kind}), {os.cpu_count()} "
        f"cpus; peak {peak} TFLOP/s; batch {args.batch}, <= {args.max_length} tokens, "
        f"{args.new} new at T=0.9, lambda {args.lmbda}, beta 0.5; teacher {args.teacher_layers}L "
        f"d={args.teacher_width}, student {args.student_layers}L d={args.student_width}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    examples = make_examples(args.examples)
    tok_dir = build_tokenizer(examples, args.vocab, work / "tokenizer")
    data_path = synthetic.write_dolly_jsonl(work / "train.jsonl", examples)

    results: dict = {"args": vars(args), "device": device.device_kind}
    gkd = Ours(our_config("gkd", args, tok_dir, data_path))
    print(
        f"vocabulary {len(gkd.tokenizer)}; buckets reached (length, prompt): "
        f"{gkd.reachable_buckets()}",
        flush=True,
    )
    compile_s = gkd.precompile()
    print(f"our GKD programs compiled in {compile_s:.1f} s (excluded)", flush=True)

    if not args.skip_trl:
        trl = TRLSide(args, tok_dir, examples, gkd.tokenizer)
        if trl.mismatches:
            print(f"WARNING: {trl.mismatches}/64 examples tokenise differently in TRL")
        trl_name = "TRL GKDTrainer"
        print(f"TRL side: {trl.label}", flush=True)
        sides = {trl_name: trl.run, "ours (GKD)": gkd.run}
        recs = {k: [] for k in sides}
        loads = {k: [] for k in sides}
        per_rep = []
        for rep in range(args.reps):
            if args.wait_idle:
                wait_idle(meter, args.wait_idle)
            rep_sum = {}
            for name, run in sides.items():
                s = meter.start()
                r = run(args.steps)
                loads[name].append(meter.other_cores(s))
                recs[name].append(r)
                rep_sum[name] = summarize(r, args.lmbda)
            per_rep.append(rep_sum)
            a, b = rep_sum["TRL GKDTrainer"], rep_sum["ours (GKD)"]
            lt = lambda x: x.get("lambda_tokens_per_s") or x["tokens_per_s"]
            print(
                f"rep {rep}: TRL {a['steps_per_s']:.2f} steps/s ({a['on_steps']} on-policy), "
                f"{a['tokens_per_s']:.0f} tok/s; ours {b['steps_per_s']:.2f} steps/s "
                f"({b['on_steps']} on-policy), {b['tokens_per_s']:.0f} tok/s; at lambda: "
                f"{lt(b) / lt(a):.2f}x; other cores {fmt(loads['TRL GKDTrainer'][-1], '.2f')} / "
                f"{fmt(loads['ours (GKD)'][-1], '.2f')}",
                flush=True,
            )
        rows = []
        part1 = {}
        for name in sides:
            allr = [x for r in recs[name] for x in r]
            s = summarize(allr, args.lmbda)
            part1[name] = {**s, "other_cores": loads[name], "per_rep": [p[name] for p in per_rep]}
            rows.append(
                [
                    name,
                    fmt(s["steps_per_s"], ".2f"),
                    fmt(s["tokens_per_s"]),
                    f"{s['on_steps']}/{s['steps']}",
                    fmt(s["on_ms"], ".0f"),
                    fmt(s["off_ms"], ".0f"),
                    fmt(s["on_tokens"]),
                    fmt(s["off_tokens"]),
                    fmt(s.get("lambda_tokens_per_s")),
                    fmt(100 * s["sampling_share"], ".0f") + "%",
                    fmt(
                        None if s["on_sampling_share"] is None else 100 * s["on_sampling_share"],
                        ".0f",
                    )
                    + "%",
                    mfu(s["tflops_per_s"], peak, 1) if name.startswith("ours") else "-",
                    ", ".join(fmt(x, ".2f") for x in loads[name]),
                ]
            )
        for name in sides:
            if part1[name].get("outliers"):
                print(f"WARNING: {name}: {part1[name]['outliers']} step(s) over 5x the median")
        a, b = part1["TRL GKDTrainer"], part1["ours (GKD)"]
        ratios = [
            p["ours (GKD)"].get("lambda_tokens_per_s", p["ours (GKD)"]["tokens_per_s"])
            / p["TRL GKDTrainer"].get("lambda_tokens_per_s", p["TRL GKDTrainer"]["tokens_per_s"])
            for p in per_rep
        ]
        part1["ratio_tokens_per_s_raw"] = b["tokens_per_s"] / a["tokens_per_s"]
        part1["ratio_steps_per_s_raw"] = b["steps_per_s"] / a["steps_per_s"]
        if "lambda_tokens_per_s" in a and "lambda_tokens_per_s" in b:
            part1["ratio_tokens_per_s_lambda"] = b["lambda_tokens_per_s"] / a["lambda_tokens_per_s"]
        part1["ratio_lambda_per_rep"] = ratios
        results["part1"] = part1
        print()
        print(
            table(
                [
                    "side",
                    "steps/s",
                    "tok/s",
                    "on-policy steps",
                    "on-policy ms",
                    "off-policy ms",
                    "tok/on step",
                    "tok/off step",
                    f"tok/s at lambda={args.lmbda}",
                    "sampling share",
                    "sampling share (on steps)",
                    "MFU",
                    "other cores per rep",
                ],
                rows,
            )
        )
        print(
            f"\nours / TRL: tokens/s {part1['ratio_tokens_per_s_raw']:.2f}x raw, "
            f"{part1.get('ratio_tokens_per_s_lambda', float('nan')):.2f}x at lambda "
            f"{args.lmbda} (per rep: {', '.join(f'{x:.2f}x' for x in ratios)}); steps/s "
            f"{part1['ratio_steps_per_s_raw']:.2f}x raw",
            flush=True,
        )

    if not args.skip_cost:
        results["part2"] = cost_part(args, gkd, tok_dir, data_path, meter, peak)
    print(json.dumps(results, default=float))


def cost_part(args, gkd: Ours, tok_dir, data_path, meter, peak) -> dict:
    """Part 2: on-policy steps (lambda = 1) of GKD (separate / no sync / fused) and ClassKD."""
    start = time.perf_counter()
    fused = Fused(gkd)
    on_plan = gkd.plan_with(**{"gkd.lmbda": 1.0})
    cm_changes = {"classkd.lmbda": 1.0, "classmate.min_gap": -1.0}
    classkd = Ours(our_config("classkd", args, tok_dir, data_path, **cm_changes))
    frozen_plan = classkd.plan_with(**{"classmate.min_gap": 1e9})
    nocm = Ours(
        our_config(
            "classkd", args, tok_dir, data_path, **cm_changes, **{"misfeedback.weight": 0.0}
        ),
        classmate=False,
    )
    compile_s = fused.precompile() + classkd.precompile() + nocm.precompile()
    print(
        f"\npart 2 set-up {time.perf_counter() - start:.1f} s "
        f"(compiles {compile_s:.1f} s, excluded)",
        flush=True,
    )
    variants = {  # name: (whose data stream it reads, run)
        "GKD, trainer path (sampler, sync, step)": (gkd, lambda n: gkd.run(n, on_plan)),
        "GKD, sampler then step, no sync": (
            gkd,
            lambda n: gkd.run(n, on_plan, mode="nosync"),
        ),
        "GKD, fused (one program)": (gkd, fused.run),
        "ClassKD (classmate updates)": (classkd, classkd.run),
        "ClassKD, classmate update skipped": (classkd, lambda n: classkd.run(n, frozen_plan)),
        "ClassKD, no classmate (misfeedback 0)": (nocm, nocm.run),
    }
    recs = {k: [] for k in variants}
    loads = {k: [] for k in variants}
    for _ in range(args.reps):
        if args.wait_idle:
            wait_idle(meter, args.wait_idle)
        # Every variant of a rep reads the same batches (same buckets): the three
        # builds' data streams are identical, so each restarts from one position.
        position = classkd.data.state()
        for name, (owner, run) in variants.items():
            owner.data.restore(position)
            s = meter.start()
            recs[name] += run(args.cost_steps)
            loads[name].append(meter.other_cores(s))
    sums = {k: summarize(v) for k, v in recs.items()}
    for name, s in sums.items():
        if s.get("outliers"):
            print(f"WARNING: {name}: {s['outliers']} step(s) over 5x the median")
    base = sums["GKD, trainer path (sampler, sync, step)"]
    rows = []
    for name, s in sums.items():
        share = s["sampling_share"]
        rows.append(
            [
                name,
                fmt(s["ms_per_step"], ".1f"),
                fmt(s["steps_per_s"], ".2f"),
                fmt(s["tokens_per_s"]),
                f"{s['ms_per_step'] / base['ms_per_step']:.2f}x",
                "-" if share == 0 else f"{100 * share:.0f}%",
                fmt(1e3 * s["tflops_per_s"], ".1f"),
                mfu(s["tflops_per_s"], peak, 1),
                ", ".join(fmt(x, ".2f") for x in loads[name]),
            ]
        )
    print()
    print(
        table(
            [
                "on-policy step (lambda = 1)",
                "ms/step",
                "steps/s",
                "tok/s",
                "time / GKD trainer path",
                "sampling share",
                "counted GFLOP/s",
                "MFU",
                "other cores per rep",
            ],
            rows,
        )
    )
    t = {k: v["ms_per_step"] for k, v in sums.items()}
    full = t["ClassKD (classmate updates)"]
    no_cm = t["ClassKD, no classmate (misfeedback 0)"]
    skipped = t["ClassKD, classmate update skipped"]
    derived = {
        "classmate_share": 1 - no_cm / full,
        "classmate_update_share": 1 - skipped / full,
        "classmate_forward_share": (skipped - no_cm) / full,
        "classkd_over_gkd": full / base["ms_per_step"],
        "fused_speedup": base["ms_per_step"] / t["GKD, fused (one program)"],
        "nosync_speedup": base["ms_per_step"] / t["GKD, sampler then step, no sync"],
    }
    print(
        f"\nclassmate share of the ClassKD step: {100 * derived['classmate_share']:.0f}% "
        f"(its update {100 * derived['classmate_update_share']:.0f}%, its forwards and "
        f"misfeedback {100 * derived['classmate_forward_share']:.0f}%); ClassKD / GKD step "
        f"{derived['classkd_over_gkd']:.2f}x; fused / separate steps/s "
        f"{derived['fused_speedup']:.2f}x (no sync: {derived['nosync_speedup']:.2f}x)",
        flush=True,
    )
    parts = step_parts(gkd, args.reps * args.cost_steps)
    derived["parts_ms"] = parts
    step_ms = base["ms_per_step"]
    rest = step_ms - parts["sampling"] - parts["teacher_forward"]
    rest -= parts["student_forward_backward"]
    print(
        "where the GKD on-policy step's time goes (each piece jitted alone, median of "
        f"{args.reps * args.cost_steps}): sampling {parts['sampling']:.1f} ms, teacher forward "
        f"{parts['teacher_forward']:.1f} ms, student forward + backward "
        f"{parts['student_forward_backward']:.1f} ms, the rest (losses' softmaxes, optimizer, "
        f"host) {rest:.1f} ms of {step_ms:.1f} ms; this CPU's float32 matmul rate at the "
        "teacher's MLP shape: "
        f"{parts['matmul_gflops']:.0f} GFLOP/s",
        flush=True,
    )
    return {"variants": sums, "other_cores": loads, **derived}


def step_parts(ours: Ours, reps: int) -> dict:
    """Median milliseconds of the pieces of a GKD on-policy step, each its own program."""
    import jax.numpy as jnp

    tokens, mask = ours.data.next_prompts(ours.builder.rows)
    params = ours.state.student.params
    cfg = ours.plan.sampling
    sample = lambda: ours.sampler(params, tokens, mask, jax.random.key(1), cfg)
    s = sample()
    batch = scored_batch({k: getattr(s, k) for k in SAMPLE_KEYS})
    t_cfg, s_cfg = ours.models.teacher.config, ours.models.student.config

    def logits_of(cfg, p, b):
        w, vocab_major = head(cfg, p)  # a tied head comes as stored, [V, D]
        spec = "btd,vd->btv" if vocab_major else "btd,dv->btv"
        return jnp.einsum(spec, hidden_states(cfg, p, b), w)

    @jax.jit
    def teacher(p, b):
        return jax.nn.logsumexp(logits_of(t_cfg, p, b), axis=-1).sum()

    @jax.jit
    def student(p, b):
        def loss(p):
            return jax.nn.logsumexp(logits_of(s_cfg, p, b), axis=-1).sum()

        return jax.grad(loss)(p)

    rows, width = batch["tokens"].size, t_cfg.hidden_size
    a = jnp.ones((rows, width), jnp.float32)
    w = jnp.ones((width, t_cfg.intermediate_size), jnp.float32)
    matmul = jax.jit(lambda a, w: a @ w)
    fns = {
        "sampling": sample,
        "teacher_forward": lambda: teacher(ours.frozen["teacher"], batch),
        "student_forward_backward": lambda: student(params, batch),
        "matmul": lambda: matmul(a, w),
    }
    times = {k: [] for k in fns}
    for f in fns.values():
        _blocked(f())
    for _ in range(reps):
        for k, f in fns.items():
            start = time.perf_counter()
            _blocked(f())
            times[k].append(time.perf_counter() - start)
    out = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    out["matmul_gflops"] = 2 * rows * width * t_cfg.intermediate_size / out.pop("matmul") / 1e6
    return out


if __name__ == "__main__":
    sys.exit(main())
