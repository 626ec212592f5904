"""Builds the shipped tokenizer of the synthetic task, reproducibly.

    python -m classkd_jax.data.build_tokenizer [--out DIR] [--vocab_size N]

A byte-level BPE (GPT-2 style, so any text round-trips) trained with
`tokenizers` on the synthetic task's train and dev splits (seed 0), each
formatted with every prompt template and followed by its response. Digits are
split into single-digit tokens before BPE, so numbers are spelled digit by
digit. Special tokens: `<pad>` = 0, `<bos>` = 1, `<eos>` = 2. No special token
is added by `encode`: the data pipeline appends EOS to responses itself.
The result is a Hugging Face tokenizer directory that
`transformers.AutoTokenizer.from_pretrained` loads offline.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from classkd_jax.data import synthetic, templates

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
# 512 (not 1024) so that most list words span several tokens: with one token per
# word, reversing a list is a token-level copy that a 0.2 M-parameter model
# solves almost perfectly in 1500 steps (measured), leaving no gap to distil.
DEFAULT_VOCAB_SIZE = 512
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "assets" / "synthetic_tokenizer"


def training_corpus(seed: int = 0) -> Iterator[str]:
    """The synthetic train+dev texts, once per prompt template."""
    splits = synthetic.make_synthetic_task(seed)
    for template in sorted(templates.TEMPLATES):
        for example in splits["train"] + splits["dev"]:
            prompt = templates.format_prompt(example.instruction, example.input, template)
            yield prompt + example.response


def train_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = 0) -> Tokenizer:
    """Trains the byte-level BPE; deterministic for a given corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(seed), trainer=trainer)
    return tok


def save_hf_tokenizer(tok: Tokenizer, out: str | Path) -> Path:
    """Saves `tok` as a Hugging Face tokenizer directory."""
    from transformers import PreTrainedTokenizerFast  # deferred: heavy import

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB_SIZE)
    args = parser.parse_args(argv)
    out = save_hf_tokenizer(train_tokenizer(args.vocab_size), args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
