"""`python -m classkd_jax.compile`: every program of a run compiled for a TPU slice and a
GPU node on this CPU host, with per-device memory and a verdict (exit 0 fits, 3 does not).

Needs the test extra's libtpu and CUDA plugin wheels (no GPU, no driver).
"""

import json
import logging
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from classkd_jax import compile as compile_cli
from classkd_jax import costs
from classkd_jax import train as train_cli
from classkd_jax.training import checks, programs, roles, rollout, run
from classkd_jax.training import data as data_lib
from classkd_jax.training.step import StepBuilder

ROOT = Path(__file__).resolve().parents[1]
TINY = "configs/classkd.py:size=tiny"
# Both step structures (off-policy only, and with samples) in a few steps.
MIXED = ["--config.classkd.lmbda=0.5"]
EXPECTED = {
    "step off=128",
    "step off=128 on P=112",
    "sampler P=112",
    "greedy P=112",
    "dev_loss T=128",
}


def _compile(tmp_path, topology, *extra):
    out = tmp_path / f"{topology.replace(':', '_')}.json"
    argv = ["--config", TINY, "--topology", topology, *MIXED, *extra, "--out", str(out)]
    status = compile_cli.main(argv)
    return status, json.loads(out.read_text())


@pytest.fixture(scope="module")
def tiny_v5e(tmp_path_factory):
    """The tiny config compiled for v5e:2x2 in this process (`--jobs 1`)."""
    return _compile(tmp_path_factory.mktemp("v5e"), "v5e:2x2", "--jobs", "1")


def _check_costs(record, rows):
    """The cost report's fields: present, positive, consistent."""
    assert record["peak"]["flops"] > 0 and record["peak"]["interconnect"] > 0
    for row in rows.values():
        assert row["flops_per_device"] == pytest.approx(row["flops"] / record["devices"])
        assert row["hbm_bytes"] > 0 and row["collective_bytes"] >= row["collective_call_bytes"] >= 0
        assert row["est_binds"] in costs.TERMS and row["est_s"] > 0
        assert row["est_s"] == max(row["est_terms"].values())
        # on TPU, XLA's own count (loop bodies once) is kept beside ours; GPU gives none
        assert ("xla_bytes_accessed" in row) == record["topology"].startswith("v5e")
    for row in rows.values():
        if row["kind"] == "step":
            assert 0 < row["est_mfu"] <= 1 and "est_ms_per_token" not in row
        elif row["kind"] in ("sampler", "greedy"):
            # a decode loop: per-token bytes and bound, and the call runs it for every step
            assert row["est_ms_per_token"] > 0 and row["est_token_binds"] in costs.TERMS
            assert 0 < row["step_hbm_bytes"] < row["hbm_bytes"]
            assert 0 <= row["step_collective_bytes"] <= row["collective_bytes"]
        else:
            assert "est_ms_per_token" not in row and "est_mfu" not in row


@pytest.mark.parametrize("topology", ["v5e:2x2", "h100:8"])
def test_tiny_classkd_compiles_every_program(tmp_path, capsys, topology, request):
    if topology == "v5e:2x2":
        status, record = request.getfixturevalue("tiny_v5e")
    else:
        status, record = _compile(tmp_path, topology, "--jobs", "1")
    assert status == 0 and record["fits"], record["verdict"]
    rows = {r["program"]: r for r in record["programs"]}
    assert set(rows) == EXPECTED
    assert record["devices"] == (4 if topology.startswith("v5e") else 8)
    for row in rows.values():
        assert row["status"] == "fits" and 0 < row["total"] < record["device_memory"]
        assert row["total"] == (
            row["arguments"] + row["outputs"] - row["aliased"] + row["temporaries"]
        )
        assert row["flops"] > 0
    for name in ("step off=128", "step off=128 on P=112"):
        # the donated state is aliased to the new state, byte for byte
        assert rows[name]["aliased"] == rows[name]["donated"] > 0
    assert all(r["aliased"] == 0 for n, r in rows.items() if not n.startswith("step"))
    _check_costs(record, rows)
    if topology == "v5e:2x2":
        return  # compiled by the fixture: its output went to another test's capture
    printed = capsys.readouterr().out
    assert all(name in printed for name in EXPECTED)
    assert "ms/tok" in printed and "not measured" in printed
    assert max(len(line) for line in printed.splitlines()) <= 120
    assert printed.strip().splitlines()[-1].startswith(f"fits: every program fits {topology}")


