"""The baselines with machinery of their own: SeqKD, DistiLLM and MiniLLM in the trainer.

Each runs a few `size=tiny` steps through `classkd_jax.train.main` (the CLI's
function), DistiLLM and MiniLLM with a small plain-text stream for their
pre-training term. Their own pieces are specified directly: MiniLLM's
advantages, importance weights, clipped objective and PPO phases;
DistiLLM's adaptive schedule and replay buffer; SeqKD's cache reuse. A run
preempted by a real SIGTERM (sent from inside the run, at a chosen step)
and resumed ends bit-identical to one never stopped, the replay buffer and
the rollout store included.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from classkd_jax import checkpoint, cli, losses, train
from classkd_jax.config_utils import import_sibling
from classkd_jax.data.synthetic import make_synthetic_task
from classkd_jax.models import Transformer
from classkd_jax.sharding import make_mesh
from classkd_jax.training import checks, host_state, minillm, objectives, roles
from classkd_jax.training import seqkd as seqkd_lib
from classkd_jax.training.distillm import AdaptiveSchedule
from classkd_jax.training.replay import ReplayBuffer
from classkd_jax.training.rollout import BatchPlan
from classkd_jax.training.run import build_models
from classkd_jax.training.state import params_shardings
from classkd_jax.training.step import StepBuilder

STEPS = {"seqkd": 6, "distillm": 8, "minillm": 6}
STOP_AT = {"distillm": 4, "minillm": 2}  # MiniLLM: mid-way through its first phase


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _argv(method: str, workdir: Path, lm_path: Path, *extra: str) -> list[str]:
    argv = ["--config", f"configs/{method}.py:size=tiny", "--workdir", str(workdir)]
    argv += [f"--config.steps={STEPS[method]}", f"--config.eval_every={STEPS[method]}"]
    if method != "seqkd":
        argv.append(f"--config.data.lm_path={lm_path}")
    else:  # the teacher answers every training prompt: fewer prompts, a faster test
        argv.append("--config.data.synthetic.num_train=160")
    return argv + list(extra)


def _state(workdir: Path) -> dict:
    root = workdir / "checkpoints"
    items = ("student_params", "opt_states", "counters")
    arrays, meta = checkpoint.restore_checkpoint(root, dict.fromkeys(items))
    return {k: jax.tree.map(np.asarray, v) for k, v in arrays.items()}, meta


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory) -> Path:
    """A small plain-text corpus: the synthetic task's responses, one per line."""
    path = tmp_path_factory.mktemp("lm") / "corpus.txt"
    examples = make_synthetic_task(7, num_train=300, num_dev=1, num_test=1)["train"]
    path.write_text("\n".join(ex.response for ex in examples) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, lm_path):
    """One tiny run of each baseline, counting MiniLLM's rollout collections."""
    root = tmp_path_factory.mktemp("baselines")
    collections = []
    original = BatchPlan._collect

    def counting(self, step, *args):
        collections.append(step)
        return original(self, step, *args)

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BatchPlan, "_collect", counting)
        for method in STEPS:
            assert train.main(_argv(method, root / method, lm_path)) == 0
            out[method] = root / method
    out["minillm_collections"] = collections
    return out


# ----- every baseline -----


@pytest.mark.parametrize(
    "method, terms",
    [
        ("seqkd", ("ce",)),
        ("distillm", ("skew_kd", "lm_ce", "distillm_phi", "replay_buffer_rows")),
        ("minillm", ("pg", "single_step", "ratio", "clip_frac", "lm_ce", "lm_kd")),
    ],
)
def test_each_baseline_trains_tiny_steps_with_finite_loss(runs, method, terms):
    records = [r for r in _records(runs[method]) if "loss" in r]
    assert [r["step"] for r in records] == list(range(2, STEPS[method] + 1, 2))
    for r in records:
        assert np.isfinite(r["loss"]) and r["tokens_per_s"] > 0
        for term in terms:
            assert np.isfinite(r[term]), (term, r)
    config = json.loads((runs[method] / "config.json").read_text())
    assert config["method"] == method
    assert (runs[method] / "student_hf" / "config.json").is_file()


