"""FLOP accounting of a train step and the peak of known accelerators, for MFU.

Counts are the matmul FLOPs of what the step computes (padding included,
attention over every key slot it reads, 2 FLOPs per multiply-add): a forward
is `fwd`, a forward + backward `3 * fwd`, a cached decode step reads the whole
cache. MFU = counted FLOPs / (wall time * devices * peak), against the bf16
dense peak of the device (`PEAK_TFLOPS`; float32 runs therefore show a lower
MFU than their own peak would give). `--config.peak_tflops` overrides it.
"""

from __future__ import annotations

from classkd_jax.models import ModelConfig

# Dense bf16 peak TFLOP/s per chip, by a lower-case substring of `device_kind`
# (first match wins, so more specific names come first).
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("tpu v6 lite", 918.0),
    ("tpu v6e", 918.0),
    ("tpu v5p", 459.0),
    ("tpu v5 lite", 197.0),
    ("tpu v5e", 197.0),
    ("tpu v5", 459.0),
    ("tpu v4", 275.0),
    ("tpu v3", 123.0),
    ("tpu v2", 45.0),
    ("b200", 2250.0),
    ("h100 pcie", 756.0),
    ("h100", 989.0),
    ("h200", 989.0),
    ("h800", 989.0),
    ("a100", 312.0),
    ("a800", 312.0),
    ("l40s", 362.0),
    ("l4", 121.0),
    ("a10g", 70.0),
    ("a10", 125.0),
    ("v100", 125.0),
    ("rtx 4090", 165.0),
    ("rtx 3090", 71.0),
)


def peak_tflops(device_kind: str, override: float = 0.0) -> float | None:
    """Per-device peak TFLOP/s: `override` if > 0, else the table's, else None (CPU)."""
    if override > 0:
        return float(override)
    kind = device_kind.lower()
    for name, value in PEAK_TFLOPS:
        if name in kind:
            return value
    return None


def forward_flops(config: ModelConfig, rows: int, length: int, context: int | None = None) -> float:
    """Matmul FLOPs of a forward over `rows x length` tokens, each attending to
    `context` key slots (default `length`: the full [T, T] scores are computed)."""
    d, h, kv, dh = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    f, v, layers = config.intermediate_size, config.vocab_size, config.num_layers
    context = length if context is None else context
    projections = 2 * d * (h * dh + 2 * kv * dh) + 2 * h * dh * d
    mlp = 2 * d * f * (3 if config.mlp == "swiglu" else 2)
    attention = 2 * 2 * h * dh * context
    per_token = layers * (projections + mlp + attention) + 2 * d * v
    return float(rows) * float(length) * float(per_token)


def sampling_flops(config: ModelConfig, rows: int, prompt: int, new: int, steps: int) -> float:
    """Prefill of `prompt` tokens then `steps` cached decode steps over `prompt + new` slots."""
    prefill = forward_flops(config, rows, prompt)
    decode = forward_flops(config, rows, 1, context=prompt + new) * max(steps - 1, 0)
    return prefill + decode
