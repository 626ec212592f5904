"""SeqKD (Kim & Rush, 2016): SFT on the teacher's own responses to the training prompts.

    python -m classkd_jax.train --config configs/seqkd.py:size=tiny --workdir /tmp/seqkd
    python -m classkd_jax.train --config configs/seqkd.py:pair=gpt2-xl/gpt2 \\
        --workdir runs/seqkd-gpt2 --config.teacher.path=runs/sft-gpt2-xl/student_hf \\
        --config.student.path=runs/sft-gpt2/student_hf

Before the first step the teacher answers every training prompt once with
the jitted, sharded sampler (`sampling.max_new_tokens`, `temperature`,
`top_k`, `top_p`; `seqkd.greedy` for greedy decoding), in parts of
`seqkd.chunk_prompts` prompts written atomically to `seqkd.cache_dir`
(default `DIR/seqkd`): a rerun, a resumed run or a preempted generation
reuses every finished part, and a cache made with other settings is an
error naming them. Each response ends with EOS and is cut to
`data.max_length`. Then the student trains by cross-entropy on those
responses (packed like the dataset); the teacher is released after
generation and takes no part in the steps. Variants and shared keys:
`configs/_base.py`.
"""

from classkd_jax.config_utils import import_sibling


def get_config(arg=None):
    """Returns the locked SeqKD config; `arg`: `size=tiny` or `pair=T/S` (configs/_base.py)."""
    c = import_sibling(__file__, "_base").method_config("seqkd", arg)
    c.lock()
    return c
