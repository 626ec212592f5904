"""The evaluate CLI: --compare mode, model-path and data-layout errors (no model needed)."""

from __future__ import annotations

import json

import pytest

from classkd_jax import evaluate
from classkd_jax.evaluation import EvalProtocol, run_evaluation


def _run_dir(path, offset):
    """A finished output directory with a fixed score per benchmark."""

    class Ex:
        def __init__(self, i):
            self.uid, self.prompt, self.references = f"u{i}", f"p {i}", [f"ref {i} word"]

    def gen(prompts, *, seed, **kw):
        # Offset controls how many examples are answered right.
        return [
            f"ref {p.split()[-1]} word" if int(p.split()[-1]) < offset else "x" for p in prompts
        ]

    benches = {b: [Ex(i) for i in range(4)] for b in ("dolly", "vicuna")}
    run_evaluation(benches, gen, EvalProtocol(seeds=(10, 20)), path, model_name=str(path))
    return path


def test_compare_mode_writes_table_and_plot(tmp_path, capsys):
    a, b = _run_dir(tmp_path / "runA", 1), _run_dir(tmp_path / "runB", 3)
    out = tmp_path / "cmp"
    assert evaluate.main(["--compare", f"base={a}", str(b), "--out", str(out)]) == 0
    table = (out / "table.md").read_text()
    assert "| Models | Dolly | Vicuna | AVG |" in table
    assert "| base | 25.00 ± 0.00 | 25.00 ± 0.00 | 25.00 ± 0.00 |" in table
    assert "| runB | **75.00 ± 0.00** |" in table
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "| Models |" in capsys.readouterr().out


def test_compare_rejects_non_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an evaluation output directory"):
        evaluate.main(["--compare", str(tmp_path), "--out", str(tmp_path / "o")])


def test_model_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        evaluate.check_model_path(str(tmp_path / "nope"))
    ckpt = tmp_path / "ckpt"
    (ckpt / "100").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="checkpoint root but holds no complete step"):
        evaluate.check_model_path(str(ckpt))
    (ckpt / "100" / "meta").mkdir()
    assert evaluate.check_model_path(str(ckpt)) == ckpt
    with pytest.raises(ValueError, match="no config.json"):
        evaluate.check_model_path(str(tmp_path))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        evaluate.check_model_path(str(hf))
    (hf / "model.safetensors").write_bytes(b"")
    assert evaluate.check_model_path(str(hf)) == hf


def test_missing_benchmark_file_names_path_and_layout(tmp_path):
    (tmp_path / "dolly").mkdir()
    (tmp_path / "dolly" / "valid.jsonl").write_text(
        json.dumps({"instruction": "i", "input": "", "output": "o"}) + "\n"
    )
    args = ["--model", str(tmp_path), "--data_dir", str(tmp_path), "--out", str(tmp_path / "o")]
    with pytest.raises(FileNotFoundError) as e:
        evaluate.main([*args, "--benchmarks", "dolly,sinst"])
    assert str(tmp_path / "sinst" / "11_" / "valid.jsonl") in str(e.value)
    assert "uinst/11_/valid.jsonl" in str(e.value)  # the whole layout


def test_protocol_flags():
    args = evaluate.build_parser().parse_args(
        ["--out", "o", "--seeds", "1,2", "--greedy", "--max_examples", "5", "--benchmarks", "dolly"]
    )
    p = evaluate.protocol_from_args(args)
    assert p.seeds == (1, 2) and p.greedy and p.max_examples_for("dolly") == 5
    assert p.no_repeat_ngram_size == 6 and p.max_new_tokens == 256
    with pytest.raises(SystemExit):
        evaluate.build_parser().parse_args(["--out", "o", "--seeds", "a,b"])