def test_worker_processes_give_the_same_rows(tmp_path, tiny_v5e):
    """`--jobs 2` (two spawned workers, each building the plan) gives the rows that
    one process gives, in the same order."""
    _, alone = tiny_v5e
    status, record = _compile(tmp_path, "v5e:2x2", "--jobs", "2", "--config.eval_every=0")
    assert status == 0 and record["jobs"] == 2
    names = [r["program"] for r in record["programs"]]
    assert names == [r["program"] for r in alone["programs"] if r["program"] in names]
    assert names == ["step off=128", "step off=128 on P=112", "sampler P=112"]
    same = {r["program"]: r for r in alone["programs"]}
    for row in record["programs"]:
        expected = dict(same[row["program"]], compile_s=None)
        assert dict(row, compile_s=None) == expected


def _samples_of(data, rows, new: int) -> tuple[dict, np.ndarray]:
    """(a sampler's output for the next prompts, `loop.SampleOutput`'s keys and dtypes,
    whose completions are the prompts' dataset responses cut to `new` tokens; the
    prompts' training entries `[B]`)."""
    tokens, mask, index = data.next_prompts_indexed(rows)
    out = np.zeros((len(index), new), np.int32)
    for row, i in enumerate(index):
        ids = data.train.responses[i][:new]
        out[row, : len(ids)] = ids
    lengths = np.asarray([min(len(data.train.responses[i]), new) for i in index])
    samples = {"prompt_tokens": np.asarray(tokens), "prompt_mask": np.asarray(mask)}
    samples.update(tokens=out, mask=np.arange(new)[None] < lengths[:, None])
    return samples, index


