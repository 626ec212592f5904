"""A built-in synthetic instruction-following task, generated from a seed.

Built to have the properties that make distillation matter on real
instruction data (docs/testbed.md says what was measured):

- **Several valid answers.** Every prompt has a set of correct responses
  (orders of facts, list styles, short or full-sentence answers). The dev and
  test splits keep all of them as references (ROUGE-L and exact match take the
  best), as the protocol does where S-NI and UnNI give several references.
- **Imperfect references.** A train example carries one response only: one of
  the valid forms drawn at random (stylistically arbitrary) and, with
  probability `noise`, a wrong one (a dropped or swapped item, a confused
  value, the unreversed list), as human references are.
- **Long enough to compound.** `describe` answers run to about 40 tokens, and
  a wrong early clause or word changes what follows.
- **A teacher that knows more.** The shipped teacher reads the 20000-example
  train split; a distillation run reads its first `num_train` examples (the
  demo: 2000, seen for several epochs), where SFT meets each reference's noise
  and arbitrary form many times.

Families:
- `describe`: everything a passage of 2-3 people's facts says about one of
  them (2-3 clauses: age, home, a coloured object), in any clause order, as
  one sentence or one sentence a fact.
- `reverse`: 4-8 words in reverse order (plain, comma-separated, or "From
  last to first: ...").
- `qa`: one fact from the passage, as the bare value or a full sentence.
- `filter`: the words of a list that are animals / tools / foods, in order
  (plain, as an English list, or "The animals are ...").
- `position`: the n-th (or last) word of a list, bare or as a sentence.

Every answer differs from the prompt's data in words or their order, never
only in case or punctuation, so the case- and punctuation-insensitive metrics
see it. Splits never share content: each example has a content key (the word
list, or the passage and question), and a key drawn for the test split is
never drawn again for dev or train. Test is generated first, so its content
depends only on the seed and its own size; the first N train examples are the
same for every `num_train` >= N.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from classkd_jax.data import sources, templates
from classkd_jax.data import synthetic_words as W

DEFAULT_WEIGHTS: dict[str, float] = {
    "describe": 0.3,
    "reverse": 0.25,
    "qa": 0.2,
    "filter": 0.15,
    "position": 0.1,
}
DEFAULT_SIZES = {"train": 20000, "dev": 500, "test": 1000}
# The share of train references that are wrong (dev and test are always right).
DEFAULT_NOISE = 0.2
# Alpaca's section headers without its preamble: the preamble would be about
# half of every CPU-sized sequence. Train and evaluate with the same template.
DEFAULT_TEMPLATE = "compact"


@dataclasses.dataclass(frozen=True)
class Generated:
    """What a family draws: the content key, the prompt, every valid response
    (the canonical one first) and a maker of plausible wrong responses."""

    key: tuple
    instruction: str
    input: str
    forms: tuple[str, ...]
    wrong: Callable[[random.Random], str]


def _words(rng: random.Random, lo: int, hi: int) -> list[str]:
    return rng.sample(W.WORDS, rng.randint(lo, hi))


def _inline_or_input(rng: random.Random, lead: str, data: str, end: str = ".") -> tuple[str, str]:
    """Puts the data after the instruction (then `end`) or in the input field, at random."""
    if rng.random() < 0.5:
        return f"{lead}: {data}{end if end == '?' else ''}", ""
    return f"{lead}{end}", data


def _english_list(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _list_mistake(rng: random.Random, items: list[str]) -> list[str]:
    """One slip in a list: an item dropped, two neighbours swapped, or one replaced."""
    out = list(items)
    kind = rng.randrange(3) if len(out) > 1 else 2
    i = rng.randrange(len(out))
    if kind == 0:
        del out[i]
    elif kind == 1:
        j = i + 1 if i < len(out) - 1 else i - 1
        out[i], out[j] = out[j], out[i]
    else:
        out[i] = rng.choice([w for w in W.WORDS if w not in out])
    return out


def _reverse(rng: random.Random) -> Generated:
    words = _words(rng, 4, 8)
    lead = rng.choice(
        [
            "Reverse the order of these words",
            "Write the following words in reverse order",
            "List these words from last to first",
        ]
    )
    instruction, inp = _inline_or_input(rng, lead, " ".join(words))

    def render(items: Sequence[str], style: int) -> str:
        return (" ".join(items), ", ".join(items), "From last to first: " + ", ".join(items))[style]

    rev = words[::-1]

    def wrong(r: random.Random) -> str:
        slipped = words if r.random() < 0.25 else _list_mistake(r, rev)  # or not reversed at all
        return render(slipped, r.randrange(3))

    forms = tuple(render(rev, s) for s in range(3))
    return Generated(("reverse", tuple(words)), instruction, inp, forms, wrong)


def _position(rng: random.Random) -> Generated:
    words = _words(rng, 3, 6)
    k = rng.randrange(len(words) + 1)  # len(words) means 'last'
    which = "last" if k == len(words) else W.ORDINALS[k]
    index = len(words) - 1 if k == len(words) else k
    lead = rng.choice(
        [f"What is the {which} word in this list", f"Give the {which} word of the list"]
    )
    end = "?" if lead.startswith("What") else "."
    instruction, inp = _inline_or_input(rng, lead, " ".join(words), end)

    def render(word: str, style: int) -> str:
        return (word, f"The {which} word is {word}.")[style]

    def wrong(r: random.Random) -> str:
        near = [j for j in (index - 1, index + 1) if 0 <= j < len(words)]
        return render(words[r.choice(near)], r.randrange(2))

    forms = tuple(render(words[index], s) for s in range(2))
    return Generated(("position", tuple(words), which), instruction, inp, forms, wrong)


def _filter(rng: random.Random) -> Generated:
    category = rng.choice(sorted(W.CATEGORIES))
    members = set(W.CATEGORIES[category])
    chosen = rng.sample(W.CATEGORIES[category], rng.randint(1, 3))
    others = [w for w in W.WORDS if w not in members]
    words = chosen + rng.sample(others, rng.randint(2, 4))
    rng.shuffle(words)
    lead = rng.choice(
        [f"Which of these words are {category}", f"Pick out the {category} from this list"]
    )
    end = "?" if lead.startswith("Which") else "."
    instruction, inp = _inline_or_input(rng, lead, " ".join(words), end)
    answer = [w for w in words if w in members]

    def render(items: Sequence[str], style: int) -> str:
        return (
            " ".join(items),
            _english_list(items),
            f"The {category} are {_english_list(items)}.",
        )[style]

    def wrong(r: random.Random) -> str:
        slipped = list(answer)
        if len(slipped) > 1 and r.random() < 0.5:
            del slipped[r.randrange(len(slipped))]
        else:  # a word that is not one of them, in its place in the list
            extra = r.choice([w for w in words if w not in members])
            slipped = [w for w in words if w in members or w == extra]
        return render(slipped, r.randrange(3))

    forms = tuple(render(answer, s) for s in range(3))
    return Generated(("filter", category, tuple(words)), instruction, inp, forms, wrong)


def _people(rng: random.Random, target_facts: int) -> tuple[str, dict[str, dict], list[tuple]]:
    """2-3 people with 1-2 facts each (the first, the target, has `target_facts`);
    returns the target, each person's facts and the passage's facts in order."""
    names = rng.sample(W.NAMES, rng.randint(2, 3))
    people: dict[str, dict] = {}
    passage: list[tuple] = []
    for i, name in enumerate(names):
        kinds = rng.sample(("age", "home", "thing"), target_facts if i == 0 else rng.randint(1, 2))
        facts = {}
        for kind in kinds:
            if kind == "age":
                facts[kind] = str(rng.randint(5, 90))
            elif kind == "home":
                facts[kind] = rng.choice(W.PLACES)
            else:
                facts[kind] = (rng.choice(W.COLOURS), rng.choice(W.OBJECTS))
            passage.append((name, kind))
        people[name] = facts
    rng.shuffle(passage)
    return names[0], people, passage


def _clause(kind: str, value) -> str:
    if kind == "age":
        return f"is {value} years old"
    if kind == "home":
        return f"lives in {value}"
    article = "an" if value[0][0] in "aeiou" else "a"
    return f"has {article} {value[0]} {value[1]}"


def _passage(people: dict[str, dict], passage: list[tuple]) -> str:
    return " ".join(f"{n} {_clause(k, people[n][k])}." for n, k in passage)


def _other_value(rng: random.Random, kind: str, value, people: dict[str, dict]):
    """A confusable value of the same kind: another person's if the passage has one."""
    seen = [f[kind] for f in people.values() if kind in f and f[kind] != value]
    if seen and rng.random() < 0.7:
        return rng.choice(seen)
    while True:
        if kind == "age":
            other = str(rng.randint(5, 90))
        elif kind == "home":
            other = rng.choice(W.PLACES)
        else:
            other = (rng.choice(W.COLOURS), value[1])
        if other != value:
            return other


