"""`classkd.estimator`: 'token' is today's token-level surrogate, unchanged;
'sequence' is an unbiased score-function estimate of the sequence-level
KL(q || p) and misfeedback -KL(q || m), checked by enumerating a sequence
space; it trains end to end; a bad value is one line naming the key."""

from __future__ import annotations

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classkd_jax import cli, losses, train
from classkd_jax.config_utils import import_sibling
from classkd_jax.training import checks, objectives

V, EOS = 3, 0  # the toy problem's vocabulary; a sequence ends at EOS or after 2 tokens


def classkd_config(**changes):
    config = import_sibling("configs/x.py", "classkd").get_config("size=tiny")
    with config.unlocked():
        for key, value in changes.items():
            section, leaf = key.split(".")
            config[section][leaf] = value
    return config


def test_token_is_the_default_and_reproduces_todays_loss_exactly():
    config = classkd_config(**{"misfeedback.weight": 0.3, "misfeedback.variant": "raw"})
    assert config.classkd.estimator == "token"
    off, on = objectives.classkd_parts(config, on_policy=True)
    assert (on.others, on.extras) == (("teacher", "classmate"), ("weight",))
    kq, kp, kc = jax.random.split(jax.random.key(0), 3)
    q, p, c = (jax.random.normal(k, (2, 5, 11)) for k in (kq, kp, kc))
    tokens = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
    sample_mask = jnp.array([[0, 1, 1, 1, 1], [0, 1, 1, 0, 0]])
    _, mask = losses.next_token_targets(tokens, sample_mask)
    reference, terms = losses.classkd_student_loss(
        q, p, c, tokens, sample_mask, misfeedback_weight=0.3, misfeedback_variant="raw"
    )
    rows = lambda x: x.reshape(10, 11)
    per_token, aux = on.token_fn((rows(q), rows(p), rows(c)), {"weight": jnp.full(10, 0.3)})
    keep = mask.reshape(10)
    count = keep.sum()
    np.testing.assert_allclose(jnp.sum(per_token * keep) / count, reference, rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(aux["on_kd"] * keep) / count, terms["kd"], rtol=1e-6)


def _toy():
    """A 2-step autoregressive student (logits of y1, and of y2 given y1), a
    teacher and a classmate, and every sequence of the space: y1 = EOS (length
    1) or y1 != EOS then any y2 (length 2)."""
    keys = jax.random.split(jax.random.key(3), 6)
    model = lambda k1, k2: {
        "first": jax.random.normal(k1, (V,)),
        "second": jax.random.normal(k2, (V, V)),
    }
    student, teacher, classmate = model(*keys[:2]), model(*keys[2:4]), model(*keys[4:])
    seqs = [(EOS,)] + [(a, b) for a, b in itertools.product(range(V), repeat=2) if a != EOS]
    return student, teacher, classmate, seqs


def _rows(model, y):
    """[2, V] logits rows, [2] targets, [2] mask of sequence y (padded to 2)."""
    logits = jnp.stack([model["first"], model["second"][y[0]]])
    targets = jnp.array(list(y) + [EOS] * (2 - len(y)))
    return logits, targets, (jnp.arange(2) < len(y)).astype(jnp.float32)


def _logq(model, y):
    logits, targets, mask = _rows(model, y)
    return jnp.sum(losses.token_log_probs(logits, targets) * mask)


