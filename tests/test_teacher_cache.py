"""The teacher cache end to end on the tiny KD config: built on 2 processes and
read on 1, resumed after a kill, refused in one line when the config differs,
looked up by the trainer's (seeded, packed) batches, and KD from it against
live KD on the same batch."""

from __future__ import annotations

import functools
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classkd_jax import cli
from classkd_jax.config_utils import import_sibling
from classkd_jax.data import pipeline
from classkd_jax.teacher_cache import Lookup, SplitReader, builder, check, read_manifest, store
from classkd_jax.teacher_cache.__main__ import PROG
from classkd_jax.teacher_cache.__main__ import main as cache_main
from classkd_jax.training import checks, objectives, roles
from classkd_jax.training.step import LossPath, head, hidden_states, objective

EXAMPLES = 40
TEMPERATURE = 0.25
OVERRIDES = {
    "data.synthetic.num_train": EXAMPLES,
    "data.pack": True,
    "eval_every": 0,
    "teacher_cache.chunk_examples": 16,  # 3 chunks: 16, 16, 8 examples
    "teacher_cache.top_k": 4,
}


def kd_config(**changes):
    config = import_sibling("configs/x.py", "kd").get_config("size=tiny")
    with config.unlocked():
        for key, value in {**OVERRIDES, **changes}.items():
            *section, leaf = key.split(".")
            target = config
            for part in section:
                target = target[part]
            target[leaf] = value
    return config


def arrays(root, split="train"):
    out = {}
    for d in sorted((root / split).iterdir()):
        for f in sorted(d.glob("*.npy")):
            out[f"{d.name}/{f.name}"] = np.load(f)
    return out


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """One cache built on 1 process, one on 2 (each process its own chunks)."""
    config = kd_config()
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    builder.build(config, one, process_index=0, process_count=1, message=lambda _: None)
    for p in (1, 0):  # any order
        builder.build(config, two, process_index=p, process_count=2, message=lambda _: None)
    return config, one, two


def test_written_on_two_processes_read_on_one(caches):
    _, one, two = caches
    a, b = arrays(one), arrays(two)
    assert sorted(a) == sorted(b) and len({k.split("/")[0] for k in a}) == 3
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert read_manifest(two)["teacher_params"] == read_manifest(one)["teacher_params"]


def test_a_killed_job_resumes_by_skipping_whole_chunks(caches, tmp_path):
    config, one, _ = caches
    first = builder.build(config, tmp_path, max_chunks=1, message=lambda _: None)
    assert first == {"built": 1, "skipped": 0}
    (tmp_path / "train" / "chunk-00001.tmp999").mkdir()  # a half-written chunk of the kill
    rest = builder.build(config, tmp_path, message=lambda _: None)
    assert rest == {"built": 2, "skipped": 1}
    a, b = arrays(one), arrays(tmp_path)
    assert sorted(a) == sorted(k for k in b if ".tmp" not in k)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_config_mismatch_is_one_line(caches, capsys):
    config, one, _ = caches
    argv = [
        "--config",
        "configs/kd.py:size=tiny",
        "--out",
        str(one),
        "--config.kd.temperature=2.0",
    ] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    assert cli.run(cache_main, argv, prog=PROG) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "temperature: the cache has 1.0, this run 2.0" in err[0], err
    n = config.teacher_cache.num_samples
    with pytest.raises(cli.UserError, match=f"num_samples: the cache has {n}, this run 8"):
        expected = read_manifest(one) | {"num_samples": 8}
        check(one, expected)