def test_a_teacher_with_another_tokenizer_compiles_on_its_own_rows(tmp_path):
    """Tiny cross-tokenizer GKD (the teacher on the SentencePiece-style tokenizer): its
    steps on dataset rows and on samples take the teacher's rows and the alignment
    arrays with the keys, shapes and dtypes of the trainer's batches, the teacher its
    own vocabulary; the dev sums have no teacher (no dev KD with another tokenizer)."""
    cross = ["--config", "configs/demo.py:method=gkd,teacher_tokenizer=sp,size=tiny"]
    cross += ["--config.eval_every=1", "--config.eval.num_examples=0"]
    out = tmp_path / "cross.json"
    argv = [*cross, "--topology", "v5e:2x2", "--programs", "largest", "--jobs", "1"]
    assert compile_cli.main([*argv, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    names = ["step off=128 teacher=128", "step samples P=112 teacher=144"]
    assert [r["program"] for r in record["programs"]] == [*names, "sampler P=112", "dev_loss T=128"]
    assert record["fits"] and all(r["aliased"] > 0 for r in record["programs"][:2])

    # the trainer's batches of the same config (its data pipeline; no step runs)
    config, _ = train_cli.parse_flags(cross, workdir=False)
    mesh = run.make_mesh(config)
    plan = programs.plan(config, mesh)
    tokenizer, _ = roles.resolve_tokenizer(config)
    teacher_tok, _ = roles.resolve_teacher_tokenizer(config)
    data = data_lib.build(
        config, tokenizer, sampling_batch=8, needs_prompts=True, teacher_tokenizer=teacher_tok
    )
    rows = StepBuilder(config, plan.models, mesh).rows
    off = data.next_off(rows)
    samples = data.add_teacher_to_samples(
        *_samples_of(data, rows, int(config.sampling.max_new_tokens)), rows
    )
    real = {
        f"step off={off['tokens'].shape[1]} teacher={off['teacher_tokens'].shape[1]}": off,
        f"step samples P={samples['prompt_tokens'].shape[1]} teacher="
        f"{samples['teacher_tokens'].shape[1]}": samples,
    }
    assert set(real) == set(names)
    shapes = lambda b: {k: (tuple(v.shape), v.dtype) for k, v in b.items()}  # noqa: E731
    vocab = len(teacher_tok)
    assert plan.models.teacher.config.vocab_size == vocab != plan.models.student.config.vocab_size
    for step in (p for p in plan.programs if p.name in real):
        (_, frozen, batch, _), _ = step.lower().args_info
        assert shapes(batch["off"]) == shapes(real[step.name]), step.name
        assert any(vocab in leaf.shape for leaf in jax.tree.leaves(frozen["teacher"]))


def test_a_cached_kd_run_compiles_without_the_teacher(tmp_path):
    """Tiny KD from `teacher.cache`: its step takes the dataset rows with the cached
    draws (`CACHE_KEYS`, [B, T, N], the trainer's dtypes) and no teacher, so its
    counted FLOPs are the student's forward and backward alone (as SFT's), and
    the dev KD reads the cache's dev draws. ClassKD with on-policy steps keeps the
    teacher for them (`checks.live_teacher`)."""
    from classkd_jax.training.step import CACHE_KEYS

    base = ["--config", "configs/demo.py:method=kd,size=tiny", "--config.eval_every=1"]
    cached = [*base, f"--config.teacher.cache={tmp_path / 'cache'}"]
    out = tmp_path / "kd.json"
    argv = [*cached, "--topology", "v5e:2x2", "--programs", "largest", "--jobs", "1"]
    assert compile_cli.main([*argv, "--out", str(out)]) == 0
    record = {r["program"]: r for r in json.loads(out.read_text())["programs"]}
    assert {"step off=128", "dev_loss T=128"} <= set(record)

    plans = {}
    for name, argv in (("live", base), ("cached", cached), ("sft", base)):
        config, _ = train_cli.parse_flags(argv, workdir=False)
        with config.unlocked():
            config.method = "sft" if name == "sft" else config.method
        plans[name] = programs.plan(config, run.make_mesh(config))
    n = int(config.teacher_cache.num_samples)
    by_name = {k: {p.name: p for p in v.programs} for k, v in plans.items()}
    step, dev = by_name["cached"]["step off=128"], by_name["cached"]["dev_loss T=128"]
    (_, frozen, batch, _), _ = step.lower().args_info
    assert frozen == {}
    rows = batch["off"]["tokens"].shape[0]
    for key in CACHE_KEYS:
        dtype = np.float32 if key == "cache_logp" else np.int32
        assert batch["off"][key].shape == (rows, 128, n) and batch["off"][key].dtype == dtype
    live_step = by_name["live"]["step off=128"]
    assert step.flops == by_name["sft"]["step off=128"].flops < live_step.flops
    assert record["step off=128"]["flops"] == step.flops
    (_, teacher, dev_batch), _ = dev.lower().args_info
    assert teacher is None and set(CACHE_KEYS) <= set(dev_batch)
    assert dev.flops < by_name["live"]["dev_loss T=128"].flops

    config, _ = train_cli.parse_flags(
        [*cached, "--config.method=classkd", "--config.classkd.lmbda=0.5"], workdir=False
    )
    plan = programs.plan(config, run.make_mesh(config))
    on = next(p for p in plan.programs if p.name.startswith("step off=128 on"))
    (_, frozen, batch, _), _ = on.lower().args_info
    assert "teacher" in frozen and set(CACHE_KEYS) <= set(batch["off"])


def test_a_run_that_cannot_fit_exits_3_with_one_line(tmp_path):
    """A tiny run with a teacher of 2 x 3.2G MLP parameters: 25 GiB of float32
    weights on every 16 GiB v5e chip (mesh data=4 replicates them)."""
    big = dict(hidden_size=16384, intermediate_size=65536)
    cmd = [sys.executable, "-m", "classkd_jax.compile", "--config", TINY, "--topology", "v5e:2x2"]
    cmd += [f"--config.teacher.shape.{k}={v}" for k, v in big.items()]
    cmd += ["--programs", "largest-step"]  # the one program that decides it
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("does not fit v5e:2x2: ") and "remat=full" in last and "fsdp" in last
    assert "GiB" in last or "refused" in last
    # the terminal stays quiet: one header line, no plugin or libtpu chatter
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("classkd on v5e:2x2: 4 x TPU v5 lite")


def test_user_errors_name_the_flag():
    cases = [
        (["--config", TINY], "--topology is required"),
        (["--config", TINY, "--topology", "v5e"], "expected KIND:SHAPE"),
        (["--config", TINY, "--topology", "v5e:3x3"], "--topology v5e:3x3: "),
        (["--config", TINY, "--topology", "v5e:2x2", "--config.mesh.fsdp=3"], "the 4 devices"),
        (["--config", TINY, "--topology", "v5e:2x2", "--config.wrong=1"], "no key wrong"),
        (["--config", TINY, "--topology", "v5e:2x2", "--jobs", "0"], "--jobs 0: expected"),
        (["--config", TINY, "--topology", "v5e:2x2", "--programs", "some"], "--programs some"),
        # 8 rows split over 16 data shards of v5e:4x4 (4 hosts)
        (["--config", TINY, "--topology", "v5e:4x4"], "data.batch_size=8 does not split"),
    ]
    from classkd_jax import cli

    for argv, expected in cases:
        with pytest.raises(cli.UserError) as e:
            compile_cli.main(argv)
        assert expected in str(e.value), (argv, str(e.value))


def test_batch_checks_use_the_topology_hosts(tmp_path):
    """v5e:4x4 has 4 hosts: a mesh with one data shard (tensor over the 16 chips)
    still needs the rows to split over the 4 hosts, whatever this host runs."""
    config, _ = train_cli.parse_flags(["--config", TINY], workdir=False)
    from classkd_jax import topology

    topo = topology.get("v5e:4x4")
    assert topo.processes == 4 and len(topo.devices) == 16
    with config.unlocked():
        config.mesh.data, config.mesh.tensor = 1, 16
        config.data.batch_size = 4
    mesh = run.make_mesh(config, devices=topo.devices)
    assert run.check_batch_sizes(config, mesh, processes=topo.processes) == 4
    with config.unlocked():
        config.data.batch_size = 2
    with pytest.raises(Exception, match="4 process"):
        run.check_batch_sizes(config, mesh, processes=topo.processes)


class _Lowerings(logging.Handler):
    """Counts the jitted programs JAX lowers, by name (`jax_log_compiles`)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.names: list[str] = []

    def emit(self, record):
        if record.getMessage().startswith("Compiling "):
            self.names.append(record.args[0])


def test_the_program_list_is_what_a_real_tiny_run_compiles(tmp_path):
    argv = ["--config", TINY, *MIXED, "--workdir", str(tmp_path / "run")]
    argv += ["--config.steps=4", "--config.eval_every=4", "--config.log_every=4"]
    config, workdir = train_cli.parse_flags(argv)
    draws = [rollout.draw(int(config.seed), s, "classkd") < 0.5 for s in range(4)]
    assert any(draws) and not all(draws)  # both step structures occur
    mesh = run.make_mesh(config)
    listed = programs.plan(config, mesh).programs
    assert {p.name for p in listed} == EXPECTED
    assert checks.samples_prompts(config)

    # Validation's greedy sampler is cached by (model config, mesh) across calls
    # (`completions._sampler`): an earlier test in this worker may hold it compiled.
    from classkd_jax.sampling import completions

    completions._sampler.cache_clear()
    logger = logging.getLogger("jax._src.interpreters.pxla")
    counter = _Lowerings()
    logger.addHandler(counter)
    jax.config.update("jax_log_compiles", True)
    try:
        assert run.train(config, workdir) == 0
    finally:
        jax.config.update("jax_log_compiles", False)
        logger.removeHandler(counter)
    names = counter.names
    kinds = {"jit(student_step)": "step", "jit(run)": "sampler", "jit(sums)": "dev_loss"}
    compiled = {k: names.count(n) for n, k in kinds.items()}
    listed_kinds = [("sampler" if p.kind == "greedy" else p.kind) for p in listed]
    assert compiled == {k: listed_kinds.count(k) for k in compiled}, names
