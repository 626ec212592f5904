"""`python -m classkd_jax.compare` and `python -m classkd_jax.demo`: the plan of runs,
the table's statistics, the files they write, resume, and one-line errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from classkd_jax import cli, compare, demo
from classkd_jax.cli import UserError
from classkd_jax.comparison import plan, tables
from classkd_jax.comparison.execute import RunResult

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.py")


# --- The plan -----------------------------------------------------------------


def test_a_method_file_becomes_the_same_variant_of_each_method():
    assert plan.method_config("configs/classkd.py:pair=gpt2-xl/gpt2", "gkd") == (
        "configs/gkd.py:pair=gpt2-xl/gpt2"
    )
    assert plan.method_config("configs/sft.py", "minillm") == "configs/minillm.py"


def test_the_demo_config_gets_the_method_as_its_argument():
    assert plan.method_config("configs/demo.py", "gkd") == "configs/demo.py:method=gkd"
    assert plan.method_config("configs/demo.py:size=tiny,method=sft", "kd") == (
        "configs/demo.py:method=kd,size=tiny"
    )


def test_seeds_are_a_count_or_a_list():
    assert plan.parse_seeds("3") == [0, 1, 2]
    assert plan.parse_seeds("0,5,7") == [0, 5, 7]
    for bad in ("0", "x", "1,1"):
        with pytest.raises(UserError, match="--seeds"):
            plan.parse_seeds(bad)


def test_a_sweep_is_a_key_and_its_values():
    assert plan.parse_sweep("misfeedback.weight=0,0.1,0.3") == (
        "misfeedback.weight",
        ["0", "0.1", "0.3"],
    )
    with pytest.raises(UserError, match="KEY=V1,V2"):
        plan.parse_sweep("misfeedback.weight")
    with pytest.raises(UserError, match="use --seeds"):
        plan.parse_sweep("seed=1,2")


def test_every_method_of_a_seed_gets_the_same_seed_and_data_order(tmp_path):
    specs = plan.plan_runs("configs/demo.py", ["sft", "classkd"], [0, 1], [], [], tmp_path)
    assert specs[0].argv[:2] == ("--config", f"{DEMO}:method=sft")
    assert [(s.row, s.seed) for s in specs] == [
        ("sft", 0),
        ("sft", 1),
        ("classkd", 0),
        ("classkd", 1),
    ]
    for s in specs:
        assert f"--config.seed={s.seed}" in s.argv
        assert f"--config.data.seed={s.seed}" in s.argv
        assert s.workdir == tmp_path / "runs" / s.row / f"seed{s.seed}"
    assert len({s.workdir for s in specs}) == 4


def test_a_sweep_adds_a_row_per_value_and_user_overrides_reach_every_run(tmp_path):
    specs = plan.plan_runs(
        "configs/demo.py",
        ["classkd"],
        [0],
        [("misfeedback.weight", ["0", "0.3"])],
        ["--config.steps=50"],
        tmp_path,
    )
    assert [s.row for s in specs] == [
        "classkd misfeedback.weight=0",
        "classkd misfeedback.weight=0.3",
    ]
    assert all("--config.steps=50" in s.argv for s in specs)
    assert "--config.misfeedback.weight=0.3" in specs[1].argv
    assert specs[0].workdir.parent.name == "classkd__misfeedback.weight=0"


def test_mf_twins_sit_beside_their_base_and_bad_twins_are_refused():
    assert plan.parse_methods("gkd+mf,sft,gkd,minillm+mf,classkd") == [
        "sft",
        "gkd",
        "gkd+mf",
        "minillm+mf",
        "classkd",
    ]
    with pytest.raises(UserError, match=r"kd\+mf has no misfeedback variant"):
        plan.parse_methods("kd,kd+mf")
    with pytest.raises(UserError, match="listed twice"):
        plan.parse_methods("gkd+mf,gkd+mf")


@pytest.mark.parametrize(
    "config, flags",
    [
        ("configs/gkd.py:size=tiny", ["--config.misfeedback.weight=0.1"]),
        (  # the demo's ClassKD pace comes along
            "configs/demo.py:size=tiny",
            ["--config.misfeedback.weight=0.1", "--config.classmate.update_every=4"],
        ),
    ],
)
def test_an_mf_twin_is_its_method_with_classkds_misfeedback_sections(tmp_path, config, flags):
    """`gkd+mf` trains configs/gkd.py (or demo's method=gkd) with ClassKD's misfeedback
    and classmate sections; the plain row's runs (and so a finished one) are untouched."""
    from classkd_jax.comparison import execute

    specs = plan.plan_runs(config, ["gkd", "gkd+mf"], [0], [], [], tmp_path)
    plain, twin = specs
    assert (plain.row, twin.row, twin.method) == ("gkd", "gkd+mf", "gkd")
    assert twin.workdir == tmp_path / "runs" / "gkd+mf" / "seed0"
    assert [
        a for a in twin.argv if a not in plain.argv and "workdir" not in a and "runs" not in a
    ] == flags
    assert not any("misfeedback" in a or "classmate" in a for a in plain.argv)
    (_, a), (_, b) = execute.prepare(specs)  # both parse and pass the trainer's checks
    assert float(a.misfeedback.weight) == 0.0 and float(b.misfeedback.weight) == 0.1


def test_a_cross_tokenizer_sweep_runs_each_loss_and_scores_the_teacher_in_its_own_tokens(
    tmp_path,
):
    """configs/demo.py:teacher_tokenizer=sp: a row per loss, each the trainer accepts;
    the teacher's prompts for scoring follow teacher.template and teacher.add_bos."""
    from classkd_jax.comparison import execute

    config = "configs/demo.py:size=tiny,teacher_tokenizer=sp"
    sweep = [plan.parse_sweep("cross_tokenizer.loss=alm,exact,uld")]
    specs = plan.plan_runs(config, ["kd"], [0], sweep, [], tmp_path)
    prepared = execute.prepare(specs)
    assert [str(c.cross_tokenizer.loss) for _, c in prepared] == ["alm", "exact", "uld"]
    (_, c), *_ = prepared
    c.unlock()
    c.teacher.template, c.teacher.add_bos = "alpaca", True
    view = execute.teacher_view(c)
    assert (view.data.template, view.data.add_bos) == ("alpaca", True)
    assert (c.data.template, c.data.add_bos) == ("compact", False)  # the student's, kept


def test_seqkd_runs_share_the_teachers_answers(tmp_path):
    (spec,) = plan.plan_runs("configs/demo.py", ["seqkd"], [3], [], [], tmp_path)
    assert f"--config.seqkd.cache_dir={tmp_path / 'seqkd_cache'}" in spec.argv


def test_compare_owns_the_seed_keys():
    with pytest.raises(UserError, match="from --seeds"):
        plan.check_overrides(["--config.data.seed=4"])
    with pytest.raises(UserError, match="--config.KEY=VALUE"):
        plan.check_overrides(["--steps=4"])


# --- The table ------------------------------------------------------------------


def _result(row, method, seed, rouge, em, seconds):
    spec = plan.RunSpec(row, method, (), seed, (), Path(f"/runs/{row}/seed{seed}"))
    return RunResult(spec, {"rougeL": rouge, "exact_match": em, "n": 600}, seconds, 300)


def test_rows_are_mean_and_sample_std_over_seeds():
    results = [
        _result("sft", "sft", 0, 50.0, 20.0, 10.0),
        _result("sft", "sft", 1, 54.0, 24.0, 12.0),
        _result("classkd", "classkd", 0, 60.0, 30.0, 30.0),
    ]
    sft, classkd = tables.summarize(results)
    assert sft["rouge_l"] == 52.0 and sft["seeds"] == [0, 1]
    assert math.isclose(sft["rouge_l_std"], math.sqrt(8.0))  # ddof=1
    assert classkd["rouge_l_std"] is None  # one seed: no spread
    text = tables.markdown(
        [sft, classkd], {"teacher": {"rougeL": 70.0, "exact_match": 40.0}}, "test"
    )
    assert "| teacher (reference) |" in text
    assert "| sft | 2 | 300 | 52.00 ± 2.83 | 22.00 ± 2.83 | 11 | 1.00 |" in text
    assert "| classkd | 1 | 300 | **60.00** | 30.00 | 30 | 2.73 |" in text


def test_an_mf_row_shows_its_paired_gap_to_the_base_row():
    results = [
        _result("gkd", "gkd", 0, 50.0, 20.0, 10.0),
        _result("gkd", "gkd", 1, 54.0, 24.0, 10.0),
        _result("gkd+mf", "gkd", 0, 51.0, 20.0, 12.0),
        _result("gkd+mf", "gkd", 1, 57.0, 25.0, 12.0),
    ]
    gkd, twin = tables.summarize(results)
    assert "mf_gap" not in gkd
    assert twin["mf_gap"]["base"] == "gkd" and twin["mf_gap"]["seeds"] == [0, 1]
    assert twin["mf_gap"]["rouge_l"] == 2.0  # (1 + 3) / 2
    assert math.isclose(twin["mf_gap"]["rouge_l_std"], math.sqrt(2.0))
    text = tables.markdown([gkd, twin], {}, "test")
    assert "| gkd | 2 | 300 | 52.00 ± 2.83 | 22.00 ± 2.83 | 10 | – | – |" in text
    assert "| gkd+mf | 2 | 300 | **54.00 ± 4.24** | 22.50 ± 3.54 | 12 | – | +2.00 ± 1.41 |" in text
    assert "paired seeds" in text


# --- End to end: the demo (tiny), then compare resuming on its runs ------------


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory, tiny_hf_model_dir):
    """The demo at tiny size, with a tiny random Hugging Face model as both teacher and
    student init (the plumbing, not the numbers: those are in the README)."""
    workdir = tmp_path_factory.mktemp("demo")
    model = tiny_hf_model_dir("llama")
    argv = ["--workdir", str(workdir), "--size", "tiny", "--seeds", "1"]
    paths = [f"--config.teacher.path={model}", f"--config.student.path={model}"]
    assert demo.main([*argv, *paths, "--config.progress=false"]) == 0
    return workdir, model


