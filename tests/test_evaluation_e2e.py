"""End to end: the evaluate CLI on a tiny random GPT-2 and tiny files in each layout."""

from __future__ import annotations

import json

import pytest

from classkd_jax import evaluate
from classkd_jax.data.benchmarks import BENCHMARKS
from classkd_jax.evaluation import load_predictions, rouge_l
from classkd_jax.evaluation.runner import predictions_path, scores_path

# Every fixture prompt is longer than --max_prompt_length, so all share one prompt
# bucket (one compile per sampling config); the sampler warns as it truncates.
pytestmark = pytest.mark.filterwarnings("ignore:left-truncated:UserWarning")

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "a",
    "student",
    "learns",
    "from",
    "a",
    "teacher",
]


def _write_benchmarks(data_dir):
    """Three test examples per benchmark, in MiniLLM's layout (<set>/valid.jsonl)."""
    for k, (name, rel) in enumerate(BENCHMARKS.items()):
        d = data_dir / rel
        d.mkdir(parents=True)
        lines = []
        for i in range(3):
            words = WORDS[(k + i) % 5 :][: 4 + i]
            rec = {"instruction": " ".join(words), "input": "fox" if i == 1 else ""}
            ans = " ".join(reversed(words))
            # S-NI and UnNI carry several references per example.
            rec["output"] = [ans, "the dog"] if name in ("sinst", "uinst") else ans
            lines.append(json.dumps(rec))
        (d / "valid.jsonl").write_text("\n".join(lines) + "\n")


def _args(model_dir, data_dir, out, *extra):
    return [
        "--model",
        str(model_dir),
        "--data_dir",
        str(data_dir),
        "--out",
        str(out),
        "--seeds",
        "10,20",
        "--template",
        "compact",
        "--max_prompt_length",
        "32",
        "--max_new_tokens",
        "12",
        "--batch_size",
        "8",
        "--chunk_size",
        "2",
        *extra,
    ]


@pytest.fixture(scope="module")
def runs(tiny_hf_model_dir, tmp_path_factory):
    model_dir = tiny_hf_model_dir("gpt2")
    root = tmp_path_factory.mktemp("eval_e2e")
    _write_benchmarks(root / "data")
    sampled, greedy = root / "sampled", root / "greedy"
    assert evaluate.main(_args(model_dir, root / "data", sampled)) == 0
    assert evaluate.main(_args(model_dir, root / "data", greedy, "--greedy")) == 0
    return model_dir, root / "data", sampled, greedy


def _preds(out, bench, seed):
    return [r["prediction"] for r in load_predictions(out, bench, seed)]


def test_table_has_five_benchmarks_and_avg(runs):
    _, _, sampled, _ = runs
    lines = (sampled / "table.md").read_text().splitlines()
    assert lines[0] == "| Models | Dolly | Self-inst | Vicuna | Super-Natural | Unnatural | AVG |"
    assert len(lines[2].strip("|").split("|")) == 7
    data = json.loads((sampled / "results.json").read_text())
    assert set(data["predictions"]) == set(BENCHMARKS)
    for bench, per_seed in data["predictions"].items():
        assert set(per_seed) == {"10", "20"}
        for seed, recs in per_seed.items():
            assert len(recs) == 3
            # The stored score is the protocol's metric of the stored predictions.
            expected = rouge_l([r["prediction"] for r in recs], [r["references"] for r in recs])
            assert data["scores"][bench][seed]["rougeL"] == pytest.approx(expected)
    assert (sampled / "predictions.csv").is_file() and (sampled / "scores.csv").is_file()


def test_seeds_change_samples_but_not_greedy(runs):
    _, _, sampled, greedy = runs
    s10 = [p for b in BENCHMARKS for p in _preds(sampled, b, 10)]
    s20 = [p for b in BENCHMARKS for p in _preds(sampled, b, 20)]
    assert s10 != s20
    assert any(p.strip() for p in s10)  # the model does produce text
    for b in BENCHMARKS:
        assert _preds(greedy, b, 10) == _preds(greedy, b, 20)
    assert s10 != [p for b in BENCHMARKS for p in _preds(greedy, b, 10)]


def test_interrupted_run_resumes_to_the_same_predictions(runs, tmp_path):
    model_dir, data_dir, sampled, _ = runs
    out = tmp_path / "resumed"
    # Simulate a run killed after dolly seed 20's first chunk (2 of 3 examples).
    import shutil

    shutil.copytree(sampled, out)
    scores_path(out, "dolly", 20).unlink()
    path = predictions_path(out, "dolly", 20)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))
    assert evaluate.main(_args(model_dir, data_dir, out)) == 0
    assert load_predictions(out, "dolly", 20) == load_predictions(sampled, "dolly", 20)
    assert (out / "table.md").read_text() == (sampled / "table.md").read_text()


def test_compare_two_runs_draws_plot(runs, tmp_path):
    _, _, sampled, greedy = runs
    assert (
        evaluate.main(
            ["--compare", f"sampled={sampled}", f"greedy={greedy}", "--out", str(tmp_path)]
        )
        == 0
    )
    table = (tmp_path / "table.md").read_text()
    assert "| sampled |" in table and "| greedy |" in table
    assert (tmp_path / "comparison.png").stat().st_size > 1000


def test_greedy_predictions_match_transformers_generate(runs):
    """The protocol's settings reach the sampler: HF greedy with the same knobs agrees."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from classkd_jax.data.benchmarks import load_eval_set

    model_dir, data_dir, _, greedy = runs
    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for bench in ("dolly", "sinst"):
        examples = load_eval_set(data_dir, bench, template="compact")
        expected = []
        for ex in examples:
            ids = tok(ex.prompt)["input_ids"][-32:]  # --max_prompt_length 32, left-truncated
            with torch.no_grad():
                out = hf.generate(
                    torch.tensor([ids]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    do_sample=False,
                    max_new_tokens=12,
                    no_repeat_ngram_size=6,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )
            expected.append(tok.decode(out[0, len(ids) :], skip_special_tokens=True))
        assert any(p.strip() for p in expected)
        assert _preds(greedy, bench, 10) == expected


def test_scores_reach_100_when_references_are_the_greedy_outputs(runs, tmp_path):
    """Scoring is wired to the right predictions: own greedy outputs as references."""
    model_dir, data_dir, _, greedy = runs
    preds = _preds(greedy, "dolly", 10)
    assert all(any(c.isascii() and c.isalnum() for c in p) for p in preds)  # scorable
    recs = [
        json.loads(line) for line in (data_dir / "dolly" / "valid.jsonl").read_text().splitlines()
    ]
    (tmp_path / "data" / "dolly").mkdir(parents=True)
    lines = [json.dumps({**r, "output": ["zzz", p]}) for r, p in zip(recs, preds, strict=True)]
    (tmp_path / "data" / "dolly" / "valid.jsonl").write_text("\n".join(lines) + "\n")
    args = _args(
        model_dir, tmp_path / "data", tmp_path / "out", "--greedy", "--benchmarks", "dolly"
    )
    assert evaluate.main(args) == 0
    scores = json.loads((tmp_path / "out" / "results.json").read_text())["scores"]["dolly"]
    assert scores["10"]["rougeL"] == pytest.approx(100.0)
    assert scores["20"]["exact_match"] == pytest.approx(100.0)
