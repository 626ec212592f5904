"""ROUGE-L / exact match against rouge-score and hand derivations; tables; resume."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random

import pytest
from rouge_score import rouge_scorer

from classkd_jax.evaluation import (
    EvalProtocol,
    chunk_seed,
    compute_metrics,
    evaluate_predictions,
    evaluate_with_generate,
    exact_match,
    load_predictions,
    load_results,
    normalize_answer,
    report,
    rouge_l,
    rouge_l_per_example,
    run_evaluation,
)
from classkd_jax.evaluation.runner import predictions_path, scores_path

# Tricky strings: punctuation, case, stemming, empty/whitespace prediction, multiple
# references, non-ASCII (dropped by rouge-score's default tokenizer), digits, newlines.
TRICKY = [
    ("The cat sat.", ["the cat sat on the mat"]),
    ("THE CAT, SAT!!!", ["The cat sat on the mat."]),
    ("Running dogs ran quickly", ["The dog runs quick.", "dogs running"]),
    ("", ["a reference"]),
    ("   \n\t ", ["a reference", "another one"]),
    ("Paris is the capital of France.", ["London", "Paris.", "It's Paris, France"]),
    ("café résumé naïve", ["cafe resume naive"]),
    ("日本語のテキスト", ["日本語のテキスト"]),
    ("Zürich is in Switzerland", ["Zurich, Switzerland", "zürich"]),
    ("e-mail me at foo@bar.com", ["email me at foo bar com"]),
    (
        "1. Mix flour\n2. Add eggs\n3. Bake 20 min",
        ["Mix the flour, add 2 eggs, bake for 20 minutes."],
    ),
    ("don't stop-believing", ["Don’t stop believing"]),
    ("a a a a", ["a"]),
]


def _reference_rouge_l(preds, refs):
    """The published metric written directly against rouge-score."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    per = [
        max(scorer.score(r, p)["rougeL"].fmeasure for r in rs)
        for p, rs in zip(preds, refs, strict=True)
    ]
    return 100.0 * sum(per) / len(per), per


def test_rouge_l_equals_rouge_score_on_tricky_strings():
    preds = [p for p, _ in TRICKY]
    refs = [r for _, r in TRICKY]
    expected, per = _reference_rouge_l(preds, refs)
    assert rouge_l(preds, refs) == pytest.approx(expected, abs=1e-12)
    assert rouge_l_per_example(preds, refs) == per  # bit-identical
    # score_multi (rouge-score's own max over targets) agrees too.
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    multi = [scorer.score_multi(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)]
    assert rouge_l_per_example(preds, refs) == pytest.approx(multi, abs=1e-12)
    for i, (p, r) in enumerate(TRICKY):  # each example on its own
        assert rouge_l([p], [r]) == pytest.approx(100 * per[i], abs=1e-12), (p, r)


def test_rouge_l_equals_rouge_score_on_random_texts():
    """Bit-parallel LCS and memoised stems change nothing: exact equality, 400 cases."""
    rng = random.Random(0)
    vocab = ["the", "The", "cats", "cat", "running", "run", "a", "ünï", "x1", "42", "Cat."]
    vocab += ["", ",", "!", "-", "\n", "jumped", "jumping", "über", "日本"]

    def text():
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 70)))

    preds = [text() for _ in range(400)]
    refs = [[text() for _ in range(rng.randint(1, 3))] for _ in preds]
    _, expected = _reference_rouge_l(preds, refs)
    assert rouge_l_per_example(preds, refs) == expected  # exact, not approx


@pytest.mark.parametrize(
    "pred, refs, expected",
    [
        # LCS 3 of |pred| 3, |ref| 6: P=1, R=1/2, F=2/3.
        ("The cat sat.", ["the cat sat on the mat"], 200 / 3),
        # Case and punctuation vanish in tokenisation.
        ("THE CAT, SAT!!!", ["the cat sat"], 100.0),
        # Porter stemming of tokens longer than 3 chars: running->run, dogs->dog.
        ("running dogs", ["run dog"], 100.0),
        # Max over references, not mean: the second matches exactly.
        ("paris", ["london", "Paris."], 100.0),
        ("", ["anything"], 0.0),
        # Non-ASCII letters are separators: "café"->"caf", "naïve"->"na ve".
        ("café", ["caf"], 100.0),
        ("日本語", ["日本語"], 0.0),
        # LCS 1 of |pred| 4, |ref| 1: P=1/4, R=1, F=2/5.
        ("a a a a", ["a"], 40.0),
    ],
)
def test_rouge_l_hand_derived(pred, refs, expected):
    assert rouge_l([pred], [refs]) == pytest.approx(expected, abs=1e-9)


