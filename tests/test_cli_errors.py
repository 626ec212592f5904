"""Every CLI error is one line `<prog>: error: <what and where>`, exit status 2, no traceback.

Most cases call `cli.run(module.main, argv, prog=...)` in-process (what `__main__`
runs); two real `python -m` runs prove no traceback reaches the terminal. The
tiny test models have a context (max_position_embeddings) of 128 tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from classkd_jax import cli, evaluate, generate
from classkd_jax.evaluation import EvalProtocol

CONTEXT = 128  # max_position_embeddings of tests/tiny_hf.py's models


def _one_line_error(capsys, status: int, prog: str) -> str:
    """Asserts a failed run printed exactly one error line; returns it."""
    err = capsys.readouterr().err
    assert status == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ")
    return lines[0]


def _write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _benchmark(data_dir, n=3, name="dolly"):
    """`n` short test examples of one benchmark, in MiniLLM's layout (<set>/valid.jsonl)."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]
    recs = [
        {"instruction": " ".join(words[i : i + 3]), "input": "", "output": " ".join(words[i:])}
        for i in range(n)
    ]
    return _write_jsonl(data_dir / name / "valid.jsonl", recs)


@pytest.fixture(scope="module")
def gpt2_dir(tiny_hf_model_dir):
    return tiny_hf_model_dir("gpt2")


# --------------------------------------------------------------------------
# python -m classkd_jax.generate

GEN = generate.PROG


def _gen(capsys, tmp_path, *argv) -> str:
    status = cli.run(generate.main, [*argv, "--out", str(tmp_path / "o.jsonl")], prog=GEN)
    return _one_line_error(capsys, status, GEN)


def test_generate_missing_model_path_is_named(tmp_path, capsys):
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    line = _gen(capsys, tmp_path, "--model", str(tmp_path / "no_model"), "--prompts", str(prompts))
    assert str(tmp_path / "no_model") in line and "neither a Hugging Face" in line


def test_generate_missing_prompts_file_is_named(gpt2_dir, tmp_path, capsys):
    line = _gen(capsys, tmp_path, "--model", str(gpt2_dir), "--prompts", str(tmp_path / "p.jsonl"))
    assert f"JSONL file not found: {tmp_path / 'p.jsonl'}" in line


@pytest.mark.parametrize(
    "second_line, detail",
    [
        ("{not json", "malformed JSON"),
        ('{"text": "no prompt key"}', "expected an object with a 'prompt' string"),
        ('{"prompt": ""}', "the 'prompt' is empty"),
    ],
)
def test_generate_bad_prompts_line_names_file_and_line(
    gpt2_dir, tmp_path, capsys, second_line, detail
):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n' + second_line + "\n")
    line = _gen(capsys, tmp_path, "--model", str(gpt2_dir), "--prompts", str(prompts))
    assert f"{prompts}:2: {detail}" in line


def test_generate_max_new_tokens_beyond_the_context_names_the_flag(gpt2_dir, tmp_path, capsys):
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    argv = ["--model", str(gpt2_dir), "--prompts", str(prompts), "--max_new_tokens", "128"]
    line = _gen(capsys, tmp_path, *argv)
    assert "--max_new_tokens 128 does not fit the model's context of 128 tokens" in line
    line = _gen(capsys, tmp_path, *argv[:-1], "100", "--max_prompt_length", "64")
    assert "--max_prompt_length 64 + --max_new_tokens 100 exceed" in line
    assert "context of 128 tokens" in line


def test_generate_prompt_beyond_the_context_names_its_line_and_the_flags(
    gpt2_dir, tmp_path, capsys
):
    long_prompt = "the quick brown fox jumps over the lazy dog. " * 30
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}, {"prompt": long_prompt}])
    argv = ["--model", str(gpt2_dir), "--prompts", str(prompts), "--max_new_tokens", "8"]
    line = _gen(capsys, tmp_path, *argv)
    assert f"{prompts}:2: the prompt has" in line
    assert "with --max_new_tokens 8 only 120 fit in the context of 128" in line
    assert "--max_prompt_length 120" in line


# --------------------------------------------------------------------------
# python -m classkd_jax.evaluate

EVAL = evaluate.PROG


def _eval(capsys, tmp_path, *argv) -> str:
    status = cli.run(evaluate.main, [*argv, "--out", str(tmp_path / "out")], prog=EVAL)
    return _one_line_error(capsys, status, EVAL)


def test_evaluate_malformed_benchmark_line_names_file_and_line(tmp_path, capsys):
    path = _benchmark(tmp_path / "data")
    path.write_text(path.read_text() + "{not json\n")  # line 4
    argv = ["--model", str(tmp_path), "--data_dir", str(tmp_path / "data")]
    line = _eval(capsys, tmp_path, *argv, "--benchmarks", "dolly")
    assert f"{path}:4: malformed JSON" in line


