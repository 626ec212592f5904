"""DistiLLM (Ko et al., ICML 2024): skew KL with an adaptive off-policy schedule.

    python -m classkd_jax.train --config configs/distillm.py:size=tiny --workdir /tmp/distillm
    python -m classkd_jax.train --config configs/distillm.py:pair=gpt2-xl/gpt2 \\
        --workdir runs/distillm-gpt2 --config.teacher.path=runs/sft-gpt2-xl/student_hf \\
        --config.student.path=runs/sft-gpt2/student_hf

Loss: `distillm.divergence` at skew `alpha` (0.1): 'skew_forward_kl' =
KL(p || a p + (1 - a) q), 'skew_reverse_kl' = KL(q || a q + (1 - a) p); the
q inside the mixture carries gradient as in DistiLLM (`stop_grad_mixture`
detaches it, as DistiLLM-2 does). The GPT-2 recipes use skew KL for the base
student and skew reverse KL for medium and large. `kd_ratio` < 1 mixes in
cross-entropy on the same tokens. With `data.lm_path` the loss adds
`lm.coef` (1) times CE on the plain-text stream (`lm.kd_ratio` = 0 here:
DistiLLM's pre-training term is plain CE).

The adaptive off-policy schedule (`classkd_jax/training/distillm.py`), as
the reference `finetune.py` runs it: each step draws u from the run's seed
and the step; u < phi (1 - t/T), or u < phi while the replay buffer is not
full, samples the student on the step's prompts, trains on the samples and
pushes them into the buffer (`capacity` rows, on the host, part of every
checkpoint); else u < phi trains on a uniform batch from the buffer; else on
the dataset batch. phi starts at `init_phi` (the recipes: 0) and rises by
`phi_step` (0.1) whenever a validation's dev loss is `loss_threshold` (0.1)
above the reference (the dev loss before training, then the loss at the
last rise). `adaptive=False` keeps phi fixed.

Validation cadence and replay buffer (pair variants), the reference's
(`finetune.py`, scripts/gpt2/distillm/*.sh: `--eval-interval -1`, 8 rows per
GPU, `--capacity 1000`): it validates once per epoch, at the epoch's end, so
phi can rise at most once an epoch: `eval_every_epochs=1` (converted to steps
by `checks.eval_interval`, one epoch = the first epoch's batch count; the
step-count `eval_every` is then unused). Its replay buffer is per rank, 1000
rows on each GPU at 8 rows per GPU step, i.e. 125 steps' worth of samples
whatever the GPU count: `distillm.capacity_batches=125` holds 125 global
batches (125 x data.batch_size rows; 8000 at the pair batch 64), so the
buffer spans as many steps as the reference's and its fill-up phase (phi
applied unconditionally while the buffer is not full) lasts as long. Size
and tiny variants keep `capacity` in rows and `eval_every` in steps.

Where we differ from the reference on purpose: its sampled batches put the
generated tokens as labels at their own positions (unshifted) and keep the
dataset batch's loss mask; here samples are scored like every on-policy
batch (the mask shifted with the labels; every generated token, EOS
included, scored once).

`--config.misfeedback.weight=0.1` (0 by default: the plain method) adds
ClassKD's misfeedback term on its fresh and replayed student samples, with a
classmate trained as ClassKD's (`classmate.*`; `compare`'s `distillm+mf` row):
docs/baselines.md, "ClassKD's misfeedback on the sampling baselines".
"""

from classkd_jax.config_utils import import_sibling, parse_arg


def get_config(arg=None):
    """Returns the locked DistiLLM config; `arg`: `size=tiny` or `pair=T/S` (configs/_base.py)."""
    c = import_sibling(__file__, "_base").method_config("distillm", arg)
    c.lm.kd_ratio = 0.0  # DistiLLM's pre-training term is plain CE
    pair = parse_arg(arg, size="full", pair="").pair
    if c.student.preset != "tiny-llama":  # the pair recipe (see the docstring)
        c.eval_every_epochs = 1.0
        c.distillm.capacity_batches = 125.0  # 1000 rows per GPU / 8 rows per GPU step
    if pair and pair.split("/")[1] in ("gpt2-medium", "gpt2-large"):
        c.distillm.divergence = "skew_reverse_kl"  # the recipes' choice for medium and large
    c.lock()
    return c