def _describe(rng: random.Random) -> Generated:
    name, people, passage = _people(rng, rng.randint(2, 3))
    facts = people[name]
    order = [k for n, k in passage if n == name]  # the passage's order: the canonical one
    lead = rng.choice(
        [
            f"Describe {name} using the text.",
            f"What does the passage say about {name}?",
            f"Tell me everything the text says about {name}.",
        ]
    )

    def render(kinds: Sequence[str], values: dict, style: int) -> str:
        clauses = [_clause(k, values[k]) for k in kinds]
        if style == 0:
            return f"{name} {_english_list(clauses)}."
        return " ".join(f"{name} {c}." for c in clauses)

    forms = tuple(render(p, facts, s) for p in itertools.permutations(order) for s in range(2))

    def wrong(r: random.Random) -> str:
        kinds = r.sample(order, len(order))
        values = dict(facts)
        if r.random() < 0.5:
            del kinds[r.randrange(len(kinds))]
        else:
            k = r.choice(kinds)
            values[k] = _other_value(r, k, facts[k], people)
        return render(kinds, values, r.randrange(2))

    context = _passage(people, passage)
    return Generated(("describe", context, name), lead, context, forms, wrong)


def _qa(rng: random.Random) -> Generated:
    name, people, passage = _people(rng, rng.randint(1, 3))
    kind = rng.choice(sorted(people[name]))
    value = people[name][kind]
    if kind == "thing" and rng.random() < 0.5:
        question, kind = f"What colour is {name}'s {value[1]}?", "colour"
    else:
        question = {
            "age": f"How old is {name}?",
            "home": f"Where does {name} live?",
            "thing": f"What does {name} have?",
        }[kind]

    def render(v, style: int) -> str:
        if kind == "colour":
            return (v[0], f"{name}'s {v[1]} is {v[0]}.")[style]
        short = _clause(kind, v).removeprefix("has ") if kind == "thing" else v
        return (short, f"{name} {_clause(kind, v)}.")[style]

    def wrong(r: random.Random) -> str:
        fact_kind = "thing" if kind == "colour" else kind
        return render(_other_value(r, fact_kind, value, people), r.randrange(2))

    lead = rng.choice(["Answer the question using the text.", "Read the passage and answer:"])
    context = _passage(people, passage)
    forms = tuple(render(value, s) for s in range(2))
    return Generated(("qa", context, question), f"{lead} {question}", context, forms, wrong)