def test_a_cache_grows_the_dev_split_a_validating_run_reads(caches, tmp_path):
    """One cache serves runs with and without validation (compare: KD's rows build it,
    then DistiLLM's, which validates, read it): the builder adds the missing dev
    split, keeps it for a run that does not validate, and the train chunks are
    not rebuilt."""
    config, one, _ = caches
    shutil.copytree(one, tmp_path / "c")
    root = tmp_path / "c"
    validating = kd_config(eval_every=1)
    assert "dev" not in read_manifest(root)["data"]
    tokenizer, sources = _models("kd")
    splits = builder.load_splits(validating, tokenizer)
    dev_chunks = store.num_chunks(len(splits["dev"]), 16)
    built = builder.build(validating, root, message=lambda _: None)
    assert built == {"built": dev_chunks, "skipped": 3}
    manifest = read_manifest(root)
    assert set(manifest["data"]) == set(manifest["splits"]) == {"train", "dev"}
    expected = builder.fingerprint(validating, sources["teacher"], tokenizer, "x", splits)
    assert manifest["data"] == expected["data"]
    assert builder.build(config, root, message=lambda _: None) == {"built": 0, "skipped": 3}
    assert read_manifest(root)["data"] == manifest["data"]  # the dev split stays
    other = kd_config(**{"eval_every": 1, "kd.temperature": 2.0})
    with pytest.raises(cli.UserError, match="temperature: the cache has"):
        builder.build(other, root, message=lambda _: None)


def test_teacher_cache_on_a_method_that_cannot_use_it_is_refused():
    config = import_sibling("configs/x.py", "gkd").get_config("size=tiny")
    with config.unlocked():
        config.teacher.cache = "/tmp/somewhere"
    with pytest.raises(cli.UserError, match="teacher.cache=.* on method 'gkd'"):
        checks.validate(config)


@functools.lru_cache(maxsize=1)
def _models(config_json):
    config = kd_config()
    tokenizer, where = roles.resolve_tokenizer(config)
    context, why = checks.context_length(config)
    sources = roles.plan_roles(config, tokenizer, where, context, why)
    return tokenizer, sources


def trainer_batch(config, tokenizer, seed):
    """The first batch of the trainer's off-policy stream (packed) with data.seed=`seed`."""
    with config.unlocked():
        config.data.seed = seed
    data = pipeline.tokenize_examples_for(
        config.data, tokenizer, pipeline.load_split(config.data, "train")
    )
    it = pipeline.make_iterator(config.data, tokenizer, "train", kind="full", data=data)
    batch = next(it)
    return data, {
        k: batch[k] for k in ("tokens", "positions", "segment_ids", "targets", "loss_mask")
    }


def teacher_logp(sources, batch, vocab):
    """The live teacher's params (as the builder draws them) and log-probs `[B, T, V]`."""
    src = sources["teacher"]
    params = roles.host_init(src.config, (0, 1))
    h = hidden_states(src.config, params, {k: jnp.asarray(v) for k, v in batch.items()})
    w, vocab_major = head(src.config, params)
    z = jnp.einsum("btd,vd->btv" if vocab_major else "btd,dv->btv", h, w)[..., :vocab]
    return params, np.asarray(jax.nn.log_softmax(z, axis=-1))


def test_the_trainers_batches_find_their_cached_positions(caches):
    config, one, _ = caches
    tokenizer, sources = _models("kd")
    data, batch = trainer_batch(kd_config(), tokenizer, seed=5)
    assert np.any(batch["segment_ids"].max(axis=1) > 1)  # packed: several examples per row
    lookup = Lookup(SplitReader(one, "train", read_manifest(one)), data)
    extra = lookup.batch_arrays(batch)
    scored = batch["loss_mask"] != 0
    n = config.teacher_cache.num_samples
    np.testing.assert_array_equal(extra["cache_counts"].sum(-1), np.where(scored, n, 0))
    _, logp = teacher_logp(sources, batch, len(tokenizer))
    live = np.take_along_axis(logp, extra["cache_ids"], axis=-1)
    drawn = extra["cache_counts"] > 0
    np.testing.assert_allclose(extra["cache_logp"][drawn], live[drawn], atol=2e-5)
    top = Lookup(SplitReader(one, "train", read_manifest(one)), data, loss="topk")
    top_ids = top.batch_arrays(batch)["cache_ids"][scored]
    np.testing.assert_array_equal(top_ids, np.argsort(-logp[scored], axis=-1)[:, :4])


