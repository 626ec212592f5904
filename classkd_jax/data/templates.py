"""Prompt templates of the MiniLLM/DistiLLM evaluation protocol.

The 'alpaca' strings are exactly those of MiniLLM's `tools/process_data_dolly.py`
(see docs/baselines.md). 'compact' keeps Alpaca's section headers but drops
the one-sentence preamble; it is meant for the built-in synthetic task, where
the preamble would be most of every CPU-sized sequence.
"""

from __future__ import annotations

ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
COMPACT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"
COMPACT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"

# name -> (template without input, template with input)
TEMPLATES: dict[str, tuple[str, str]] = {
    "alpaca": (ALPACA_NO_INPUT, ALPACA_WITH_INPUT),
    "compact": (COMPACT_NO_INPUT, COMPACT_WITH_INPUT),
}

# MiniLLM's processed files may store a newline as this marker.
NEWLINE_MARKER = "<n>"


def format_prompt(instruction: str, input: str = "", template: str = "alpaca") -> str:  # noqa: A002
    """Formats one instruction (and optional input) as a prompt string.

    As in MiniLLM, an empty `input` (length 0) selects the no-input variant.

    Args:
      instruction: the task instruction.
      input: the optional context; '' for none.
      template: a key of `TEMPLATES` ('alpaca' or 'compact').

    Returns:
      The prompt, ending in "### Response:\\n"; the response follows directly.
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; known: {sorted(TEMPLATES)}")
    no_input, with_input = TEMPLATES[template]
    if not input:
        return no_input.format(instruction=instruction)
    return with_input.format(instruction=instruction, input=input)


def decode_newlines(text: str) -> str:
    """Replaces MiniLLM's '<n>' newline marker with a newline."""
    return text.replace(NEWLINE_MARKER, "\n")
