"""ClassKD: a student distilled from a teacher, pushed away from a classmate trained beside it.

    python -m classkd_jax.train --config configs/classkd.py:size=tiny --workdir /tmp/classkd
    python -m classkd_jax.train --config configs/classkd.py:pair=gpt2-xl/gpt2 \\
        --workdir runs/classkd-gpt2 --config.teacher.path=runs/sft-gpt2-xl/student_hf \\
        --config.student.path=runs/sft-gpt2/student_hf

Student loss, per step (docs/method.md):
  off_policy_weight * D_off(p, q) on dataset responses (packed)
  + [with probability classkd.lmbda] on_policy_weight * D_on(p, q) on the
    student's own samples + w(step) * misfeedback(q, c) on the same samples,
    the classmate's distribution treated as wrong (`misfeedback.variant`:
    'skew' is bounded in [log alpha, 0]; 'raw' is the write-up's -KL(q||c),
    unbounded below; see classkd_jax/losses/misfeedback.py).
w(step) is 0 before `misfeedback.start_step`, then ramps linearly to
`misfeedback.weight` over `misfeedback.warmup_steps`.

The estimator (`classkd.estimator`): the write-up's on-policy KD and
misfeedback are sequence-level expectations over the student's samples
(E_{y~q}[log q(y|x)/p(y|x)], -E_{y~q}[log q(y|x)/c(y|x)]).
- 'token' (default): the step optimises their token-level surrogate, the exact
  per-position divergence over the vocabulary on the sampled prefixes with no
  gradient through the sampling, as GKD does. The values agree in expectation
  (chain rule); the gradients do not: the surrogate drops the long-horizon
  term (how a token changes the prefixes of later positions) that a policy
  gradient such as MiniLLM's estimates (classkd_jax/losses/misfeedback.py).
- 'sequence': the write-up's RL-like form. Per sample, the length-normalised
  log-ratios f = (1/L) sum_t log q(y_t)/p(y_t) and (1/L) sum_t log q(y_t)/m(y_t)
  (m = c for misfeedback.variant='raw', alpha q + (1 - alpha) c for 'skew';
  'hinge' and 'sigmoid' are refused) are the rewards of a REINFORCE estimate,
  minus the batch mean as baseline, times sum_t grad log q(y_t), plus the
  pathwise term the length normalisation leaves: in expectation the gradient
  of E_q[f] (classkd_jax/losses/reinforce.py). Logged `on_kd` and
  `misfeedback` are then those sequence-level estimates. It costs one more
  student forward on the samples, and needs sampling.temperature ==
  classkd.temperature, top_k=0, top_p=1 (the samples must come from q).
    python -m classkd_jax.train --config configs/classkd.py:size=tiny \
        --workdir /tmp/classkd-seq --config.classkd.estimator=sequence
Both: docs/estimators-classkd.md. The off-policy KD on dataset responses is
the same under either estimator.

The classmate (`classmate.path`, default the student's initial weights)
learns from the teacher only, off-policy, on the student's dataset batch; it
never trains on its own or the student's samples. Its pace is config:
`classmate.start_step`, `update_every`, `stop_step`, its own `lr` and
schedule, and the gap control `min_gap`: with running averages of KL(p||c)
and KL(p||q) on the same batch, it skips an update while it is less than
`min_gap` nats worse than the student (negative: off). The gap is logged
every step. With `misfeedback.weight=0` the classmate has no path to the
student at all. Variants and shared keys: `configs/_base.py`.
"""

from classkd_jax.config_utils import import_sibling


def get_config(arg=None):
    """Returns the locked ClassKD config; `arg`: `size=tiny` or `pair=T/S` (configs/_base.py)."""
    c = import_sibling(__file__, "_base").method_config("classkd", arg)
    c.misfeedback.weight = 0.1
    c.lock()
    return c