def test_rouge_l_custom_tokenizer():
    class Whitespace:
        def tokenize(self, text):
            return text.split()

    assert rouge_l(["日本 語"], [["日本 語"]]) == 0.0  # the protocol's tokenizer: no tokens
    assert rouge_l(["日本 語"], [["日本 語"]], tokenizer=Whitespace()) == 100.0


def test_rouge_l_is_mean_over_examples():
    assert rouge_l(["a b", "x"], [["a b"], ["y"]]) == pytest.approx(50.0)


def test_exact_match_squad_style_without_article_removal():
    assert normalize_answer("  The  Answer!\n") == "the answer"
    assert exact_match(["The Answer!"], [["the answer"]]) == 100.0
    assert exact_match(["an apple"], [["apple"]]) == 0.0  # S-NI keeps articles
    assert exact_match(["x", "Yes."], [["y", "x"], ["no", "yes"]]) == 100.0
    assert compute_metrics(["b"], [["a", "b"]]) == {"rougeL": 100.0, "exact_match": 100.0}


def test_metric_input_errors_are_clear():
    with pytest.raises(ValueError, match="2 predictions but 1 reference"):
        rouge_l(["a", "b"], [["a"]])
    with pytest.raises(TypeError, match=r"references\[0\] is str"):
        rouge_l(["a"], ["a"])
    with pytest.raises(ValueError, match=r"references\[1\] is empty"):
        rouge_l(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match="empty list"):
        rouge_l([], [])


# ---------------------------------------------------------------------------
# Reports


def _res(values_by_bench):
    return {
        b: {s: {"rougeL": v, "exact_match": v / 10, "n": 3} for s, v in per.items()}
        for b, per in values_by_bench.items()
    }


FIVE = ["dolly", "self_inst", "vicuna", "sinst", "uinst"]


def test_markdown_table_layout_mean_std_and_avg():
    # Two seeds per benchmark: b-th benchmark scores (10b, 10b + 2).
    run = _res({b: {10: 10.0 * i, 20: 10.0 * i + 2} for i, b in enumerate(FIVE, 1)})
    table = report.markdown_table({"ours": run})
    header, rule, row = table.splitlines()[:3]
    assert header == "| Models | Dolly | Self-inst | Vicuna | Super-Natural | Unnatural | AVG |"
    assert rule.count("|") == 8
    cells = [c.strip() for c in row.strip("|").split("|")]
    sd = math.sqrt(2.0)  # sample std of {x, x+2}
    assert cells[0] == "ours"
    assert cells[1] == f"11.00 ± {sd:.2f}"
    assert cells[5] == f"51.00 ± {sd:.2f}"
    # AVG mean = mean of the column means = (11+21+31+41+51)/5; per-seed AVGs are 30, 32.
    assert cells[6] == f"31.00 ± {sd:.2f}"
    assert "seeds 10, 20" in table


def test_published_avg_is_mean_of_columns():
    # The write-up's GKD row: 23.75 12.73 16.64 26.05 27.70 -> AVG 21.37.
    row = dict(zip(FIVE, [23.75, 12.73, 16.64, 26.05, 27.70], strict=True))
    summary = report.summarize(_res({b: {10: v} for b, v in row.items()}), FIVE)
    assert round(summary["avg"]["mean"], 2) == 21.37
    assert math.isnan(summary["avg"]["std"])  # one seed: no std


def test_table_compare_bolds_best_and_handles_missing():
    a = _res({"dolly": {10: 20.0}, "vicuna": {10: 5.0}})
    b = _res({"dolly": {10: 25.0}})
    lines = report.markdown_table({"a": a, "b": b}).splitlines()
    assert lines[0] == "| Models | Dolly | Vicuna | AVG |"
    assert lines[2] == "| a | 20.00 | **5.00** | **12.50** |"
    assert lines[3] == "| b | **25.00** | – | – |"


