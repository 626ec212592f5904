"""Word-level KD: a divergence to the frozen teacher on dataset responses.

    python -m classkd_jax.train --config configs/kd.py:size=tiny --workdir /tmp/kd
    python -m classkd_jax.train --config configs/kd.py:pair=gpt2-xl/gpt2 --workdir runs/kd-gpt2 \\
        --config.teacher.path=runs/sft-gpt2-xl/student_hf \\
        --config.student.path=runs/sft-gpt2/student_hf

`kd.divergence` is any of `classkd_jax.losses.DIVERGENCES` (forward_kl by
default, DistiLLM's pure KD); `kd.ce_weight` mixes in cross-entropy on the
same tokens (MiniLLM's KD baseline uses 0.5). The teacher's forward runs inside
the jitted step; above `loss.dense_max_vocab` the loss takes the fused chunked
path, so no model's `[B, T, V]` logits exist. Variants and shared keys:
`configs/_base.py`.
"""

from classkd_jax.config_utils import import_sibling


def get_config(arg=None):
    """Returns the locked KD config; `arg`: `size=tiny` or `pair=T/S` (configs/_base.py)."""
    c = import_sibling(__file__, "_base").method_config("kd", arg)
    c.lock()
    return c