# ----- SeqKD -----


def test_seqkd_trains_on_the_teachers_responses_and_reuses_them(runs, tmp_path, monkeypatch):
    cache = runs["seqkd"] / "seqkd"
    assert (cache / "fingerprint.json").is_file() and list(cache.glob("part-*.npz"))
    calls = []
    original = seqkd_lib.complete_token_ids
    monkeypatch.setattr(
        seqkd_lib, "complete_token_ids", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    again = tmp_path / "again"
    argv = _argv("seqkd", again, Path(), f"--config.seqkd.cache_dir={cache}")
    assert train.main(argv) == 0
    assert calls == []  # nothing regenerated
    first = [r["loss"] for r in _records(runs["seqkd"]) if "loss" in r]
    second = [r["loss"] for r in _records(again) if "loss" in r]
    assert first == second  # the same training set, so the same run


def test_seqkd_refuses_a_cache_made_with_other_sampling_settings(runs, tmp_path):
    cache = runs["seqkd"] / "seqkd"
    argv = _argv(
        "seqkd", tmp_path / "other", Path(), f"--config.seqkd.cache_dir={cache}",
        "--config.sampling.temperature=0.5",
    )  # fmt: skip
    with pytest.raises(cli.UserError, match="temperature"):
        train.main(argv)


# ----- DistiLLM -----


def test_phi_rises_exactly_when_the_dev_loss_rises_by_the_threshold():
    s = AdaptiveSchedule(phi=0.0, threshold=0.1, step_size=0.1)
    s.start(2.0)
    assert not s.observe(2.0999) and s.phi == 0.0  # below the threshold
    assert s.observe(2.1) and s.phi == pytest.approx(0.1)  # at it: phi rises ...
    assert s.reference == 2.1  # ... and the reference moves
    assert not s.observe(2.15) and s.phi == pytest.approx(0.1)
    assert not s.observe(1.0)  # a falling loss never moves phi or the reference
    assert s.reference == 2.1
    for loss in (2.3, 2.5, 2.7, 2.9, 3.1, 3.3, 3.5, 3.7, 3.9, 4.1, 4.3):
        s.observe(loss)
    assert s.phi == 1.0  # capped
    fixed = AdaptiveSchedule(phi=0.3, adaptive=False)
    fixed.start(1.0)
    assert not fixed.observe(9.0) and fixed.phi == 0.3


def test_the_schedule_samples_then_replays_as_the_reference_does():
    s = AdaptiveSchedule(phi=0.5)
    total, cap = 100, 16
    # phi (1 - t/T) at t = 49 (the reference's step 50) is 0.25.
    assert s.choose(0.2, 49, total, buffer_len=cap, capacity=cap) == "sample"
    assert s.choose(0.3, 49, total, buffer_len=cap, capacity=cap) == "replay"
    assert s.choose(0.3, 49, total, buffer_len=cap - 1, capacity=cap) == "sample"  # not full
    assert s.choose(0.5, 49, total, buffer_len=cap, capacity=cap) == "data"
    zero = AdaptiveSchedule(phi=0.0)
    kinds = {
        zero.choose(u, t, total, buffer_len=n, capacity=cap)
        for u in np.linspace(0, 0.999, 50)
        for t in range(0, total, 7)
        for n in (0, cap)
    }
    assert kinds == {"data"}  # with phi = 0 nothing is ever sampled


def _samples(rng, rows, prompt, new, offset):
    lengths = rng.integers(1, prompt + 1, size=rows)
    mask = np.arange(prompt)[None] >= prompt - lengths[:, None]  # left-padded
    tokens = np.where(mask, np.arange(rows)[:, None] + offset, 0).astype(np.int32)
    done = rng.integers(1, new + 1, size=rows)
    new_mask = np.arange(new)[None] < done[:, None]
    return {
        "prompt_tokens": tokens,
        "prompt_mask": mask,
        "tokens": np.where(new_mask, tokens[:, -1:] + 1000, 0).astype(np.int32),
        "mask": new_mask,
    }


def test_replay_batches_are_rows_of_the_buffer_which_survives_a_round_trip():
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(capacity=12, prompt_width=16, new_tokens=5)
    pushed = [_samples(rng, 4, p, 5, 100 * i) for i, p in enumerate((8, 16, 8, 16))]
    for batch in pushed:
        buffer.push(batch)
    assert len(buffer) == 12  # FIFO: the first batch fell out
    kept = {tuple(b["tokens"][i]) for b in pushed[1:] for i in range(4)}
    out = buffer.sample(np.random.default_rng(1), 6, prompt_buckets=(8, 16))
    assert out["prompt_tokens"].shape[1] in (8, 16) and out["tokens"].shape == (6, 5)
    assert {tuple(r) for r in out["tokens"]} <= kept
    assert len({tuple(r) for r in out["tokens"]}) == 6  # without replacement
    again = ReplayBuffer(capacity=12, prompt_width=16, new_tokens=5)
    again.restore(json.loads(json.dumps(buffer.state())))
    same = again.sample(np.random.default_rng(1), 6, prompt_buckets=(8, 16))
    jax.tree.map(np.testing.assert_array_equal, out, same)


def test_distillm_run_sampled_replayed_and_checkpointed_its_buffer(runs):
    record = [r for r in _records(runs["distillm"]) if "loss" in r][-1]
    counts = {k: record[f"distillm_{k}_steps"] for k in ("sample", "replay", "data")}
    assert sum(counts.values()) == STEPS["distillm"] and counts["sample"] > 0
    _, meta = _state(runs["distillm"])
    rows = host_state.unpack(meta["plan"]["distillm"]["buffer"])
    capacity = 16  # the tiny config's: the oldest rows fell out
    assert (
        rows["tokens"].shape[0]
        == record["replay_buffer_rows"]
        == min(8 * counts["sample"], capacity)
    )
    assert meta["plan"]["distillm"]["reference"] is not None  # dev loss before training


# ----- MiniLLM -----


def _m(**changes):
    base = import_sibling("configs/x.py", "minillm").get_config("size=tiny").minillm
    out = ml_collections.ConfigDict(base.to_dict())
    out.update(changes)
    return out


def test_advantages_are_the_discounted_length_normalised_returns():
    rewards = jnp.asarray([[1.0, 2.0, 3.0, 50.0], [4.0, 0.0, 0.0, 0.0]])
    mask = jnp.asarray([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # 50 sits on padding
    batch = {"rewards": rewards, "loss_mask": mask}
    got = np.asarray(minillm.advantages(batch, _m(gamma=0.5, whiten=False)))
    # returns 2.75, 3.5, 3 over 3, 2, 1 remaining tokens; the padded reward is ignored
    np.testing.assert_allclose(got[0], [2.75 / 3, 3.5 / 2, 3.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(got[1], [4.0, 0, 0, 0], rtol=1e-6)
    raw = np.asarray(minillm.advantages(batch, _m(gamma=0.5, whiten=False, length_norm=False)))
    np.testing.assert_allclose(raw[0, :3], [2.75, 3.5, 3.0], rtol=1e-6)
    white = np.asarray(minillm.advantages(batch, _m(gamma=0.5)))
    scored = white[np.asarray(mask) > 0]
    assert abs(scored.mean()) < 1e-5 and scored.std() == pytest.approx(1.0, rel=1e-3)
    assert white[0, 3] == 0.0


def test_the_clipped_objective_has_no_gradient_outside_the_clip_range():
    config = import_sibling("configs/x.py", "minillm").get_config("size=tiny")
    with config.unlocked():
        config.minillm.single_step = False
    (part,) = objectives.minillm_parts(config)
    q = jax.random.normal(jax.random.key(0), (3, 11))
    p = jax.random.normal(jax.random.key(1), (3, 11))
    targets = jnp.asarray([1, 4, 7])
    logq = losses.token_log_probs(q, targets)

    def grad(ratio, advantage):
        ex = {
            "targets": targets,
            "old_logprobs": logq - jnp.log(ratio),  # exp(logq - old) = ratio at q
            "importance_weights": jnp.ones(3),
            "advantages": jnp.full(3, advantage),
        }
        return jax.grad(lambda x: part.token_fn((x, p), ex)[0].sum())(q)

    assert float(jnp.abs(grad(1.5, 1.0)).max()) == 0.0  # above 1 + 0.2, A > 0: clipped
    assert float(jnp.abs(grad(0.5, -1.0)).max()) == 0.0  # below 1 - 0.2, A < 0: clipped
    assert float(jnp.abs(grad(1.1, 1.0)).max()) > 0  # inside the range
    assert float(jnp.abs(grad(1.5, -1.0)).max()) > 0  # outside, on the unclipped side


def test_inner_epochs_reuse_each_phases_rollouts(runs):
    phases = minillm.Phases(rollouts=16, minibatch=8, epochs=2, seed=0)
    assert phases.steps_per_phase == 4
    for phase in range(2):
        steps = range(4 * phase, 4 * phase + 4)
        assert {phases.phase(t) for t in steps} == {phase}
        for epoch in range(2):
            rows = np.concatenate([phases.rows(t) for t in steps[2 * epoch : 2 * epoch + 2]])
            assert sorted(rows) == list(range(16))  # each rollout once per epoch
    # The run collected rollouts at the first step of each phase only.
    assert runs["minillm_collections"] == [0, 4]
    records = [r for r in _records(runs["minillm"]) if "loss" in r]
    assert [r["minillm_phase"] for r in records] == [0, 0, 1]


def test_store_minibatches_are_trimmed_to_the_bucket_their_rows_need():
    store = minillm.RolloutStore(width=16 + 4)
    store.begin(0)
    for prompt in (8, 16):  # two sampling calls, two prompt buckets
        chunk = {k: np.zeros((2, prompt + 4), np.float32) for k in minillm.STORE_KEYS}
        chunk["segment_ids"][:, -6:] = 1  # two prompt tokens + four new ones
        chunk["loss_mask"][:, -5:-1] = 1
        chunk["rewards"][:, -5:-1] = np.arange(8).reshape(2, 4)
        store.add(chunk)
    store.finish()
    full = store.minibatch(np.arange(4))
    trimmed = store.minibatch(np.arange(4), widths=(8 + 4, 16 + 4))
    assert full["tokens"].shape == (4, 20) and trimmed["tokens"].shape == (4, 12)
    for k in minillm.STORE_KEYS:  # only never-scored left padding was cut
        np.testing.assert_array_equal(trimmed[k], full[k][:, -12:])
        assert (full[k][:, :-12] == 0).all()


@pytest.fixture(scope="module")
def scorer():
    """MiniLLM's jitted rollout scorer on the tiny pair, on one device."""

    def build(teacher_mix):
        config = import_sibling("configs/x.py", "minillm").get_config("size=tiny")
        with config.unlocked():
            config.minillm.teacher_mix = teacher_mix
        mesh = make_mesh(data=1, devices=jax.devices()[:1])
        tokenizer, where = roles.resolve_tokenizer(config)
        context, why = checks.context_length(config)
        sources = roles.plan_roles(config, tokenizer, where, context, why)
        models = build_models(config, sources, 6, len(tokenizer))
        student = roles.load_params(sources["student"], mesh, (0, 2))
        teacher = roles.load_params(sources["teacher"], mesh, (0, 1))
        builder = StepBuilder(config, models, mesh)
        fn = builder.scorer(
            params_shardings(models.student.config, mesh),
            params_shardings(models.teacher.config, mesh),
        )
        return fn, models, student, teacher, tokenizer

    return build


def _one_token_samples(tokenizer, rows=4, prompt=12, new=6):
    rng = np.random.default_rng(3)
    lengths = rng.integers(3, prompt + 1, size=rows)
    mask = np.arange(prompt)[None] >= prompt - lengths[:, None]
    tokens = np.where(mask, rng.integers(4, len(tokenizer), size=(rows, prompt)), 0)
    completion = np.zeros((rows, new), np.int32)
    completion[:, 0] = tokenizer.eos_token_id
    new_mask = np.zeros((rows, new), bool)
    new_mask[:, 0] = True
    return {
        "prompt_tokens": jnp.asarray(tokens, jnp.int32),
        "prompt_mask": jnp.asarray(mask),
        "tokens": jnp.asarray(completion),
        "mask": jnp.asarray(new_mask),
    }


@pytest.mark.parametrize("teacher_mix", [0.0, 0.2])
def test_rollouts_are_scored_at_their_tokens_with_the_importance_weight(scorer, teacher_mix):
    """The label shift: a one-token rollout (its EOS) is scored at exactly one
    position, the last prompt token, with log q_old, w and r from full forwards."""
    fn, models, student, teacher, tokenizer = scorer(teacher_mix)
    samples = _one_token_samples(tokenizer)
    out = jax.device_get(fn(student, teacher, samples))
    prompt = samples["prompt_tokens"].shape[1]
    assert out["loss_mask"].sum(axis=1).tolist() == [1.0] * 4
    assert (out["loss_mask"][:, prompt - 1] == 1).all()
    assert (out["targets"][:, prompt - 1] == tokenizer.eos_token_id).all()

    def logp_eos(cfg, params):
        logits = (
            Transformer(cfg)
            .apply({"params": params}, out["tokens"], out["positions"], out["segment_ids"])
            .logits[:, prompt - 1, : len(tokenizer)]
        )
        return np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32))[:, tokenizer.eos_token_id])

    logq = logp_eos(models.student.config, student)
    logp = logp_eos(models.teacher.config, teacher)
    np.testing.assert_allclose(out["old_logprobs"][:, prompt - 1], logq, rtol=1e-5, atol=1e-6)
    weights = out["importance_weights"][:, prompt - 1]
    if teacher_mix == 0:
        assert (out["importance_weights"] == out["loss_mask"]).all()  # exactly 1, scored only
    else:
        mixed = np.log(0.8 * np.exp(logq) + 0.2 * np.exp(logp))
        np.testing.assert_allclose(weights, np.exp(logq - mixed), rtol=1e-5)
    np.testing.assert_allclose(
        out["rewards"][:, prompt - 1], np.clip((logp - logq) / 0.5, -100, 100), rtol=1e-4
    )
    assert (out["rewards"][out["loss_mask"] == 0] == 0).all()


# ----- preemption -----


@pytest.mark.parametrize("method", ["distillm", "minillm"])
def test_sigterm_then_resume_is_bit_identical(runs, lm_path, tmp_path, monkeypatch, method):
    """A real SIGTERM arrives while step STOP_AT is built; the run checkpoints
    (buffer or rollout store included) and exits 143; the same command resumes
    and ends with the uninterrupted run's parameters, optimizer state and plan."""
    workdir = tmp_path / method
    original = BatchPlan.batch

    def batch(self, step, *args):
        if step == STOP_AT[method]:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, *args)

    with monkeypatch.context() as mp:
        mp.setattr(BatchPlan, "batch", batch)
        assert train.main(_argv(method, workdir, lm_path)) == 143
    assert checkpoint.latest_step(workdir / "checkpoints") == STOP_AT[method] + 1
    assert train.main(_argv(method, workdir, lm_path)) == 0
    _assert_same_run(runs[method], workdir, method)


def _assert_same_run(reference: Path, workdir: Path, method: str) -> None:
    """The same final arrays, plan (replay buffer or rollout store) and logged steps."""
    (a, meta_a), (b, meta_b) = _state(reference), _state(workdir)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    plan_a, plan_b = meta_a["plan"][method], meta_b["plan"][method]
    packed = "buffer" if method == "distillm" else "arrays"
    jax.tree.map(
        np.testing.assert_array_equal,
        host_state.unpack(plan_a.pop(packed)),
        host_state.unpack(plan_b.pop(packed)),
    )
    assert plan_a == plan_b
    logged = [r["step"] for r in _records(workdir) if "loss" in r]
    assert logged == list(range(2, STEPS[method] + 1, 2))


@pytest.mark.parametrize("method", ["distillm", "minillm"])
def test_two_sigkills_then_rerun_is_bit_identical(runs, lm_path, tmp_path, method):
    """SIGKILL to the real process's group twice, once at a seeded random moment and
    once during a checkpoint save (checkpoints every 2 steps, so MiniLLM's are
    mid-phase), the same command rerun each time: the run ends as the
    uninterrupted one, the replay buffer or the rollout store included. (ClassKD's
    test in test_train_cli.py kills three times.)"""
    from tests.killing import kill_and_rerun

    workdir = tmp_path / method
    argv = _argv(method, workdir, lm_path, "--config.checkpoint_every=2")
    attempts = kill_and_rerun(argv, workdir, seed=len(method), kills=2, total_steps=STEPS[method])
    assert attempts[-1].returncode == 0, attempts[-1].output[-3000:]
    for a in attempts[:-1]:
        assert a.returncode == -signal.SIGKILL and a.killed, a.output[-2000:]
    _assert_same_run(runs[method], workdir, method)


# ----- the on-policy label shift, for the baselines' own batch paths -----


def test_a_one_token_replayed_sample_is_scored_at_exactly_one_position():
    """DistiLLM's replay batches (prompts re-trimmed to a bucket) are scored like
    fresh samples: a one-token completion at the last prompt position only."""
    from classkd_jax.training.step import scored_batch

    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(capacity=8, prompt_width=16, new_tokens=4)
    batch = _samples(rng, 8, 8, 4, 0)
    batch["tokens"][:] = 0
    batch["tokens"][:, 0] = 2  # EOS
    batch["mask"][:] = False
    batch["mask"][:, 0] = True
    buffer.push(batch)
    out = buffer.sample(np.random.default_rng(1), 4, prompt_buckets=(8, 16))
    prompt = out["prompt_tokens"].shape[1]
    assert prompt == 8  # trimmed back to the bucket its prompts came from
    scored = jax.device_get(scored_batch(jax.tree.map(jnp.asarray, out)))
    assert scored["loss_mask"].sum(axis=1).tolist() == [1.0] * 4
    assert (scored["loss_mask"][:, prompt - 1] == 1).all() and (
        scored["targets"][:, prompt - 1] == 2
    ).all()


def test_a_one_token_teacher_response_is_scored_at_exactly_one_position(tmp_path, monkeypatch):
    """SeqKD: a teacher that answers with EOS alone gives examples whose only
    scored position is their last prompt token, predicting EOS."""
    from classkd_jax.training import data as data_lib

    config = import_sibling("configs/x.py", "seqkd").get_config("size=tiny")
    with config.unlocked():
        config.eval_every = 0
    tokenizer, _ = roles.resolve_tokenizer(config)
    data = data_lib.build(config, tokenizer, sampling_batch=8, needs_prompts=False)
    eos = tokenizer.eos_token_id
    monkeypatch.setattr(
        seqkd_lib, "complete_token_ids", lambda _, prompts, **k: [[eos]] * len(prompts)
    )
    train_set = seqkd_lib.teacher_dataset(
        data.train, (None, None), cache_dir=tmp_path, fingerprint={}, max_new_tokens=4,
        temperature=1.0, top_k=0, top_p=1.0, greedy=True, seed=0, batch_size=8, eos_id=eos,
        pad_id=tokenizer.pad_token_id, max_length=128, message=lambda _: None,
    )  # fmt: skip
    assert all(r.tolist() == [eos] for r in train_set.responses)
    batch = next(data.with_train(config, tokenizer, train_set).off)
    examples = sum(len(set(row[row > 0].tolist())) for row in batch["segment_ids"])
    assert batch["loss_mask"].sum() == examples  # one scored position per example
    assert (batch["targets"][batch["loss_mask"] > 0] == eos).all()
    last_prompt = batch["loss_mask"] > 0
    following = np.roll(batch["segment_ids"], -1, axis=1)
    assert (batch["segment_ids"][last_prompt] == following[last_prompt]).all()