def test_the_demo_writes_every_models_scores(tiny_demo):
    tiny_demo, _ = tiny_demo
    results = json.loads((tiny_demo / "results.json").read_text())
    assert set(results) == set(demo.KEYS.values())
    for name, entry in results.items():
        assert 0.0 <= entry["rouge_l"] <= 100.0 and 0.0 <= entry["exact_match"] <= 100.0, name
        assert {"rouge_l_std", "exact_match_std", "train_seconds"} <= set(entry), name
    for name in ("sft_student", "gkd_student", "classkd_student"):
        assert results[name]["train_seconds"] > 0 and results[name]["steps"] == 6, name
    for name in ("results.md", "results.csv", "results.png", "curves.png", "table.json"):
        assert (tiny_demo / name).stat().st_size > 0, name
    scored = json.loads((tiny_demo / "runs" / "classkd" / "seed0" / "scores_test.json").read_text())
    # every test prompt that fits data.max_prompt_length with this tokenizer, each scored once
    uids = [r["uid"] for r in scored["records"]]
    assert scored["n"] == len(uids) == len(set(uids)) > 0


def test_retrain_makes_both_models_with_their_commands(tmp_path, monkeypatch):
    """--retrain trains the teacher, then the student init, by SFT with configs/demo.py's
    role variants, and records how (the trainer itself is stubbed: tested elsewhere)."""
    from classkd_jax.training import run

    made = []

    def fake_train(config, workdir):
        made.append((config.method, config.student.shape.hidden_size, config.steps))
        (workdir / "student_hf").mkdir(parents=True)
        return 0

    monkeypatch.setattr(run, "train", fake_train)
    models = demo.retrain(tmp_path, "tiny", [], lambda line: None)
    assert made == [("sft", 32, 6), ("sft", 16, 6)]  # the tiny teacher's width, then the student's
    record = json.loads((models["teacher"] / "TRAINED.json").read_text())
    assert "method=sft,role=teacher,size=tiny" in record["command"] and record["steps"] == 6
    assert models["student_init"] == tmp_path / "shipped" / "student_init" / "student_hf"


