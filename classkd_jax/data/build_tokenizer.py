"""Builds the shipped tokenizers of the synthetic task, reproducibly.

    python -m classkd_jax.data.build_tokenizer [--kind bytelevel|sentencepiece|sentencepiece_words]
        [--out DIR] [--vocab_size N]

A byte-level BPE (GPT-2 style, so any text round-trips) trained with
`tokenizers` on the synthetic task's train and dev splits (seed 0), each
formatted with every prompt template and followed by its response. Digits are
split into single-digit tokens before BPE, so numbers are spelled digit by
digit. Special tokens: `<pad>` = 0, `<bos>` = 1, `<eos>` = 2. No special token
is added by `encode`: the data pipeline appends EOS to responses itself.
The result is a Hugging Face tokenizer directory that
`transformers.AutoTokenizer.from_pretrained` loads offline.

`--kind sentencepiece` builds the second one, for the cross-tokenizer testbed
(a teacher whose tokenizer is not the student's, docs/testbed.md): a
SentencePiece-style BPE of 768 entries on the same corpus, with byte fallback
and whitespace not a boundary (SentencePiece's `split_by_whitespace=false`).
Spaces become `▁`, nothing is prepended (so a prompt and its response encode
apart and concatenate back), pieces run across words and usually end in the
space after one ("from▁last▁", "market▁" where the byte-level BPE has
"Ġmarket"), digits are not split, and a character outside the vocabulary
falls back to its UTF-8 bytes, the 256 pieces `<0x00>`..`<0xFF>` (ids 3-258,
ordinary entries, not special tokens), so any text round-trips. Same special
tokens and ids. Its token boundaries cross the byte-level BPE's rather than
coarsen them: in the task's answers about 40 % of its boundaries are not
the BPE's.

`--kind sentencepiece_words` builds the third, the same but with whitespace
a boundary (SentencePiece's default, as in Llama 2 and Gemma): a piece never
holds a space except a leading `▁`, so the two tokenizers share every word
boundary (`▁market` against `Ġmarket`) and differ only inside words, at
punctuation (which it keeps on the word: `lives.`) and at numbers (not split
into digits). That is the usual case of two real families; the
`sentencepiece` kind is the hard one.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from classkd_jax.data import synthetic, templates

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
# 512 (not 1024) so that most list words span several tokens: with one token per
# word, reversing a list is a token-level copy that a 0.2 M-parameter model
# solves almost perfectly in 1500 steps (measured), leaving no gap to distil.
DEFAULT_VOCAB_SIZE = 512
ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_OUT = ASSETS / "synthetic_tokenizer"
# The second tokenizer (--kind sentencepiece): a larger vocabulary, so its pieces
# and the byte-level one's rarely coincide beyond single characters.
SP_VOCAB_SIZE = 768
SP_OUT = ASSETS / "synthetic_tokenizer_sp"
SP_MAX_PIECE = 12  # characters
SPW_OUT = ASSETS / "synthetic_tokenizer_spw"  # --kind sentencepiece_words
BYTE_PIECES = tuple(f"<0x{b:02X}>" for b in range(256))


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


def train_sentencepiece(
    vocab_size: int = SP_VOCAB_SIZE, seed: int = 0, split_words: bool = False
) -> Tokenizer:
    """Trains the SentencePiece-style BPE with byte fallback; deterministic.

    split_words=False: whitespace is not a boundary, so pieces span words
    ("from▁last▁"); True: a space starts a new piece ("▁last"), as in
    SentencePiece's default.
    """
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="never", split=split_words
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[*SPECIAL_TOKENS, *BYTE_PIECES],
        max_token_length=SP_MAX_PIECE,
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(seed), trainer=trainer)
    # The trainer registers the byte pieces as special (added) tokens; they are
    # ordinary vocabulary entries that byte fallback emits, so decoding must keep them.
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in SPECIAL_TOKENS]
    return Tokenizer.from_str(json.dumps(spec))


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


KINDS = ("bytelevel", "sentencepiece", "sentencepiece_words")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="bytelevel", choices=KINDS)
    parser.add_argument("--out", default="", help="default: the kind's shipped directory")
    parser.add_argument("--vocab_size", type=int, default=0, help="default: the kind's")
    args = parser.parse_args(argv)
    if args.kind.startswith("sentencepiece"):
        words = args.kind == "sentencepiece_words"
        tok = train_sentencepiece(args.vocab_size or SP_VOCAB_SIZE, split_words=words)
        out = SPW_OUT if words else SP_OUT
    else:
        tok, out = train_tokenizer(args.vocab_size or DEFAULT_VOCAB_SIZE), DEFAULT_OUT
    out = save_hf_tokenizer(tok, args.out or out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
