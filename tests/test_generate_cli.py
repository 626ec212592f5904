"""`python -m classkd_jax.generate`: output, determinism and the errors for bad input."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from classkd_jax import generate
from classkd_jax.generate import generate_completions, load_model_and_tokenizer, main
from classkd_jax.sampling import completions

PROMPTS = ["the quick brown fox", "Question: what is 12 plus 7? Answer:", "JAX"]


def _write_prompts(path, prompts, extra=True):
    with open(path, "w") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({"prompt": p, "id": i} if extra else {"prompt": p}) + "\n")
    return path


def _read(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def qwen_dir(tiny_hf_model_dir):
    return tiny_hf_model_dir("qwen2")


def test_cli_greedy_equals_transformers_generate(qwen_dir, tmp_path):
    prompts = _write_prompts(tmp_path / "p.jsonl", PROMPTS)
    out = tmp_path / "out" / "o.jsonl"
    argv = ["--model", str(qwen_dir), "--prompts", str(prompts), "--out", str(out)]
    # batch_size 2: two batches, the second with a padding row.
    assert main([*argv, "--greedy", "--max_new_tokens", "12", "--batch_size", "2"]) == 0
    records = _read(out)
    assert [r["id"] for r in records] == [0, 1, 2] and [r["prompt"] for r in records] == PROMPTS

    tok = AutoTokenizer.from_pretrained(str(qwen_dir), padding_side="left")
    hf_model = AutoModelForCausalLM.from_pretrained(str(qwen_dir)).eval()
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        ids = hf_model.generate(**batch, do_sample=False, max_new_tokens=12)
    want = tok.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert [r["completion"] for r in records] == want
    assert any(want), "non-empty completions"


def test_sampling_is_deterministic_per_seed(qwen_dir, tmp_path):
    model, tok = load_model_and_tokenizer(qwen_dir)
    kw = dict(max_new_tokens=8, temperature=1.3, top_k=50, top_p=0.95, batch_size=4)
    a = generate_completions(model, tok, PROMPTS, seed=3, **kw)
    b = generate_completions(model, tok, PROMPTS, seed=3, **kw)
    c = generate_completions(model, tok, PROMPTS, seed=4, **kw)
    assert a == b and a != c


def test_a_checkpoint_generates_what_its_model_directory_generates(qwen_dir, tmp_path):
    from classkd_jax import checkpoint
    from classkd_jax.models import load_hf

    config, params = load_hf(qwen_dir)
    meta = {"models": {"teacher": checkpoint.model_meta(config)}, "tokenizer": str(qwen_dir)}
    checkpoint.save_checkpoint(tmp_path / "ckpt", 7, {"teacher_params": params}, meta)
    prompts = _write_prompts(tmp_path / "p.jsonl", PROMPTS)
    outs = {}
    for name, model in [
        ("hf", qwen_dir),
        ("root", tmp_path / "ckpt"),
        ("step", tmp_path / "ckpt" / "7"),
    ]:
        outs[name] = tmp_path / f"{name}.jsonl"
        argv = ["--model", str(model), "--prompts", str(prompts), "--out", str(outs[name])]
        argv += ["--greedy", "--max_new_tokens", "6", "--batch_size", "4"]
        assert main([*argv, "--role", "teacher"]) == 0
    assert _read(outs["root"]) == _read(outs["hf"]) == _read(outs["step"])
    with pytest.raises(KeyError, match=r"no model 'student'; it has \['teacher'\]"):
        load_model_and_tokenizer(tmp_path / "ckpt")
    meta["tokenizer"] = str(tmp_path / "gone")
    checkpoint.save_checkpoint(tmp_path / "ckpt", 8, {"teacher_params": params}, meta)
    with pytest.raises(FileNotFoundError, match="names tokenizer.*gone.*--tokenizer"):
        load_model_and_tokenizer(tmp_path / "ckpt", role="teacher")
    _, tok = load_model_and_tokenizer(tmp_path / "ckpt", role="teacher", tokenizer=qwen_dir)
    assert tok.encode("JAX")


def test_unknown_model_path_is_named(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model.*neither a Hugging Face"):
        load_model_and_tokenizer(missing)
    prompts = _write_prompts(tmp_path / "p.jsonl", PROMPTS)
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        main(["--model", str(missing), "--prompts", str(prompts), "--out", str(tmp_path / "o")])


def test_bad_prompts_files_and_flags(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a 'prompt'"):
        generate.read_prompts(bad)
    bad.write_text('{"prompt": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON"):
        generate.read_prompts(bad)
    with pytest.raises(SystemExit):
        generate.parse_args(
            ["--model", "m", "--prompts", "p", "--out", "o", "--greedy"] + ["--top_k", "5"]
        )
    assert "--greedy cannot be combined with --top_k" in capsys.readouterr().err


def test_bad_generation_inputs_are_named(qwen_dir):
    model, tok = load_model_and_tokenizer(qwen_dir)
    context = model[0].max_position_embeddings
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate_completions(model, tok, ["fine", ""], max_new_tokens=4)
    with pytest.raises(ValueError, match=f"max_new_tokens={context} must be in"):
        generate_completions(model, tok, ["fine"], max_new_tokens=context)
    long_prompt = "the quick brown fox jumps over the lazy dog. " * 30
    n_tokens = len(tok(long_prompt)["input_ids"])
    assert n_tokens > context - 8
    with pytest.raises(ValueError, match=f"prompt 0 has {n_tokens} tokens, more than"):
        generate_completions(model, tok, [long_prompt], max_new_tokens=8)
    with pytest.raises(ValueError, match="longer than the largest prompt bucket 4"):
        generate_completions(
            model, tok, ["the quick brown fox"], max_new_tokens=4, prompt_buckets=(4,)
        )


def test_over_long_prompts_are_left_truncated_with_a_warning(qwen_dir):
    _, tok = load_model_and_tokenizer(qwen_dir)
    full = tok("the quick brown fox jumps over the lazy dog.")["input_ids"]
    with pytest.warns(UserWarning, match=r"left-truncated 1 prompt\(s\) to max_prompt_length=5"):
        ids = completions._tokenize(
            tok, ["the quick brown fox jumps over the lazy dog.", "JAX"], 100, 5
        )
    assert ids[0] == full[-5:] and ids[1] == tok("JAX")["input_ids"]


def test_generation_config_eos_overrides_config_json(qwen_dir, tmp_path):
    copy = shutil.copytree(qwen_dir, tmp_path / "m")
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    model, _ = load_model_and_tokenizer(copy)
    assert model[0].eos_token_ids == (2, 7)


@pytest.mark.multiprocess
def test_two_processes_generate_what_one_process_does(qwen_dir, tmp_path):
    """Two JAX processes on 127.0.0.1 (2 CPU devices each) split every batch over
    their 4 devices; process 0 writes the same file one process writes."""
    import os
    import sys

    from tests.multiprocess import free_port, run_processes

    prompts = _write_prompts(tmp_path / "p.jsonl", PROMPTS * 3)  # 9: two batches of 8
    argv = ["--model", str(qwen_dir), "--prompts", str(prompts), "--max_new_tokens", "6"]
    argv += ["--batch_size", "8", "--temperature", "1.0", "--top_k", "20", "--seed", "3"]
    assert main([*argv, "--out", str(tmp_path / "one.jsonl")]) == 0  # 8 devices, 1 process

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    argv += ["--coordinator_address", f"127.0.0.1:{free_port()}", "--num_processes", "2"]
    argv += ["--out", str(tmp_path / "two.jsonl")]
    cli = [sys.executable, "-m", "classkd_jax.generate", *argv]
    logs = run_processes([[*cli, "--process_id", str(i)] for i in range(2)], env, timeout=240)
    assert "4 device(s)" in logs[0]
    assert "wrote 9 completions" in logs[0] and "wrote" not in logs[1]  # process 0 writes
    assert _read(tmp_path / "two.jsonl") == _read(tmp_path / "one.jsonl")
    assert len({r["completion"] for r in _read(tmp_path / "one.jsonl")}) > 3  # sampled


def test_distributed_flags_must_come_together():
    from classkd_jax import distributed

    argv = ["--model", "m", "--prompts", "p", "--out", "o"]
    with pytest.raises(ValueError, match="--process_id given without --coordinator_address"):
        distributed.initialize(generate.parse_args([*argv, "--process_id", "1"]))
    assert distributed.initialize(generate.parse_args(argv)) is False


@pytest.mark.multiprocess
def test_generate_on_two_processes_reports_a_lost_peer_in_one_line(tiny_hf_model_dir, tmp_path):
    """generate on 2 processes runs under the trainer's supervisor: when process 0
    (the coordinator) is killed once both are up, the other leaves with one line
    and exit 75, with neither a Python traceback nor JAX's C++ stack trace."""
    import os
    import sys

    from classkd_jax.supervisor import EXIT_PEER_LOST
    from tests.multiprocess import Started, free_port

    prompts = tmp_path / "prompts.jsonl"
    _write_prompts(prompts, ["one two three"] * 64, extra=False)
    port = free_port()
    cmds = [
        [sys.executable, "-m", "classkd_jax.generate", "--model", str(tiny_hf_model_dir("llama")),
         "--prompts", str(prompts), "--out", str(tmp_path / "out.jsonl"), "--greedy",
         "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
         "--process_id", str(i), "--heartbeat_timeout", "10"]
        for i in (0, 1)
    ]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    started = Started(cmds, env)
    logs = (tmp_path / "generate.log", tmp_path / "generate.1.log")
    started.wait_until(lambda: all(log.exists() for log in logs))
    started.procs[0].kill()
    status = started.finish(timeout=90)
    out = started.output(1)
    assert status[1] == EXIT_PEER_LOST, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("python -m classkd_jax.generate: error: process 1 of 2: "), last
    assert "died or stopped responding" in last and "rerun the command" in last
    assert "Traceback" not in out and "stack trace" not in out