def test_compare_resumes_without_retraining_finished_runs(tiny_demo, capsys):
    tiny_demo, model = tiny_demo
    argv = [
        "--config",
        f"{DEMO}:size=tiny",
        "--methods",
        "sft,classkd",
        "--seeds",
        "1",
        "--workdir",
        str(tiny_demo),
        f"--config.teacher.path={model}",
        f"--config.student.path={model}",
        "--config.progress=false",
    ]
    before = (tiny_demo / "runs" / "sft" / "seed0" / "metrics.jsonl").stat().st_mtime_ns
    assert compare.main(argv) == 0
    err = capsys.readouterr().err
    assert "[1/2] sft seed 0: done" in err and "[2/2] classkd seed 0: done" in err
    assert (tiny_demo / "runs" / "sft" / "seed0" / "metrics.jsonl").stat().st_mtime_ns == before
    table = json.loads((tiny_demo / "results.json").read_text())
    assert [r["row"] for r in table["rows"]] == ["sft", "classkd"]
    assert set(table["references"]) == {"teacher", "student_init"}


def test_dry_run_prints_the_train_commands(tmp_path, capsys):
    argv = ["--config", "configs/classkd.py:pair=gpt2-xl/gpt2", "--methods", "gkd,minillm"]
    assert compare.main([*argv, "--seeds", "2", "--workdir", str(tmp_path), "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("python -m classkd_jax.train --config /")
    assert "configs/gkd.py:pair=gpt2-xl/gpt2 --workdir" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "argv, detail",
    [
        (["--sweep", "classkd.lmbda"], "KEY=V1,V2"),
        (["--config.misfeedback.wieght=1"], "has no key misfeedback.wieght"),
        (["--config.misfeedback.variant=cubic"], "misfeedback.variant"),
        (["--split", "train"], "--split 'train'"),
        (["--config.seed=3"], "from --seeds"),
    ],
)
def test_compare_user_errors_are_one_line(tmp_path, capsys, argv, detail):
    base = ["--config", f"{DEMO}:size=tiny", "--seeds", "1", "--workdir", str(tmp_path)]
    assert cli.run(compare.main, [*base, *argv], prog=compare.PROG) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m classkd_jax.compare: error:"), lines
    assert detail in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing trained before the error


def test_python_m_compare_unknown_method_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "classkd_jax.compare", "--config", DEMO, "--methods", "sft,dpo"]
    proc = subprocess.run(
        [*cmd, "--workdir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "python -m classkd_jax.compare: error: --methods 'sft,dpo': unknown ['dpo']; known "
        "('sft', 'kd', 'seqkd', 'gkd', 'minillm', 'distillm', 'classkd')"
    ]


def test_estimate_counts_what_each_method_computes(tmp_path, capsys):
    argv = ["--config", "configs/classkd.py:pair=gpt2-xl/gpt2", "--methods", "sft,kd,gkd,classkd"]
    assert compare.main([*argv, "--workdir", str(tmp_path), "--estimate"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0] in ("sft", "kd", "gkd", "classkd"):
            rows[cells[0]] = float(cells[2])
    # SFT < KD (a teacher forward) < GKD (half the steps sample) < ClassKD (always samples,
    # plus the classmate)
    assert rows["sft"] < rows["kd"] < rows["gkd"] < rows["classkd"], rows
    assert not (tmp_path / "runs").exists()


def test_estimate_with_the_teacher_cache_moves_the_teacher_to_one_build(tmp_path, capsys):
    """`--teacher_cache`: the kd and classkd rows lose their dataset rows' teacher forward
    (KD costs what SFT does), and the teacher runs once over the training examples,
    one build shared by both rows and all seeds."""
    argv = ["--config", "configs/classkd.py:pair=gpt2-xl/gpt2", "--methods", "sft,kd,gkd,classkd"]
    argv += ["--seeds", "3", "--workdir", str(tmp_path), "--estimate"]
    out = {}
    for cached in (False, True):
        assert compare.main(argv + (["--teacher_cache"] if cached else [])) == 0
        text = capsys.readouterr().out
        rows = {}
        for line in text.splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == 7 and cells[2] not in ("PFLOP per seed", "---"):
                rows[cells[0]] = float(cells[2])
        total = float(text.split("All 12 runs: ")[1].split(" PFLOP")[0])
        out[cached] = rows, total
    (live, live_total), (cache, cache_total) = out[False], out[True]
    assert cache["kd"] == live["sft"] == cache["sft"] < live["kd"]
    assert cache["gkd"] == live["gkd"] and cache["classkd"] < live["classkd"]
    assert "teacher cache (1 build(s), once)" in cache and "teacher cache" not in str(live)
    # the build is one teacher forward over the examples: cheaper than the 6 runs' teacher
    saved = 3 * (live["kd"] - cache["kd"] + live["classkd"] - cache["classkd"])
    build = cache["teacher cache (1 build(s), once)"]
    assert cache_total == pytest.approx(live_total - saved + build, abs=5)  # rounded cells
    assert cache_total < live_total