FAMILIES: dict[str, Callable[[random.Random], Generated]] = {
    "describe": _describe,
    "reverse": _reverse,
    "qa": _qa,
    "filter": _filter,
    "position": _position,
}


def _check_args(sizes: dict[str, int], weights: dict[str, float], noise: float) -> None:
    unknown = set(weights) - set(FAMILIES)
    if unknown:
        raise ValueError(
            f"unknown synthetic family(ies) {sorted(unknown)}; known: {sorted(FAMILIES)}"
        )
    if not any(w > 0 for w in weights.values()):
        raise ValueError(f"family weights must have a positive entry, got {weights}")
    bad = {k: v for k, v in sizes.items() if k not in DEFAULT_SIZES or v < 0}
    if bad:
        raise ValueError(f"bad split sizes {bad}; expected non-negative {sorted(DEFAULT_SIZES)}")
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"data.synthetic.noise={noise}; expected 0 <= noise < 1")


def make_synthetic_task(
    seed: int = 0,
    *,
    num_train: int = DEFAULT_SIZES["train"],
    num_dev: int = DEFAULT_SIZES["dev"],
    num_test: int = DEFAULT_SIZES["test"],
    weights: dict[str, float] | None = None,
    noise: float = DEFAULT_NOISE,
) -> dict[str, list[sources.Example]]:
    """Generates the task's splits deterministically from `seed`.

    Args:
      seed: the only source of randomness.
      num_train, num_dev, num_test: split sizes (test >= 600 keeps exact-match
        noise near 1.8 points).
      weights: family -> sampling weight (default `DEFAULT_WEIGHTS`).
      noise: the probability that a train example's one reference is wrong.

    Returns:
      {'train', 'dev', 'test'} -> examples; uids are 'synthetic/{split}/{i}'
      and `category` is the family name. A train example has one response (a
      valid form drawn at random, or with probability `noise` a wrong one);
      a dev or test example has every valid form, the canonical one first.
    """
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    sizes = {"test": num_test, "dev": num_dev, "train": num_train}
    _check_args(sizes, weights, noise)
    names = sorted(weights)
    rng = random.Random(seed)
    seen: set[tuple] = set()
    splits: dict[str, list[sources.Example]] = {}
    for split in ("test", "dev", "train"):  # test first: independent of the others' sizes
        out: list[sources.Example] = []
        attempts = 0
        while len(out) < sizes[split]:
            attempts += 1
            if attempts > 50 * sizes[split] + 1000:
                raise RuntimeError(
                    f"synthetic task: cannot draw {sizes[split]} unique {split} examples"
                )
            family = rng.choices(names, weights=[weights[n] for n in names])[0]
            g = FAMILIES[family](rng)
            if g.key in seen:
                continue
            seen.add(g.key)
            if split == "train":
                responses = (g.wrong(rng) if rng.random() < noise else rng.choice(g.forms),)
            else:  # every distinct valid form (a one-item list is the same in two styles)
                responses = tuple(dict.fromkeys(g.forms))
            uid = f"synthetic/{split}/{len(out)}"
            out.append(sources.Example(uid, g.instruction, g.input, responses, family))
        splits[split] = out
    return {k: splits[k] for k in ("train", "dev", "test")}


