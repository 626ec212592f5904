"""Bad input to `python -m classkd_jax.train` is one line naming the cause, exit
status 2, no traceback, and nothing written is lost. Every check here fails
before a program compiles (but the NaN run, which has to train to diverge)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from classkd_jax import checkpoint, cli, train

ROOT = Path(__file__).resolve().parents[1]
PROG = train.PROG


def _error(capsys, tmp_path, *argv, method="classkd") -> str:
    workdir = tmp_path / "run"
    config = (
        argv[0] if argv and argv[0].startswith("configs/") else f"configs/{method}.py:size=tiny"
    )
    rest = argv[1:] if argv and argv[0].startswith("configs/") else argv
    status = cli.run(train.main, ["--config", config, "--workdir", str(workdir), *rest], prog=PROG)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(PROG)]
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), err
    return lines[0]


def test_a_mistyped_config_key_is_named_with_a_suggestion(tmp_path, capsys):
    line = _error(capsys, tmp_path, "--config.misfeedback.wieght=0.3")
    assert line.endswith(
        "config has no key misfeedback.wieght (did you mean misfeedback.weight?)"
    ), line


def test_a_value_of_the_wrong_type_names_the_flag(tmp_path, capsys):
    line = _error(capsys, tmp_path, "--config.steps=many")
    assert "--config.steps=many" in line


def test_an_unknown_variant_and_a_missing_config_file_are_named(tmp_path, capsys):
    assert "size='huge'" in _error(capsys, tmp_path, "configs/classkd.py:size=huge")
    assert "configs/nope.py: no such config file" in _error(capsys, tmp_path, "configs/nope.py")


def test_a_value_out_of_range_names_the_key(tmp_path, capsys):
    line = _error(capsys, tmp_path, "--config.gkd.lmbda=1.5", method="gkd")
    assert "gkd.lmbda=1.5" in line and "[0, 1]" in line


def test_a_mesh_that_does_not_fit_the_devices_is_named(tmp_path, capsys):
    line = _error(capsys, tmp_path, "--config.mesh.data=3")
    assert "mesh.data=3" in line and "8 devices" in line


def test_a_missing_model_path_is_named(tmp_path, capsys):
    line = _error(capsys, tmp_path, f"--config.teacher.path={tmp_path / 'no_teacher'}")
    assert f"teacher.path={tmp_path / 'no_teacher'}: no such directory" in line


def test_a_teacher_with_another_tokenizer_is_refused_before_any_compile(
    tmp_path, capsys, tiny_hf_model_dir
):
    teacher = tiny_hf_model_dir("llama")  # its own 256-token BPE, not the synthetic one
    line = _error(capsys, tmp_path, f"--config.teacher.path={teacher}")
    assert "the teacher's tokenizer" in line and "256 tokens" in line and "512 tokens" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def _hf_dir(path: Path, vocab_size: int, tokenizer_dir: Path) -> Path:
    """A random tiny Llama with a head of `vocab_size` saved with the tiny tokenizer."""
    from classkd_jax.models import get_preset, load_tokenizer, save_hf
    from classkd_jax.training import roles

    config = get_preset("tiny-llama", vocab_size=vocab_size)
    params = roles.host_init(config, (0,))
    return save_hf(path, config, params, load_tokenizer(tokenizer_dir))


def test_heads_padded_past_one_shared_tokenizer_are_fine_narrower_ones_are_not(
    tmp_path, tiny_tokenizer_dir
):
    """Qwen2.5's 0.5B and 7B heads differ in padding over one tokenizer: allowed."""
    from classkd_jax.config_utils import import_sibling
    from classkd_jax.models import load_tokenizer
    from classkd_jax.training import roles

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    student = _hf_dir(tmp_path / "student", len(tokenizer), tiny_tokenizer_dir)
    config = import_sibling(str(ROOT / "configs/x.py"), "kd").get_config("size=tiny")
    with config.unlocked():
        config.student.path = str(student)
        config.teacher.path = str(_hf_dir(tmp_path / "padded", 320, tiny_tokenizer_dir))
    sources = roles.plan_roles(config, tokenizer, str(student), 128, "test")
    assert sources["teacher"].config.vocab_size == 320
    with config.unlocked():
        narrow = _hf_dir(tmp_path / "narrow", len(tokenizer) - 8, tiny_tokenizer_dir)
        config.teacher.path = str(narrow)
    with pytest.raises(cli.UserError, match=f"head of {len(tokenizer) - 8} tokens, fewer"):
        roles.plan_roles(config, tokenizer, str(student), 128, "test")


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _dolly(i: int) -> str:
    return json.dumps({"instruction": f"Repeat {i}", "context": "", "response": f"{i}"})


def test_a_malformed_data_line_is_named_by_file_and_line(tmp_path, capsys):
    data = _jsonl(tmp_path / "train.jsonl", [_dolly(0), _dolly(1), "{oops"])
    line = _error(capsys, tmp_path, "--config.data.source=jsonl", f"--config.data.path={data}")
    assert f"{data}:3" in line


def test_a_file_too_small_for_its_dev_split_is_an_error_not_an_empty_training_set(tmp_path, capsys):
    data = _jsonl(tmp_path / "train.jsonl", [_dolly(i) for i in range(5)])
    line = _error(capsys, tmp_path, "--config.data.source=jsonl", f"--config.data.path={data}")
    assert "5 examples" in line and "data.dev_num=1000" in line


def test_a_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # An absurd learning rate: the first update overflows the weights, the
    # second step's loss is not finite.
    line = _error(
        capsys,
        tmp_path,
        "--config.student.lr=1e30",
        "--config.checkpoint_every=1",
        "--config.eval_every=0",
        method="sft",
    )
    assert "training stopped" in line and "at step 2" in line
    assert "'ce'" in line or "student_grad_norm" in line
    steps = checkpoint.all_steps(tmp_path / "run" / "checkpoints")
    assert steps == [1] and str(tmp_path / "run" / "checkpoints" / "1") in line


def test_no_traceback_reaches_the_terminal(tmp_path):
    data = _jsonl(tmp_path / "train.jsonl", ["not json"])
    cmd = [sys.executable, "-m", "classkd_jax.train", "--config", "configs/sft.py:size=tiny"]
    cmd += ["--workdir", str(tmp_path / "run"), "--config.data.source=jsonl"]
    proc = subprocess.run(
        [*cmd, f"--config.data.path={data}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith(f"{PROG}: error: {data}:1") and "Traceback" not in proc.stderr
    assert "Traceback" in (tmp_path / "run" / "train.log").read_text()  # kept for developers
