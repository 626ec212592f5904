"""The jitted train step (`classkd_jax.training.step`) through its real pieces.

ClassKD is the method under test: it exercises everything (teacher in the
step, the student on dataset rows and on its samples, misfeedback, the
classmate's gated update). Batches come from the real data pipeline (the
tiny synthetic task); the student's "samples" are fixed token rows so that
every mesh trains on exactly the same tokens. Compiles dominate the cost,
so each harness compiles its program once and the tests share them.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classkd_jax import losses
from classkd_jax.config_utils import import_sibling, with_changes
from classkd_jax.data import to_global
from classkd_jax.models import Transformer
from classkd_jax.sharding import make_mesh
from classkd_jax.training import checks, objectives, roles
from classkd_jax.training import data as data_lib
from classkd_jax.training.run import build_models, initial_state
from classkd_jax.training.state import params_shardings, run_state_shardings
from classkd_jax.training.step import SCORED_KEYS, StepBuilder, scored_batch

STEPS = 2
NEW = 16  # completion length of the fixed samples (= sampling.max_new_tokens)


def tiny_config(**changes):
    """The tiny ClassKD config. Adam's eps is raised from 1e-8 so that its first
    steps, which divide each gradient entry by its own magnitude, do not turn
    ~1e-10 reduction-order noise in near-zero entries into visible parameter
    differences between meshes or loss paths."""
    config = import_sibling("configs/x.py", "classkd").get_config("size=tiny")
    # steps=24 as in tests/test_train_cli.py: the same program, compiled once.
    changes = {"student.eps": 1e-6, "classmate.eps": 1e-6, "steps": 24, **changes}
    return with_changes(config, changes)


def host_batches(config, tokenizer):
    """STEPS host batches: {'off': packed rows, 'on': fixed samples of real prompts}."""
    data = data_lib.build(config, tokenizer, sampling_batch=8, needs_prompts=True)
    rng = np.random.default_rng(0)
    eos = tokenizer.eos_token_id
    out = []
    for _ in range(STEPS):
        off = next(data.off)
        prompts = next(data.prompts)
        lengths = rng.integers(1, NEW + 1, size=8)
        tokens = rng.integers(3, len(tokenizer), size=(8, NEW)).astype(np.int32)
        mask = np.arange(NEW)[None] < lengths[:, None]
        tokens[np.arange(8), lengths - 1] = eos  # each sample ends with its EOS
        tokens = np.where(mask, tokens, tokenizer.pad_token_id).astype(np.int32)
        on = {
            "prompt_tokens": prompts["tokens"],
            "prompt_mask": prompts["mask"].astype(bool),
            "tokens": tokens,
            "mask": mask,
        }
        out.append({"off": {k: off[k] for k in SCORED_KEYS}, "on": on})
    return out


class Harness:
    """One config on one mesh: models from their (host-drawn) init, the jitted step."""

    def __init__(self, config, mesh):
        self.config, self.mesh = config, mesh
        self.tokenizer, where = roles.resolve_tokenizer(config)
        context, why = checks.context_length(config)
        self.sources = roles.plan_roles(config, self.tokenizer, where, context, why)
        self.models = build_models(config, self.sources, config.steps, len(self.tokenizer))
        self.teacher = roles.load_params(self.sources["teacher"], mesh, (0, 1))
        self.builder = StepBuilder(config, self.models, mesh)
        opt = lambda r: (r.config, r.optimizer)
        shardings = run_state_shardings(mesh, opt(self.models.student), opt(self.models.classmate))
        frozen_sh = {"teacher": params_shardings(self.models.teacher.config, mesh)}
        self.step = self.builder.jit(shardings, frozen_sh)
        self.batches = host_batches(config, self.tokenizer)

    def place(self, batch, config):
        rows = self.builder.rows
        out = {k: to_global(v, rows) for k, v in batch.items()}
        out["control"] = objectives.control(config, 0)
        return out

    def run(self, config=None, batches=None, keys=None):
        """Trains STEPS steps; `config` changes only the host-side schedule values;
        `keys` are the steps' rngs (default `key(t)` at step t)."""
        config = config or self.config
        state = initial_state(self.config, self.models, self.sources, self.mesh)
        history = []
        for t, batch in enumerate(batches or self.batches):
            placed = self.place(batch, config)
            placed["control"] = objectives.control(config, t)
            rng = jax.random.key(t) if keys is None else keys[t]
            state, metrics = self.step(state, {"teacher": self.teacher}, placed, rng)
            history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
        return jax.device_get(state), history


