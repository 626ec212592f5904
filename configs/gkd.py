"""GKD (Agarwal et al., 2023) with TRL's conventions, or as DistiLLM's baseline runs it.

    python -m classkd_jax.train --config configs/gkd.py:size=tiny --workdir /tmp/gkd
    python -m classkd_jax.train --config configs/gkd.py:pair=gpt2-xl/gpt2 --workdir runs/gkd-gpt2 \\
        --config.teacher.path=runs/sft-gpt2-xl/student_hf \\
        --config.student.path=runs/sft-gpt2/student_hf
    # the published table's GKD row: DistiLLM's scripts/gpt2/gkd/gkd_base.sh
    python -m classkd_jax.train --config configs/gkd.py:pair=gpt2-xl/gpt2,recipe=distillm ...

The loss is the generalized JSD(beta) (`gkd.beta`; beta=0 is KL(p||q), beta=1
KL(q||p), as in TRL) at the loss temperature `gkd.temperature`. Per step, with
probability `gkd.lmbda` (drawn from the run's seed and the step, so a resumed
run draws the same) the responses are the student's own samples of dataset
prompts, sampled at `sampling.temperature` (TRL: 0.9) by the jitted sampler;
otherwise the dataset responses, or with `gkd.seq_kd=True` the teacher's
samples. No gradient flows through sampling. Variants and shared keys:
`configs/_base.py`.

`recipe=trl` (the default) is TRL's GKDTrainer: beta 0.5, lmbda 0.5, sampling
at 0.9, fresh samples trained on at once.

`recipe=distillm` is DistiLLM's `--type mixed-jsd` baseline (jongwooko/distillm
`finetune.py`, `distillm/losses.py` js_distance, scripts/gpt2/gkd/*.sh), the
likely source of the published GKD row:
  - beta 0.1 in TRL's convention: js_distance's lam = 0.9 weighs the student,
    mixture m = 0.1 p + 0.9 q, loss 0.1 KL(p||m) + 0.9 KL(q||m);
  - lmbda 0.5 (`--mixed-alpha 0.5`), sampling at temperature 1 (top-k 0, top-p 1);
  - the replay schedule (`gkd.replay`): an on-policy step pushes its fresh
    samples into a replay buffer and trains on a uniform batch drawn from it
    (old samples included), the buffer sized as DistiLLM's
    (`distillm.capacity_batches=125` on pairs: 1000 rows per GPU at 8 rows per GPU
    step; `distillm.capacity` rows on tiny runs);
  - validation once an epoch on pairs (`--eval-interval -1`: eval_every_epochs=1).
  Kept as given: the pair's global batch and learning rate (the script runs
  16 GPUs x 2 rows at lr 5e-4).

`--config.misfeedback.weight=0.1` (0 by default: the plain method) adds
ClassKD's misfeedback term on its student samples (replayed ones too), with a
classmate trained as ClassKD's (`classmate.*`; `compare`'s `gkd+mf` row):
docs/baselines.md, "ClassKD's misfeedback on the sampling baselines".
"""

from classkd_jax.config_utils import import_sibling, parse_arg

RECIPES = ("trl", "distillm")


def get_config(arg=None):
    """Returns the locked GKD config; `arg`: `size=tiny` or `pair=T/S` (configs/_base.py),
    plus `recipe=trl|distillm` (see the module docstring)."""
    recipe = parse_arg(arg, lazy=True, recipe="trl").recipe
    if recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r}; expected one of {RECIPES}")
    rest = ",".join(i for i in (arg or "").split(",") if i.partition("=")[0].strip() != "recipe")
    c = import_sibling(__file__, "_base").method_config("gkd", rest or None)
    c.sampling.temperature = 0.9  # TRL's GKDConfig default; the loss stays at temperature 1
    if recipe == "distillm":
        c.gkd.beta = 0.1
        c.gkd.lmbda = 0.5
        c.gkd.replay = True
        c.sampling.temperature = 1.0
        c.sampling.top_k = 0
        c.sampling.top_p = 1.0
        if c.student.preset != "tiny-llama":
            c.distillm.capacity_batches = 125.0
            c.eval_every_epochs = 1.0
    c.lock()
    return c
