"""GKD (Agarwal et al., 2023) with TRL's conventions.

    python -m classkd_jax.train --config configs/gkd.py:size=tiny --workdir /tmp/gkd
    python -m classkd_jax.train --config configs/gkd.py:pair=gpt2-xl/gpt2 --workdir runs/gkd-gpt2 \\
        --config.teacher.path=runs/sft-gpt2-xl/student_hf \\
        --config.student.path=runs/sft-gpt2/student_hf

The loss is the generalized JSD(beta) (`gkd.beta`; beta=0 is KL(p||q), beta=1
KL(q||p), as in TRL) at the loss temperature `gkd.temperature`. Per step, with
probability `gkd.lmbda` (drawn from the run's seed and the step, so a resumed
run draws the same) the responses are the student's own samples of dataset
prompts, sampled at `sampling.temperature` (TRL: 0.9) by the jitted sampler;
otherwise the dataset responses, or with `gkd.seq_kd=True` the teacher's
samples. No gradient flows through sampling. Variants and shared keys:
`configs/_base.py`.
"""

from classkd_jax.config_utils import import_sibling


def get_config(arg=None):
    """Returns the locked GKD config; `arg`: `size=tiny` or `pair=T/S` (configs/_base.py)."""
    c = import_sibling(__file__, "_base").method_config("gkd", arg)
    c.sampling.temperature = 0.9  # TRL's GKDConfig default; the loss stays at temperature 1
    c.lock()
    return c
