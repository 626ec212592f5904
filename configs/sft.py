"""SFT: cross-entropy on dataset responses (the baseline, and how teachers and
student initialisations are made).

    python -m classkd_jax.train --config configs/sft.py:size=tiny --workdir /tmp/sft
    python -m classkd_jax.train --config configs/sft.py:pair=gpt2-xl/gpt2 --workdir runs/sft-gpt2 \\
        --config.data.data_dir=data

The tiny run takes a few seconds after start-up and compile on a 2-core CPU;
its loss falls from ~6.2 (log 512) within the 6 steps. The protocol starts
every distilled student from an SFT checkpoint chosen by dev loss
(`--config.best_metric=dev_loss`; then `python -m classkd_jax.export
--workdir DIR --which best`). Variants and shared keys: `configs/_base.py`.
"""

from classkd_jax.config_utils import import_sibling


def get_config(arg=None):
    """Returns the locked SFT config; `arg`: `size=tiny` or `pair=T/S` (configs/_base.py)."""
    c = import_sibling(__file__, "_base").method_config("sft", arg)
    c.lock()
    return c