def test_evaluate_missing_data_dir_is_named(tmp_path, capsys):
    missing = tmp_path / "no_data"
    line = _eval(capsys, tmp_path, "--model", str(tmp_path), "--data_dir", str(missing))
    assert f"--data_dir {missing}: no such directory" in line


@pytest.mark.parametrize("earlier_log", [False, True], ids=["alone", "after_a_run"])
def test_evaluate_missing_benchmark_in_data_dir_is_named(tmp_path, capsys, earlier_log):
    """Named in full, and never written to or pointed at another command's log: a
    run finished earlier in the same process (`earlier_log`) once left its log set,
    whose long path, as the line's pointer, cut this path out of the line."""
    earlier = tmp_path / "an-earlier-run" / "train.log"
    if earlier_log:
        earlier.parent.mkdir()
        cli.set_log_file(earlier)
    _benchmark(tmp_path / "data")
    argv = ["--model", str(tmp_path), "--data_dir", str(tmp_path / "data")]
    try:
        line = _eval(capsys, tmp_path, *argv, "--benchmarks", "dolly,sinst")
    finally:
        cli.set_log_file(None)
    assert f"{tmp_path / 'data' / 'sinst' / '11_' / 'valid.jsonl'} not found" in line
    assert "an-earlier-run" not in line and not earlier.exists()


def test_evaluate_usage_errors_are_one_line(tmp_path, capsys):
    line = _eval(capsys, tmp_path)
    assert "give --model to evaluate, --compare RUN ... to compare, or both" in line
    line = _eval(capsys, tmp_path, "--model", str(tmp_path), "--benchmarks", ",")
    assert "--data_dir is required with --model" in line
    _benchmark(tmp_path / "data")
    line = _eval(
        capsys, tmp_path, "--model", str(tmp_path), "--data_dir", str(tmp_path), "--benchmarks", ","
    )
    assert "--benchmarks is empty" in line


def test_evaluate_missing_model_path_is_named(tmp_path, capsys):
    _benchmark(tmp_path / "data")
    argv = ["--model", str(tmp_path / "no_model"), "--data_dir", str(tmp_path / "data")]
    line = _eval(capsys, tmp_path, *argv, "--benchmarks", "dolly")
    assert f"--model {tmp_path / 'no_model'}: no such directory" in line


@pytest.mark.parametrize(
    "flags, detail",
    [
        (["--max_new_tokens", "200"], "--max_new_tokens 200 does not fit the model's context"),
        (["--max_prompt_length", "128"], "--max_prompt_length 128 leaves no room for new tokens"),
        (
            ["--max_prompt_length", "100", "--max_new_tokens", "100"],
            "--max_prompt_length 100 + --max_new_tokens 100 = 200 tokens exceed",
        ),
    ],
)
def test_evaluate_explicit_lengths_beyond_the_context_name_the_flag(
    gpt2_dir, tmp_path, capsys, flags, detail
):
    _benchmark(tmp_path / "data")
    argv = ["--model", str(gpt2_dir), "--data_dir", str(tmp_path / "data"), "--benchmarks", "dolly"]
    line = _eval(capsys, tmp_path, *argv, *flags)
    assert detail in line and "context of 128 tokens (max_position_embeddings)" in line
    assert not (tmp_path / "out" / "manifest.json").exists()  # failed before generating


@pytest.mark.parametrize(
    "explicit, prompt, new, want",
    [
        ((), 256, 256, (64, 64)),  # neither given: half the context each
        ((), 100, 256, (64, 64)),  # new tokens keep at least half the context
        ((), 32, 256, (32, 96)),  # a short prompt limit is kept
        (("max_new_tokens",), 256, 100, (28, 100)),  # the prompt gets the rest
        (("max_prompt_length",), 100, 256, (100, 28)),  # the new tokens get the rest
        (("max_prompt_length", "max_new_tokens"), 64, 64, (64, 64)),  # fits: unchanged
    ],
)
def test_fit_context_caps_only_the_defaults(explicit, prompt, new, want):
    proto = EvalProtocol(max_prompt_length=prompt, max_new_tokens=new)
    fitted, warning = evaluate.fit_context(proto, CONTEXT, explicit)
    assert (fitted.max_prompt_length, fitted.max_new_tokens) == want
    assert sum(want) <= CONTEXT
    assert (warning is None) == (prompt + new <= CONTEXT)
    assert fitted.seeds == proto.seeds and fitted.temperature == proto.temperature


