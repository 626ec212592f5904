"""MiniLLM (Gu et al., ICLR 2024): reverse KL by policy gradient on teacher-mixed rollouts.

    python -m classkd_jax.train --config configs/minillm.py:size=tiny --workdir /tmp/minillm
    python -m classkd_jax.train --config configs/minillm.py:pair=gpt2-xl/gpt2 \\
        --workdir runs/minillm-gpt2 --config.teacher.path=runs/sft-gpt2-xl/student_hf \\
        --config.student.path=runs/sft-gpt2/student_hf \\
        --config.data.lm_path=data/openwebtext/train.jsonl

Each phase (`classkd_jax/training/minillm.py`) samples `minillm.num_rollouts`
completions from p~ = teacher_mix * p + (1 - teacher_mix) * q (0.2; the
sampler's loop holds both KV caches) and scores them once with the student
of that moment: log q_old and log p per token, the importance weight
w = q / p~ (exactly 1 at teacher_mix = 0) and the reward
r = clip((log p - log q_old) / reward_scaling, +-reward_clip) (0.5, 100).
Then `ppo_epochs` (4) shuffled passes over those rollouts in minibatches of
`data.batch_size`, one optimizer step each, on
  PPO-clipped PG: max(-A ratio, -A clip(ratio, 1 +- clip_ratio)),
    ratio = exp(log q - log q_old) * w, with the advantages A the discounted
    (gamma 0.95), length-normalised returns, whitened over the minibatch;
  + the exact single-step KL(q_t || p_t) on the rollout prefixes, without w;
  + with `data.lm_path`, lm.coef (1) * (0.5 CE + 0.5 KL(p || q)) on the
    plain-text stream (MiniLLM's pre-training loss; `lm.kd_ratio`).
The rollout store is part of every checkpoint: a run stopped mid-phase
resumes on the same rollouts. `steps` counts optimizer steps (the reference
`total_iters`).

Where we differ from the reference on purpose: it whitens the advantages
over every entry of the minibatch's response slots, padding included; we
whiten over the scored tokens only, so padding never shifts the mean.

Recipe (pair variants): AdamW (0.9, 0.95), weight decay 1e-6, lr 5e-6
constant after 100 warm-up steps, 5000 steps, students from an SFT
checkpoint.

Batch and phase (pair variants), the reference's (LMOps minillm/arguments.py:
num_rollouts_per_device = num_rollouts / n_gpu; scripts/gpt2/minillm/*.sh,
scripts/llama/minillm/*.sh, all on 16 GPUs). Our `data.batch_size` is the
global batch of one optimizer step, the reference's GPUs x per-GPU batch x
gradient-accumulation steps:
  - gpt2 student (train_base_xl.sh): 16 GPUs x 16 rows, no accumulation =
    256 rows per step; 256 rollouts per phase (16 per GPU), 4 PPO epochs, so
    a phase is 4 steps of 256 and 5000 steps draw 1250 phases, ~320k rollouts.
  - gpt2-medium / gpt2-large students (train_{medium,large}_xl.sh): 16 GPUs x
    2 rows x 2 accumulation steps = 64 rows; 256 rollouts, 4 epochs: 16 steps
    of 64 per phase, ~80k rollouts in 5000 steps.
  - every other pair: the reference's LLaMA scripts (16 GPUs x 8 rows x 2
    accumulation steps = 256 rows), 4 steps of 256 per phase.
The plain-text LM stream's batch is the same global batch (the reference
draws one LM batch of `batch_size` per GPU with each PPO minibatch:
`data.lm_batch_size=0`). `grad_accum` is the pair's times the batch's growth
(x4 from the pair batch 64, x2 for gpt2-large's 32), so a micro-batch holds
what the pair's other methods put in one: the same activation memory; with
more data shards than rows / grad_accum, lower it.
Sampling and scoring go in calls of the pair's own batch
(`sampling.batch_size`: 64, 32 for gpt2-large; 4 or 8 calls a phase), so the
samplers' KV caches and the scorer need what they needed before the batch
grew (the reference samples 16 per GPU, 256 at once; raise
`sampling.batch_size` to a divisor of `num_rollouts` where memory allows).

`--config.misfeedback.weight=0.1` (0 by default: the plain method) adds
ClassKD's misfeedback term on its rollouts, per token beside the policy gradient, with a
classmate trained as ClassKD's (`classmate.*`; `compare`'s `minillm+mf` row):
docs/baselines.md, "ClassKD's misfeedback on the sampling baselines".
"""

from classkd_jax.config_utils import import_sibling


def get_config(arg=None):
    """Returns the locked MiniLLM config; `arg`: `size=tiny` or `pair=T/S` (configs/_base.py)."""
    c = import_sibling(__file__, "_base").method_config("minillm", arg)
    if c.student.preset != "tiny-llama":  # the pair recipe (MiniLLM's GPT-2 scripts)
        c.steps, c.epochs = 5000, 0.0
        c.student.lr = 5e-6
        c.student.schedule = "constant"
        c.student.warmup_steps = 100
        c.student.b2 = 0.95
        c.student.weight_decay = 1e-6
        pair_batch = c.data.batch_size
        small_batch = c.student.preset in ("gpt2-medium", "gpt2-large")
        c.data.batch_size = 64 if small_batch else 256  # see the docstring
        c.data.lm_batch_size = 0  # = data.batch_size, as the reference
        c.sampling.batch_size = pair_batch  # the pair's memory for sampling and scoring
        c.minillm.num_rollouts = 256
        c.minillm.ppo_epochs = 4
        c.grad_accum *= c.data.batch_size // pair_batch  # the pair's micro-batch kept
    c.lock()
    return c