def test_write_reports_files(tmp_path):
    run = _res({"dolly": {10: 20.0, 20: 22.0}, "vicuna": {10: 5.0, 20: 7.0}})
    other = _res({"dolly": {10: 8.0, 20: 10.0}, "vicuna": {10: 15.0, 20: 17.0}})
    rec = {"uid": "dolly/test/0", "rougeL": 50.0, "exact_match": 0.0}
    preds = {"dolly": {10: [{**rec, "prediction": 'héllo, "x"\ny', "references": ["a", "b"]}]}}
    paths = report.write_reports(tmp_path, {"ours": run, "base": other}, {"ours": preds})
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text())
    assert data["predictions"]["dolly"]["10"][0]["prediction"] == 'héllo, "x"\ny'
    assert data["summary"]["rougeL"]["dolly"]["mean"] == pytest.approx(21.0)
    with paths["predictions_csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["prediction"] == 'héllo, "x"\ny'
    assert json.loads(rows[0]["references"]) == ["a", "b"]
    with paths["scores_csv"].open() as f:
        rows = list(csv.DictReader(f))
    means = {(r["run"], r["benchmark"]): r["rougeL"] for r in rows if r["seed"] == "mean"}
    assert means[("ours", "avg")] == "13.5000" and means[("base", "dolly")] == "9.0000"
    assert (
        "| ours | **21.00 ± 1.41** | 6.00 ± 1.41 | **13.50 ± 1.41** |" in paths["table"].read_text()
    )


# ---------------------------------------------------------------------------
# Runner: scoring, per-seed files, resume (with an injected generate function)


@dataclasses.dataclass(frozen=True)
class Ex:
    uid: str
    prompt: str
    references: list[str]


def _examples(name, n):
    return [
        Ex(f"{name}/test/{i}", f"prompt {name} {i}", [f"answer {i}", f"alt {i} x"])
        for i in range(n)
    ]


class FakeGenerate:
    """Answers right on even (seed + index), wrong otherwise; can fail after N calls."""

    def __init__(self, fail_after=None):
        self.calls = []
        self.fail_after = fail_after

    def __call__(self, prompts, *, seed, **kwargs):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append((tuple(prompts), seed, kwargs))
        out = []
        for p in prompts:
            i = int(p.split()[-1])
            out.append(f"answer {i}" if (seed + i) % 2 == 0 else f"wrong {seed}")
        return out


PROTO = EvalProtocol(seeds=(10, 21), chunk_size=3, batch_size=2, max_new_tokens=8)


def test_evaluate_predictions_matches_metric():
    exs = _examples("dolly", 4)
    preds = ["answer 0", "nope", "alt 2", "answer"]
    m = evaluate_predictions(exs, preds)
    refs = [e.references for e in exs]
    assert m["rougeL"] == pytest.approx(rouge_l(preds, refs))
    assert m["exact_match"] == pytest.approx(exact_match(preds, refs))
    assert m["n"] == 4


def test_run_evaluation_writes_per_seed_results(tmp_path):
    benches = {"dolly": _examples("dolly", 7), "vicuna": _examples("vicuna", 2)}
    gen = FakeGenerate()
    res = run_evaluation(benches, gen, PROTO, tmp_path, model_name="m")
    # 7 examples / chunk 3 -> 3 chunks; 2 -> 1 chunk; per seed.
    assert len(gen.calls) == (3 + 1) * 2
    assert {c[1] for c in gen.calls} == {chunk_seed(s, k) for s in (10, 21) for k in range(3)}
    kwargs = gen.calls[0][2]
    assert kwargs["max_new_tokens"] == 8 and kwargs["no_repeat_ngram_size"] == 6
    for bench, exs in benches.items():
        for seed in PROTO.seeds:
            recs = load_predictions(tmp_path, bench, seed)
            assert [r["uid"] for r in recs] == [e.uid for e in exs]
            preds = [r["prediction"] for r in recs]
            expected = evaluate_predictions(exs, preds)
            assert res[bench][seed]["rougeL"] == pytest.approx(expected["rougeL"])
            assert json.loads(scores_path(tmp_path, bench, seed).read_text()) == res[bench][seed]
    assert load_results(tmp_path) == res
    # In-memory validation path gives the same numbers (same chunk seeds).
    m, _ = evaluate_with_generate(benches["dolly"], FakeGenerate(), PROTO, 21)
    assert m["rougeL"] == pytest.approx(res["dolly"][21]["rougeL"])
    # A finished run is not regenerated.
    again = FakeGenerate()
    assert run_evaluation(benches, again, PROTO, tmp_path, model_name="m") == res
    assert again.calls == []


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    benches = {"dolly": _examples("dolly", 7)}
    full = run_evaluation(benches, FakeGenerate(), PROTO, tmp_path / "full", model_name="m")
    with pytest.raises(KeyboardInterrupt):  # dies during seed 10's third chunk
        run_evaluation(benches, FakeGenerate(fail_after=2), PROTO, tmp_path / "r", model_name="m")
    path = predictions_path(tmp_path / "r", "dolly", 10)
    assert len(path.read_text().splitlines()) == 6
    with path.open("a") as f:  # a line torn mid-write
        f.write('{"chunk": 2, "index": 6, "uid": "dol')
    gen = FakeGenerate()
    resumed = run_evaluation(benches, gen, PROTO, tmp_path / "r", model_name="m")
    assert [c[1] for c in gen.calls] == [chunk_seed(10, 2)] + [chunk_seed(21, k) for k in range(3)]
    assert resumed == full
    for seed in PROTO.seeds:
        assert load_predictions(tmp_path / "r", "dolly", seed) == load_predictions(
            tmp_path / "full", "dolly", seed
        )


def test_resume_refuses_changed_settings_or_data(tmp_path):
    benches = {"dolly": _examples("dolly", 4)}
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(benches, FakeGenerate(fail_after=1), PROTO, tmp_path, model_name="m")
    changed = dataclasses.replace(PROTO, temperature=0.7)
    with pytest.raises(ValueError, match="temperature=1.0.*temperature=0.7"):
        run_evaluation(benches, FakeGenerate(), changed, tmp_path, model_name="m")
    with pytest.raises(ValueError, match="model 'm'"):
        run_evaluation(benches, FakeGenerate(), PROTO, tmp_path, model_name="other")
    shuffled = {"dolly": _examples("dolly", 4)[::-1]}
    with pytest.raises(ValueError, match="data or template changed"):
        run_evaluation(shuffled, FakeGenerate(), PROTO, tmp_path, model_name="m")
    # Same uids (row numbers), other prompts: still caught.
    edited = {"dolly": [dataclasses.replace(e, prompt=e.prompt + "!") for e in benches["dolly"]]}
    with pytest.raises(ValueError, match="in uid, prompt or references"):
        run_evaluation(edited, FakeGenerate(), PROTO, tmp_path, model_name="m")
    # More seeds are fine: the new seed is simply added.
    more = dataclasses.replace(PROTO, seeds=(10, 21, 30))
    assert set(
        run_evaluation(benches, FakeGenerate(), more, tmp_path, model_name="m")["dolly"]
    ) == {
        10,
        21,
        30,
    }


def test_bad_generate_fn_output_is_named():
    with pytest.raises(ValueError, match="returned 1 items for 3 prompts"):
        evaluate_with_generate(_examples("d", 3), lambda p, **k: ["x"], PROTO, 10)


def test_protocol_round_trip_and_validation():
    p = EvalProtocol()
    assert (p.max_prompt_length, p.max_new_tokens, p.temperature, p.top_k, p.top_p) == (
        256,
        256,
        1.0,
        0,
        1.0,
    )
    assert p.no_repeat_ngram_size == 6 and p.seeds == (10, 20, 30, 40, 50)
    assert p.max_examples_for("uinst") == 10_000 and p.max_examples_for("dolly") is None
    assert EvalProtocol.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(ValueError, match="top_p=1.5"):
        EvalProtocol(top_p=1.5)
    with pytest.raises(ValueError, match="unknown EvalProtocol keys"):
        EvalProtocol.from_dict({"topk": 3})


def test_eval_config_builds_locks_and_round_trips():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "eval.py"
    spec = importlib.util.spec_from_file_location("eval_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from classkd_jax.evaluation import FINAL, VALIDATION

    final, val = mod.get_config(), mod.get_config("mode=validation")
    assert EvalProtocol.from_dict(final.protocol) == FINAL
    assert EvalProtocol.from_dict(val.protocol) == VALIDATION
    assert VALIDATION.no_repeat_ngram_size == 0
    with pytest.raises(AttributeError):
        final.new_key = 1  # locked
    with pytest.raises(ValueError, match="mode='x'"):
        mod.get_config("mode=x")