def test_evaluate_caps_the_protocol_defaults_to_a_small_context_and_records_them(
    gpt2_dir, tmp_path, capsys
):
    """No length flags on a 128-token model: 256 + 256 become 64 + 64, with one warning,
    and the manifest and results record what ran (so the same command resumes)."""
    _benchmark(tmp_path / "data", n=2)
    out = tmp_path / "out"
    argv = ["--model", str(gpt2_dir), "--data_dir", str(tmp_path / "data"), "--out", str(out)]
    argv += ["--benchmarks", "dolly", "--seeds", "10", "--template", "compact"]
    assert cli.run(evaluate.main, argv, prog=EVAL) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{EVAL}: warning: max_prompt_length 256 (protocol default)")
    assert "exceed the model's context of 128 tokens" in warnings[0]
    assert "capped max_new_tokens to 64, max_prompt_length to 64" in warnings[0]
    assert "--max_prompt_length / --max_new_tokens" in warnings[0]
    manifest = json.loads((out / "manifest.json").read_text())["protocol"]
    results = json.loads((out / "results.json").read_text())
    assert (manifest["max_prompt_length"], manifest["max_new_tokens"]) == (64, 64)
    assert results["scores"]["dolly"]["10"]["n"] == 2
    assert (results["protocol"]["max_prompt_length"], results["protocol"]["max_new_tokens"]) == (
        64,
        64,
    )
    # The same command resumes: its capped protocol matches the manifest's.
    assert cli.run(evaluate.main, argv, prog=EVAL) == 0


# --------------------------------------------------------------------------
# Every error line is short; the whole error is in a file the line names.


def _long_error(argv):
    raise ValueError("OUT_OF_RANGE: " + "tensorstore spec " * 150)


def test_a_long_error_is_cut_to_300_characters_naming_the_log_that_holds_it(tmp_path, capsys):
    log = tmp_path / "train.log"
    status = cli.run(_long_error, [], prog="python -m classkd_jax.train", log_file=log)
    line = _one_line_error(capsys, status, "python -m classkd_jax.train")
    assert len(line) <= cli.MAX_LINE and line.endswith(f"tensorstore spec (the whole error: {log})")
    assert "tensorstore spec " * 150 in log.read_text()


def test_without_a_log_the_whole_error_goes_to_a_temporary_file(capsys):
    from pathlib import Path

    line = _one_line_error(capsys, cli.run(_long_error, [], prog=GEN), GEN)
    where = Path(line.rsplit("(the whole error: ", 1)[1].rstrip(")"))
    assert len(line) <= cli.MAX_LINE and "tensorstore spec " * 150 in where.read_text()
    where.unlink()


def test_an_override_under_a_missing_group_names_the_whole_key_and_the_nearest(tmp_path, capsys):
    from classkd_jax import train

    argv = ["--config", "configs/classkd.py:size=tiny", "--workdir", str(tmp_path)]
    status = cli.run(train.main, [*argv, "--config.optim.learning_rate=1"], prog=train.PROG)
    line = _one_line_error(capsys, status, train.PROG)
    assert line.endswith(
        "config has no key optim.learning_rate (no key 'optim' in the config; "
        "nearest: classmate.lr, student.lr)"
    )
    status = cli.run(train.main, [*argv, "--config.student.optim.lr=1"], prog=train.PROG)
    assert "student.optim.lr (no key 'optim' in student; nearest: student.lr" in (
        _one_line_error(capsys, status, train.PROG)
    )


# --------------------------------------------------------------------------
# Real processes: nothing but the one line reaches the terminal.


def _run_module(module, *argv):
    return subprocess.run(
        [sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=120
    )


def _assert_one_error_line(proc, module, detail):
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"python -m {module}: error: ") and detail in errors[0]


def test_python_m_evaluate_malformed_benchmark_is_one_line(tmp_path):
    path = _benchmark(tmp_path / "data", n=1)
    path.write_text(path.read_text() + "{not json\n")
    argv = ["--model", str(tmp_path), "--data_dir", str(tmp_path / "data")]
    proc = _run_module(
        "classkd_jax.evaluate", *argv, "--benchmarks", "dolly", "--out", str(tmp_path / "o")
    )
    _assert_one_error_line(proc, "classkd_jax.evaluate", f"{path}:2: malformed JSON")


def test_python_m_generate_malformed_prompts_is_one_line(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{not json\n')
    argv = ["--model", str(tmp_path), "--prompts", str(prompts), "--out", str(tmp_path / "o")]
    proc = _run_module("classkd_jax.generate", *argv)
    _assert_one_error_line(proc, "classkd_jax.generate", f"{prompts}:2: malformed JSON")


def test_a_finished_command_leaves_jax_distributed_on_purpose(monkeypatch):
    """After `main` returns, every CLI shuts `jax.distributed` down itself (each
    process at the same point), not at interpreter teardown, where a peer can
    abort with -6 after a run that succeeded; a user error leaves it alone."""
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax.distributed, "shutdown", lambda: calls.append("shutdown"))
    assert cli.run(lambda argv: 0, [], prog="x") == 0 and calls == ["shutdown"]

    def fails(argv):
        raise cli.UserError("no")

    assert cli.run(fails, [], prog="x") == 2 and calls == ["shutdown"]
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    assert cli.run(lambda argv: 3, [], prog="x") == 3 and calls == ["shutdown"]
