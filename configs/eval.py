"""Evaluation protocol settings as a config (big_vision style).

The final evaluation of the published table (MiniLLM / DistiLLM protocol):

    python -m classkd_jax.evaluate --model PATH --data_dir data --out runs/eval/NAME

Expected, GPT-2 XL -> GPT-2 base distilled with MiniLLM: ROUGE-L about
24.6 / 13.2 / 16.9 / 25.3 / 26.6 on Dolly / Self-Inst / Vicuna / S-NI / UnNI.

A training config embeds the validation variant as its eval block:

    config.eval = eval_config.get_config("mode=validation")

and builds the protocol with
`classkd_jax.evaluation.EvalProtocol.from_dict(config.eval.protocol)`.
"""

import ml_collections

from classkd_jax.config_utils import parse_arg
from classkd_jax.evaluation import protocol


def get_config(arg=None):
    """Returns the locked eval config; `arg`: 'mode=final' (default) or 'mode=validation'."""
    arg = parse_arg(arg, mode="final")
    modes = {"final": protocol.FINAL, "validation": protocol.VALIDATION}
    if arg.mode not in modes:
        raise ValueError(f"configs/eval.py: mode={arg.mode!r}; expected one of {sorted(modes)}")
    config = ml_collections.ConfigDict()
    config.mode = arg.mode
    config.benchmarks = ",".join(protocol.BENCHMARK_ORDER)
    config.protocol = modes[arg.mode].to_dict()
    config.lock()
    return config