@pytest.mark.parametrize("temperature", [TEMPERATURE])
def test_kd_from_a_large_cache_matches_live_kd_on_a_batch(tmp_path, temperature):
    """The student's KD loss and gradient on one trainer batch, from a cache with
    N = 512 draws (Horvitz-Thompson weights) against the live teacher. The tiny
    random teacher is near uniform (KL ~ 0.01 nats), so the loss temperature
    sharpens both models until the gradient stands above the draws' noise."""
    changes = {
        "teacher_cache.num_samples": 512,
        "teacher_cache.weights": "horvitz_thompson",
        "teacher_cache.top_k": 0,
        "kd.temperature": temperature,
    }
    config = kd_config(**changes)
    builder.build(config, tmp_path, message=lambda _: None)
    tokenizer, sources = _models("kd")
    vocab = len(tokenizer)
    data, batch = trainer_batch(kd_config(), tokenizer, seed=3)
    lookup = Lookup(SplitReader(tmp_path, "train", read_manifest(tmp_path)), data)
    extras = {k: jnp.asarray(v) for k, v in lookup.batch_arrays(batch).items()}
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    teacher_params, _ = teacher_logp(sources, batch, vocab)
    student = sources["student"].config
    params = roles.host_init(student, (0, 2))
    path = LossPath("dense", 128, vocab)
    live_parts = objectives.kd_parts(config)
    with config.unlocked():
        config.teacher.cache = str(tmp_path)
    cached_parts = objectives.kd_parts(config)
    assert cached_parts[0].others == ()  # no teacher in the cached step
    t_cfg = sources["teacher"].config

    @functools.partial(jax.jit, static_argnums=(1,))
    def loss_and_grad(params, cached, extras):
        inputs = {
            "batches": {"off": jbatch},
            "others": {},
            "heads": {},
            "extras": {"off": extras},
            "counts": {"off": jnp.sum(jbatch["loss_mask"] != 0, dtype=jnp.float32)},
        }
        if not cached:
            inputs["others"] = {("teacher", "off"): hidden_states(t_cfg, teacher_params, jbatch)}
            inputs["heads"] = {"teacher": head(t_cfg, teacher_params)[0]}
        parts = cached_parts if cached else live_parts
        return jax.value_and_grad(lambda p: objective(p, student, parts, inputs, path)[0])(params)

    live, g_live = loss_and_grad(params, False, {})
    est, g_est = loss_and_grad(params, True, extras)
    a, b = (jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)]) for g in (g_live, g_est))
    cos = float(a @ b / jnp.linalg.norm(a) / jnp.linalg.norm(b))
    assert abs(float(est) - float(live)) < 0.05 * float(live), (est, live)
    assert cos > 0.8, cos  # measured 0.89: the draws' noise over ~300 tokens


def _classkd(**changes):
    config = import_sibling("configs/x.py", "classkd").get_config("size=tiny")
    with config.unlocked():
        config.teacher.cache = "/tmp/any"
        for key, value in changes.items():
            *section, leaf = key.split(".")
            node = config
            for part in section:
                node = node[part]
            node[leaf] = value
    return config


def test_classkd_from_the_cache_reads_no_teacher_on_dataset_rows():
    config = _classkd()
    checks.validate(config)
    off, on = objectives.classkd_parts(config, on_policy=True)
    assert (off.batch, off.others) == ("off", ()) and set(off.extras) == set(
        objectives.CACHE_EXTRAS
    )
    assert on.others[0] == "teacher"  # the samples keep the live teacher
    (cm,) = objectives.classmate_parts(config)
    assert (cm.batch, cm.others) == ("off", ())
    assert checks.live_teacher(config)  # for the on-policy steps
    assert not checks.live_teacher(_classkd(**{"classkd.lmbda": 0.0}))
    assert not checks.live_teacher(kd_config(**{"teacher.cache": "/tmp/any"}))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"classkd.off_policy_divergence": "reverse_kl"}, "classkd.off_policy_divergence='rev"),
        ({"classmate.divergence": "generalized_jsd"}, "classmate.divergence='generalized_jsd'"),
        ({"teacher_cache.loss": "topk"}, "needs a cache built with teacher_cache.top_k > 0"),
    ],
)
def test_what_a_cache_cannot_stand_for_is_refused(changes, message):
    with pytest.raises(cli.UserError, match=re.escape(message)):
        checks.validate(_classkd(**changes))


