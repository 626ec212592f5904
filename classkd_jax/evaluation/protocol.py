"""The generation and scoring settings of the published comparison.

MiniLLM and DistiLLM evaluate with HF `generate`: prompts left-padded to 256
tokens, total length 512 (so at most 256 new tokens), sampling at temperature
1 with top-k and top-p off, `no_repeat_ngram_size=6` at final evaluation only,
seeds 10, 20, 30, 40, 50, and Unnatural Instructions capped at its first
10,000 test examples (`--dev-num 10000` in their scripts). See
`docs/baselines.md`, "The evaluation protocol".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# Benchmark keys in the published table's column order, with its headers.
BENCHMARK_ORDER: tuple[str, ...] = ("dolly", "self_inst", "vicuna", "sinst", "uinst")
BENCHMARK_TITLES: dict[str, str] = {
    "dolly": "Dolly",
    "self_inst": "Self-inst",
    "vicuna": "Vicuna",
    "sinst": "Super-Natural",
    "uinst": "Unnatural",
}


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """How completions are generated and how many examples are scored.

    Attributes:
      max_prompt_length: prompts are left-padded (and limited) to this many tokens.
      max_new_tokens: generation budget; 512 total - 256 prompt in the protocol.
      greedy: argmax decoding instead of sampling (ignores the sampling knobs).
      temperature, top_k, top_p: sampling knobs; 0 / 1.0 switch top-k / top-p off.
      no_repeat_ngram_size: HF-style n-gram blocking, 0 = off.
      seeds: one full generation pass per seed; the table reports mean and std.
      template: prompt template name passed to the data loader.
      max_examples: per-benchmark cap on the number of test examples (first N).
      batch_size: prompts per sampler call.
      chunk_size: examples generated between two writes of the per-seed results;
        each chunk gets its own seed, so an interrupted run resumes exactly.
    """

    max_prompt_length: int = 256
    max_new_tokens: int = 256
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    no_repeat_ngram_size: int = 6
    seeds: tuple[int, ...] = (10, 20, 30, 40, 50)
    template: str = "alpaca"
    max_examples: tuple[tuple[str, int], ...] = (("uinst", 10_000),)
    batch_size: int = 16
    chunk_size: int = 256

    def __post_init__(self):
        checks = {
            "max_prompt_length": self.max_prompt_length > 0,
            "max_new_tokens": self.max_new_tokens > 0,
            "temperature": self.temperature > 0,
            "top_k": self.top_k >= 0,
            "top_p": 0 < self.top_p <= 1,
            "no_repeat_ngram_size": self.no_repeat_ngram_size >= 0,
            "seeds": len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds),
            "batch_size": self.batch_size > 0,
            "chunk_size": self.chunk_size > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"EvalProtocol.{name}={getattr(self, name)!r} is invalid")

    def max_examples_for(self, benchmark: str) -> int | None:
        """The cap on `benchmark`'s test examples, or None for all of them."""
        return dict(self.max_examples).get(benchmark)

    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `classkd_jax.generate.generate_completions`."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "greedy": self.greedy,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "batch_size": self.batch_size,
            "max_prompt_length": self.max_prompt_length,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        d["max_examples"] = dict(self.max_examples)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalProtocol:
        """Inverse of `to_dict`; also accepts a ConfigDict. Unknown keys are errors."""
        d = dict(d.items())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown EvalProtocol keys {unknown}; known: {sorted(known)}")
        if "seeds" in d:
            d["seeds"] = tuple(int(s) for s in d["seeds"])
        if "max_examples" in d:
            me = d["max_examples"]
            items = me.items() if hasattr(me, "items") else me  # dict or ConfigDict
            d["max_examples"] = tuple((str(k), int(v)) for k, v in items)
        return cls(**d)


# The final evaluation of the published table.
FINAL = EvalProtocol()
# Periodic validation during training: same sampling, no n-gram blocking
# (the protocol applies it "at final evaluation only"), one seed.
VALIDATION = dataclasses.replace(FINAL, no_repeat_ngram_size=0, seeds=(10,))