@pytest.mark.parametrize("variant", ["raw", "skew"])
def test_sequence_gradient_is_unbiased_by_enumeration(variant):
    """sum_y q(y) grad(surrogate on y alone, constant baseline) == grad of
    on_w * E_q[(1/L) sum_t log q/p] - w * E_q[(1/L) sum_t log q/m], exactly."""
    w, on_w, baseline, alpha = 0.5, 0.7, 0.3, 0.2
    config = classkd_config(
        **{
            "classkd.estimator": "sequence",
            "classkd.on_policy_weight": on_w,
            "misfeedback.weight": w,
            "misfeedback.variant": variant,
            "misfeedback.alpha": alpha,
        }
    )
    _, part = objectives.classkd_parts(config, on_policy=True)
    student, teacher, classmate, seqs = _toy()

    def log_ratios(theta, y):  # [2] each: r_t and s_t at the sampled tokens
        lq, lp, lc = (losses.token_log_probs(*_rows(m, y)[:2]) for m in (theta, teacher, classmate))
        s = losses.misfeedback_sample_log_ratio(lq, lc, variant=variant, alpha=alpha)
        return lq - lp, s

    def objective(theta):  # the sequence-level objective, enumerated
        total = 0.0
        for y in seqs:
            r, s = log_ratios(theta, y)
            mask = _rows(theta, y)[2]
            f, h = (jnp.sum(x * mask) / len(y) for x in (r, s))
            total += jnp.exp(_logq(theta, y)) * (on_w * f - w * h)
        return total

    def surrogate(theta, y):  # the step's loss on a batch of one sequence
        logits, targets, mask = _rows(theta, y)
        r, s = log_ratios(theta, y)
        ex = losses.sequence_weights(
            {"kd_adv": r[None], "mis_adv": s[None]}, mask[None], baseline=baseline
        )
        ex = {k: v[0] for k, v in ex.items()} | {"targets": targets, "weight": jnp.full(2, w)}
        rows = (logits,) + tuple(_rows(m, y)[0] for m in (teacher, classmate))
        per_token, aux = part.token_fn(rows, ex)
        return jnp.sum(per_token * mask) / mask.sum(), aux

    exact = jax.grad(objective)(student)
    expected = jax.tree.map(jnp.zeros_like, student)
    for y in seqs:
        (value, aux), g = jax.value_and_grad(surrogate, has_aux=True)(student, y)
        prob = jnp.exp(_logq(student, y))
        expected = jax.tree.map(lambda a, b, q=prob: a + q * b, expected, g)
        r, s = log_ratios(student, y)
        mask = _rows(student, y)[2]
        # The loss's value and the logged terms are the sequence log-ratios.
        f, h = (jnp.sum(x * mask) / len(y) for x in (r, s))
        np.testing.assert_allclose(value, on_w * f - w * h, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(
            jnp.sum(aux["on_kd"] * mask) / mask.sum(), jnp.sum(r * mask) / len(y), rtol=1e-5
        )
        np.testing.assert_allclose(
            jnp.sum(aux["misfeedback"] * mask) / mask.sum(), -jnp.sum(s * mask) / len(y), rtol=1e-5
        )
    assert sum(float(jnp.exp(_logq(student, y))) for y in seqs) == pytest.approx(1.0, abs=1e-6)
    for key in student:
        np.testing.assert_allclose(expected[key], exact[key], atol=1e-6, err_msg=key)


def test_the_batch_mean_baseline_weights_sequences_by_their_length():
    """adv = (f - mean f) * N / B and norm = N / (B L): token sums over N are
    sequence means, and rows without a scored token get nothing."""
    r = jnp.array([[1.0, 3.0, 0.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = jnp.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    out = losses.sequence_weights({"adv": r}, mask)
    n, b = 3.0, 2.0  # scored tokens, sequences
    f = np.array([2.0, 4.0])
    np.testing.assert_allclose(out["adv"][:2, 0], (f - f.mean()) * n / b)
    np.testing.assert_allclose(out["norm"][:2, 0], n / (b * np.array([2.0, 1.0])))
    assert not out["adv"][2].any() and not out["norm"][2].any() and out["norm"][0, 2] == 0


def test_a_tiny_classkd_run_trains_with_the_sequence_estimator(tmp_path):
    workdir = tmp_path / "run"
    argv = ["--config", "configs/classkd.py:size=tiny", "--workdir", str(workdir)]
    argv += ["--config.classkd.estimator=sequence", "--config.steps=3", "--config.log_every=1"]
    argv += ["--config.eval_every=0", "--config.checkpoint_every=3", "--config.loss.impl=chunked"]
    assert train.main(argv) == 0
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 3
    for r in steps:
        for key in ("loss", "off_kd", "on_kd", "misfeedback", "student_grad_norm"):
            assert math.isfinite(r[key]), (key, r)
        # Sequence-level estimates: mean log q/p can have either sign, the skew
        # misfeedback -(1/L) sum_t log q/m is >= log alpha per sequence.
        assert r["misfeedback"] >= math.log(0.1) - 1e-5
        # The logged loss is the objective's estimate, not the surrogate's value.
        objective = r["off_kd"] + r["on_kd"] + r["misfeedback_weight"] * r["misfeedback"]
        assert r["loss"] == pytest.approx(objective, rel=1e-4, abs=1e-6)
    assert json.loads((workdir / "config.json").read_text())["classkd"]["estimator"] == "sequence"


@pytest.mark.parametrize(
    "flag, message",
    [
        (
            "--config.classkd.estimator=seq",
            "classkd.estimator='seq' is out of range: expected one of ('token', 'sequence')",
        ),
        (
            "--config.misfeedback.variant=hinge",
            "classkd.estimator='sequence' with misfeedback.variant='hinge'",
        ),
        ("--config.sampling.top_k=5", "sampling.top_k=0"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(tmp_path, capsys, flag, message):
    config = classkd_config()
    argv = ["--config", "configs/classkd.py:size=tiny", "--workdir", str(tmp_path / "run")]
    extra = [] if "estimator=" in flag else ["--config.classkd.estimator=sequence"]
    assert cli.run(train.main, argv + extra + [flag], prog=train.PROG) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(train.PROG)]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    checks.validate(config)  # the defaults pass


def test_a_run_started_before_the_key_existed_resumes_as_token(tmp_path):
    config = classkd_config()
    old = json.loads(config.to_json())
    del old["classkd"]["estimator"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    checks.check_resume(tmp_path, json.loads(config.to_json()))
    with config.unlocked():
        config.classkd.estimator = "sequence"
    with pytest.raises(cli.UserError, match="started with classkd.estimator=.token."):
        checks.check_resume(tmp_path, json.loads(config.to_json()))