@pytest.fixture(scope="module")
def eight():
    harness = Harness(tiny_config(), make_mesh(data=-1))
    return harness, harness.run()


@pytest.fixture(scope="module")
def single():
    harness = Harness(tiny_config(), make_mesh(data=1, devices=jax.devices()[:1]))
    return harness, harness.run()


def _assert_same(a, b, atol):
    state_a, hist_a = a
    state_b, hist_b = b
    for ma, mb in zip(hist_a, hist_b, strict=True):
        for key in ("loss", "off_kd", "on_kd", "misfeedback", "classmate_loss", "gap_step"):
            np.testing.assert_allclose(ma[key], mb[key], atol=atol, rtol=0, err_msg=key)
    for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_the_step_trains_every_term_on_every_batch(eight):
    _, (state, history) = eight
    first = history[0]
    assert first["scored_tokens_off"] > 0 and first["scored_tokens_on"] > 0
    assert first["classmate_updated"] == 1.0 and first["misfeedback_weight"] == pytest.approx(0.1)
    for m in history:
        assert all(np.isfinite(v) for v in m.values()), m
    assert int(state.step) == STEPS and int(state.classmate.step) == STEPS


def test_sharded_step_equals_single_device(eight, single):
    """Meshes (8, 1, 1) and (2, 2, 2) against one device. The (2, 2, 2) run also
    takes the fused chunked losses (no model forms [B, T, V] logits) and two
    micro-batches per step, which must give the full batch's token means."""
    assert jax.device_count() == 8
    _assert_same(eight[1], single[1], atol=1e-5)
    config = tiny_config(**{"loss.impl": "chunked", "loss.chunk_size": 96, "grad_accum": 2})
    harness = Harness(config, make_mesh(data=2, fsdp=2, tensor=2))
    assert harness.builder.path.impl == "chunked"
    _assert_same(harness.run(), single[1], atol=1e-5)


def test_a_one_token_sample_is_scored_at_exactly_one_position(eight):
    """The on-policy label shift: the first completion token is predicted by the
    last prompt position, and a completion of one token (its EOS) is scored there only."""
    harness, _ = eight
    batch = copy.deepcopy(harness.batches[0])
    on = batch["on"]
    eos, pad = harness.tokenizer.eos_token_id, harness.tokenizer.pad_token_id
    on["tokens"][:] = pad
    on["tokens"][:, 0] = eos
    on["mask"][:] = False
    on["mask"][:, 0] = True
    state, history = harness.run(batches=[batch])
    assert history[0]["scored_tokens_on"] == 8.0

    scored = jax.device_get(scored_batch(jax.tree.map(jnp.asarray, on)))
    assert scored["loss_mask"].sum(axis=1).tolist() == [1.0] * 8
    prompt_len = on["prompt_tokens"].shape[1]
    assert scored["loss_mask"][:, prompt_len - 1].tolist() == [1.0] * 8
    assert (scored["targets"][:, prompt_len - 1] == eos).all()

    # The step's on-policy KD is KL(q || p) at that one position, from the
    # initial student (the step scores before it updates).
    init = initial_state(harness.config, harness.models, harness.sources, harness.mesh)
    logits = lambda cfg, p: (
        Transformer(cfg)
        .apply({"params": p}, scored["tokens"], scored["positions"], scored["segment_ids"])
        .logits[:, prompt_len - 1]
    )
    q = logits(harness.models.student.config, jax.device_get(init.student.params))
    p = logits(harness.models.teacher.config, jax.device_get(harness.teacher))
    expected = float(jnp.mean(losses.reverse_kl_per_token(q, p)))
    assert history[0]["on_kd"] == pytest.approx(expected, rel=1e-4)


def _schedule(base, **changes):
    """A copy of `base` with other classmate schedule values (host-side only)."""
    config = copy.deepcopy(base)
    with config.unlocked():
        for key, value in changes.items():
            config.classmate[key] = value
    return config