def test_compare_shares_one_cache_across_methods_and_seeds(tmp_path):
    from classkd_jax.comparison import execute, plan
    from classkd_jax.config_utils import load_config

    specs = plan.plan_runs(
        "configs/demo.py",
        ["sft", "kd", "classkd", "gkd+mf"],
        [0, 1],
        [],
        [],
        tmp_path,
        ("kd", "classkd"),
    )
    auto = {s.row for s in specs if "--config.teacher.cache=auto" in s.argv}
    assert auto == {"kd", "classkd"}

    def where(spec, seed):
        config = load_config(spec)
        with config.unlocked():
            config.seed = config.data.seed = seed
        return execute.teacher_cache_dir(tmp_path, config)

    shipped = {where(f"configs/demo.py:method={m}", s) for m in ("kd", "classkd") for s in (0, 1)}
    assert len(shipped) == 1  # the shipped teacher: one cache for both methods and all seeds
    tiny = {where("configs/kd.py:size=tiny", s) for s in (0, 1)}
    assert len(tiny) == 2  # a random-init teacher is another teacher at another seed


def test_distillm_reads_the_cache_on_dataset_rows_only():
    config = import_sibling("configs/x.py", "distillm").get_config("size=tiny")
    with config.unlocked():
        config.teacher.cache = "/tmp/any"
    checks.validate(config)
    (rows,) = objectives.student_parts(config, cached=True)  # a dataset batch with the draws
    (samples,) = objectives.student_parts(config, cached=False)  # fresh or replayed samples
    assert rows.others == () and samples.others == ("teacher",)
    assert checks.live_teacher(config)  # the samples keep the live teacher
    with config.unlocked():
        config.misfeedback.weight = 0.1
    with pytest.raises(cli.UserError, match="distillm misfeedback.weight > 0"):
        checks.validate(config)


def test_teacher_cache_keys_without_a_cache_are_refused_in_training_only(tmp_path):
    from classkd_jax.comparison import plan
    from classkd_jax.train import parse_flags

    flag = "--config.teacher_cache.weights=horvitz_thompson"
    argv = ["--config", "configs/kd.py:size=tiny", flag]
    with pytest.raises(cli.UserError, match=r"^teacher_cache.weights has no effect without"):
        parse_flags([*argv, "--workdir", str(tmp_path)])
    parse_flags(argv, workdir=False)  # the cache command's own key
    parse_flags([*argv, "--config.teacher.cache=/x", "--workdir", str(tmp_path)])
    specs = plan.plan_runs("configs/demo.py", ["sft", "kd"], [0], [], [flag], tmp_path, ("kd",))
    assert [flag in s.argv for s in specs] == [False, True]


def test_ragged_draws_pad_back_to_the_fixed_width():
    ids = np.array([[5, 2, 0, 0], [7, 0, 0, 0], [1, 3, 4, 6]], np.int32)
    counts = np.array([[3, 1, 0, 0], [4, 0, 0, 0], [1, 1, 1, 1]], np.int32)
    logp = np.where(counts > 0, -np.arange(12, dtype=np.float32).reshape(3, 4), 0)
    flat = store.ragged({"ids": ids, "counts": counts, "logp": logp, "lse": np.ones(3)})
    np.testing.assert_array_equal(flat["entry_offsets"], [0, 2, 3, 7])
    assert flat["ids"].shape == (7,)
    back = store.padded({k: flat[k] for k in store.RAGGED}, flat["entry_offsets"], 4)
    for name, full in (("ids", ids), ("counts", counts), ("logp", logp)):
        np.testing.assert_array_equal(back[name], full)
    # the last two positions alone, as a reader slices one example's rows
    part = store.padded({k: flat[k][2:7] for k in store.RAGGED}, np.array([0, 1, 5]), 4)
    np.testing.assert_array_equal(part["ids"], ids[1:])