def dolly_record(example: sources.Example) -> dict[str, str]:
    """An example in Dolly's release schema."""
    return {
        "instruction": example.instruction,
        "context": example.input,
        "response": example.response,
        "category": example.category,
    }


def minillm_record(example: sources.Example, template: str | None = None) -> dict:
    """An example in MiniLLM's schema (`prompt` added when a template is given)."""
    record = {"instruction": example.instruction, "input": example.input}
    if template is not None:
        record["prompt"] = templates.format_prompt(example.instruction, example.input, template)
    record["output"] = list(example.responses) if len(example.responses) > 1 else example.response
    record["category"] = example.category
    return record


def write_dolly_jsonl(path: str | os.PathLike, examples: Sequence[sources.Example]) -> Path:
    """Writes examples as JSONL in Dolly's schema (instruction, context, response, category)."""
    return sources.write_jsonl(path, (dolly_record(e) for e in examples))


def write_synthetic_data_dir(
    data_dir: str | os.PathLike,
    seed: int = 0,
    *,
    template: str = DEFAULT_TEMPLATE,
    **task_kwargs,
) -> Path:
    """Writes the task in the MiniLLM data layout under `data_dir/synthetic/`.

    Files: `raw.jsonl` (dev then train, MiniLLM schema; the first `dev_num`
    lines are dev, as with Dolly), `valid.jsonl` (test, with the `prompt`
    formatted with `template`), `meta.json` (seed, sizes, dev_num), and the
    splits in Dolly's schema as `dolly_{train,dev,test}.jsonl`.
    `benchmarks.load_eval_set(data_dir, 'synthetic')` reads it.

    Returns:
      The `data_dir/synthetic` directory.
    """
    splits = make_synthetic_task(seed, **task_kwargs)
    out = Path(data_dir) / "synthetic"
    raw = splits["dev"] + splits["train"]
    sources.write_jsonl(out / "raw.jsonl", (minillm_record(e) for e in raw))
    sources.write_jsonl(out / "valid.jsonl", (minillm_record(e, template) for e in splits["test"]))
    for split, examples in splits.items():
        write_dolly_jsonl(out / f"dolly_{split}.jsonl", examples)
    meta = {
        "seed": seed,
        "template": template,
        "dev_num": len(splits["dev"]),
        "sizes": {k: len(v) for k, v in splits.items()},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def synthetic_tokenizer_path() -> Path:
    """The shipped tokenizer of the task (load with `transformers.AutoTokenizer`)."""
    path = Path(__file__).resolve().parent.parent / "assets" / "synthetic_tokenizer"
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"synthetic tokenizer missing at {path}; rebuild it with "
            "`python -m classkd_jax.data.build_tokenizer`"
        )
    return path
