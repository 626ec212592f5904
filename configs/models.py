"""Model shape presets as an ml_collections config.

Usage:
  python -c "from configs.models import get_config; print(get_config('qwen2.5-0.5b'))"
  --config configs/models.py:name=llama-3.2-1b,dtype=bfloat16,remat

`get_config(arg)` returns a locked ConfigDict with every `ModelConfig` field;
`to_model_config(config)` turns it (or any sub-config with the same keys, e.g.
`config.student.model`) back into the frozen dataclass the model takes.
Presets: gpt2, gpt2-medium, gpt2-large, gpt2-xl, qwen2.5-0.5b, qwen2.5-1.5b,
qwen2.5-7b, llama-3.2-1b, llama-3.2-3b, llama-3.1-8b, mistral-7b, smollm3-3b,
qwen3-0.6b/1.7b/4b/8b/14b/32b, gemma-3-270m/1b/4b/12b/27b, gemma-2-2b/9b/27b,
tiny-gpt2, tiny-llama, tiny-qwen2, tiny-qwen3, tiny-gemma2, tiny-gemma3.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from classkd_jax.config_utils import parse_arg
from classkd_jax.models import PRESETS, ModelConfig, get_preset


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the preset named in `arg` as a locked ConfigDict.

    Args:
      arg: a bare preset name ('gpt2') or 'name=gpt2,dtype=bfloat16,param_dtype=float32,remat'.
    """
    if arg and "=" not in arg.split(",")[0] and arg.split(",")[0] in PRESETS:
        name, _, rest = arg.partition(",")
        arg = f"name={name}" + (f",{rest}" if rest else "")
    args = parse_arg(arg, name="gpt2", dtype="float32", param_dtype="float32", remat=False)
    model = get_preset(args.name, dtype=args.dtype, param_dtype=args.param_dtype, remat=args.remat)
    config = ml_collections.ConfigDict(dataclasses.asdict(model))
    config.lock()
    return config


def to_model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The `ModelConfig` for a ConfigDict built by `get_config`."""
    return ModelConfig(**config.to_dict())