def test_with_misfeedback_weight_zero_the_classmate_cannot_touch_the_student():
    harness = Harness(tiny_config(**{"misfeedback.weight": 0.0}), make_mesh(data=-1))
    fast = harness.run(_schedule(harness.config, update_every=1, min_gap=-1.0))
    slow = harness.run(_schedule(harness.config, update_every=2, start_step=1, min_gap=-1.0))
    frozen = harness.run(_schedule(harness.config, min_gap=1e9))  # never far enough behind
    for a, b in ((fast, slow), (fast, frozen)):
        jax.tree.map(np.testing.assert_array_equal, a[0].student, b[0].student)
    assert [m["classmate_updated"] for m in fast[1]] == [1.0, 1.0]
    assert [m["classmate_updated"] for m in slow[1]] == [0.0, 1.0]
    assert [m["classmate_updated"] for m in frozen[1]] == [0.0, 0.0]
    moved = lambda run: any(
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(run[0].classmate.params),
            jax.tree.leaves(fast[0].classmate.params),
            strict=True,
        )
    )
    assert moved(slow) and moved(frozen)
    init = initial_state(harness.config, harness.models, harness.sources, harness.mesh)
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.device_get(init.classmate.params),
        frozen[0].classmate.params,
    )


def test_with_misfeedback_a_classmate_schedule_changes_the_student(eight):
    harness, default = eight
    slow = harness.run(_schedule(harness.config, update_every=2, start_step=1, min_gap=-1.0))
    assert [m["classmate_updated"] for m in slow[1]] == [0.0, 1.0]
    diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(
            jax.tree.leaves(default[0].student.params),
            jax.tree.leaves(slow[0].student.params),
            strict=True,
        )
    )
    assert diff > 0


def test_dropout_draws_its_masks_from_the_steps_key(eight):
    """The trained roles' dropout masks are the step key's: the same keys train
    the same arrays (what makes a resumed run bit-exact), other keys other
    losses; with rates of 0 the key changes nothing."""
    other_keys = [jax.random.key(100 + t) for t in range(STEPS)]
    harness, default = eight
    same = harness.run(keys=other_keys)
    jax.tree.map(np.testing.assert_array_equal, default[0], same[0])

    rates = {"student.dropout": 0.1, "classmate.dropout": 0.1}
    harness = Harness(tiny_config(**rates), make_mesh(data=-1))
    assert harness.models.student.config.has_dropout
    assert not harness.models.teacher.config.has_dropout  # the teacher never drops
    a, again, b = harness.run(), harness.run(), harness.run(keys=other_keys)
    jax.tree.map(np.testing.assert_array_equal, a[0], again[0])
    for key in ("loss", "classmate_loss"):
        assert a[1][0][key] != b[1][0][key], key
        assert a[1][0][key] != default[1][0][key], key


def test_bfloat16_compute_trains_like_float32():
    """The pair configs' precision on the tiny models: bfloat16 compute, float32
    params and Adam moments for the trained roles, a bfloat16 teacher; the chunked
    losses still accumulate in float32. Six steps on one batch: the loss is finite,
    decreases, and stays within bfloat16's tolerance of the float32 run."""
    precision = {
        "teacher.dtype": "bfloat16",
        "teacher.param_dtype": "bfloat16",
        "student.dtype": "bfloat16",
        "classmate.dtype": "bfloat16",
    }
    chunked = {"loss.impl": "chunked", "loss.chunk_size": 96}
    mesh = make_mesh(data=-1)
    runs = {}
    for name, changes in (("float32", chunked), ("bfloat16", {**chunked, **precision})):
        harness = Harness(tiny_config(**changes), mesh)
        batches = [harness.batches[0]] * 6
        state, history = harness.run(batches=batches)
        runs[name] = (harness, state, [m["loss"] for m in history])
    harness, state, losses_bf16 = runs["bfloat16"]
    losses_f32 = runs["float32"][2]
    assert harness.models.student.config.compute_dtype == jnp.bfloat16
    assert {x.dtype for x in jax.tree.leaves(harness.teacher)} == {jnp.dtype(jnp.bfloat16)}
    for tree in (state.student.params, state.student.opt_state, state.classmate.opt_state):
        floats = {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}
        assert floats == {jnp.dtype(jnp.float32)}
    assert all(np.isfinite(losses_bf16)) and losses_bf16[-1] < 0.8 * losses_bf16[0]
    np.testing.assert_allclose(losses_bf16, losses_f32, rtol=1e-2)  # measured: <= 1.5e-3
    # the chunked loss of bfloat16 hidden states and heads is a float32 sum
    hidden = jnp.ones((2, 4, 8), jnp.bfloat16)
    head = jnp.ones((8, 16), jnp.bfloat16)
    total, count, _ = losses.token_loss(
        lambda logits, ex: (-jax.nn.log_softmax(logits[0])[:, 0], {}),
        (hidden,),
        (head,),
        jnp.ones((2, 4)),
        {},
        impl="chunked",
        vocab_size=16,
        chunk_size=4,
    )
    assert total.dtype == jnp.float32 and float(total) == pytest.approx(8 * np.log(16), rel=1e-6)
