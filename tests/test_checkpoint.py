"""Checkpoints: round trips, partial restores, atomicity, and loading a model by role."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from classkd_jax import checkpoint, sharding
from classkd_jax.models import abstract_params


def _state(seed: int):
    params = {"w": jax.random.normal(jax.random.key(seed), (4, 3)), "b": jnp.arange(3.0)}
    opt_state = optax.adam(1e-3).init(params)
    return params, opt_state


def _like(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def test_round_trip_restores_named_items_and_meta(tmp_path):
    params, opt_state = _state(0)
    meta = {"data": {"epoch": 1, "position": 7}, "note": "x"}
    step_dir = checkpoint.save_checkpoint(
        tmp_path, 10, {"student_params": params, "student_opt_state": opt_state}, meta
    )
    assert step_dir == tmp_path.absolute() / "10"
    checkpoint.save_checkpoint(tmp_path, 20, {"student_params": _state(1)[0]}, {"n": 2})
    assert checkpoint.all_steps(tmp_path) == [10, 20] and checkpoint.latest_step(tmp_path) == 20

    # Step 10, named by its directory; only the optimizer state is read.
    items, got_meta = checkpoint.restore_checkpoint(
        step_dir, {"student_opt_state": _like(opt_state)}
    )
    assert got_meta == meta and set(items) == {"student_opt_state"}
    jax.tree.map(np.testing.assert_array_equal, items["student_opt_state"], opt_state)
    # The root means the latest step.
    items, got_meta = checkpoint.restore_checkpoint(tmp_path, {"student_params": _like(params)})
    assert got_meta == {"n": 2}
    jax.tree.map(np.testing.assert_array_equal, items["student_params"], _state(1)[0])


def test_errors_name_the_problem(tmp_path):
    params, _ = _state(0)
    checkpoint.save_checkpoint(tmp_path, 5, {"student_params": params}, {})
    with pytest.raises(FileExistsError, match="step 5 already exists"):
        checkpoint.save_checkpoint(tmp_path, 5, {"student_params": params}, {})
    with pytest.raises(KeyError, match=r"no item \['teacher_params'\].*student_params"):
        checkpoint.restore_checkpoint(tmp_path, {"teacher_params": _like(params)})
    with pytest.raises(FileNotFoundError, match="step 6 not in"):
        checkpoint.restore_checkpoint(tmp_path, {"student_params": _like(params)}, step=6)
    with pytest.raises(FileNotFoundError, match="holds no classkd-jax checkpoint"):
        checkpoint.read_meta(tmp_path / "empty")
    with pytest.raises(ValueError, match="'meta' is reserved"):
        checkpoint.save_checkpoint(tmp_path, 6, {"meta": params}, {})


def test_an_interrupted_save_is_invisible(tmp_path):
    params, _ = _state(0)
    checkpoint.save_checkpoint(tmp_path, 1, {"student_params": params}, {"ok": True})
    # What a crash mid-save leaves: Orbax's temporary step directory, half written.
    partial = tmp_path / "2.orbax-checkpoint-tmp-1700000000000000"
    (partial / "student_params").mkdir(parents=True)
    (partial / "student_params" / "garbage").write_bytes(b"\0" * 10)
    assert checkpoint.all_steps(tmp_path) == [1]
    assert checkpoint.read_meta(tmp_path) == {"ok": True}
    assert (partial / "student_params" / "garbage").exists()  # and nothing was deleted


def test_load_model_restores_config_and_params_sharded(tiny_model, tmp_path):
    config, params = tiny_model("llama")
    config = config.replace(rope_scaling=None, eos_token_id=(2, 5), dtype="float32")
    meta = {
        "models": {"student": checkpoint.model_meta(config)},
        "tokenizer": "/some/tokenizer",
    }
    checkpoint.save_checkpoint(tmp_path, 3, {"student_params": params}, meta)
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    shardings = sharding.param_shardings(abstract_params(config), mesh)
    got_config, got_params, got_meta = checkpoint.load_model(tmp_path, shardings=shardings)
    assert got_config == config and got_meta["tokenizer"] == "/some/tokenizer"
    jax.tree.map(np.testing.assert_array_equal, got_params, params)
    placed = jax.tree.leaves(got_params)[0].sharding
    assert placed == jax.tree.leaves(shardings)[0]
    with pytest.raises(KeyError, match=r"no model 'classmate'; it has \['student'\]"):
        checkpoint.load_model(tmp_path, "classmate")


def test_model_meta_round_trips_every_preset_field():
    from classkd_jax.models import get_preset

    for name in ("llama-3.2-1b", "gpt2", "qwen2.5-0.5b"):
        config = get_preset(name, dtype="bfloat16", remat=True)
        assert checkpoint.model_from_meta(checkpoint.model_meta(config)) == config
    with pytest.raises(ValueError, match=r"unknown fields \['hidden'\]"):
        checkpoint.model_from_meta({**checkpoint.model_meta(config), "hidden": 1})


def test_probing_and_reading_write_nothing(tmp_path):
    hf_like = tmp_path / "hf"
    hf_like.mkdir()
    (hf_like / "config.json").write_text("{}")
    assert not checkpoint.is_checkpoint(hf_like) and checkpoint.latest_step(hf_like) is None
    assert [p.name for p in hf_like.iterdir()] == ["config.json"]
    params, _ = _state(0)
    checkpoint.save_checkpoint(tmp_path / "ckpt", 1, {"student_params": params}, {})
    before = sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "ckpt").rglob("*"))
    checkpoint.restore_checkpoint(tmp_path / "ckpt", {"student_params": _like(params)})
    assert checkpoint.is_checkpoint(tmp_path / "ckpt")
    assert checkpoint.read_meta(tmp_path / "ckpt") == {}
    assert sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "ckpt").rglob("*")) == before


# ----- damaged steps -----


def _truncate_data(step_dir) -> None:
    for path in (step_dir / "student_params" / "d").iterdir():
        path.write_bytes(path.read_bytes()[:10])


def test_readers_skip_a_damaged_newest_step_with_one_line(tiny_model, tmp_path):
    config, params = tiny_model("llama")
    config = config.replace(rope_scaling=None, dtype="float32")
    meta = {"models": {"student": checkpoint.model_meta(config)}}
    for step in (1, 2):
        checkpoint.save_checkpoint(tmp_path, step, {"student_params": params}, meta)
    _truncate_data(tmp_path / "2")
    said = []
    _, got, _, step = checkpoint.load_newest_model(tmp_path, say=said.append)
    assert step == 1 and said == [
        f"warning: checkpoint {tmp_path.absolute() / '2'} cannot be read "
        "(student_params: a truncated file); using step 1"
    ]
    jax.tree.map(np.testing.assert_array_equal, got, params)
    assert checkpoint.all_steps(tmp_path) == [1, 2]  # a reader moves nothing


def test_a_step_set_aside_is_kept_and_no_longer_a_step(tmp_path):
    import orbax.checkpoint as ocp

    params, _ = _state(0)
    for step in (1, 2):
        checkpoint.save_checkpoint(tmp_path, step, {"student_params": params}, {})
    aside = checkpoint.set_aside(tmp_path, 2, "student_params: a truncated file")
    assert aside.name == "2.damaged-student-params-a-truncated-file" and aside.is_dir()
    assert checkpoint.all_steps(tmp_path) == [1] and checkpoint.is_checkpoint(tmp_path)
    with ocp.CheckpointManager(tmp_path.absolute()) as manager:  # Orbax's own listing
        assert manager.all_steps() == [1]
    checkpoint.save_checkpoint(tmp_path, 2, {"student_params": params}, {})  # 2 again
    again = checkpoint.set_aside(tmp_path, 2, "student_params: a truncated file")
    assert again != aside and again.is_dir() and aside.is_dir()


def test_when_no_step_reads_the_error_names_each_and_nothing_moves(tmp_path):
    params, _ = _state(0)
    for step in (1, 2):
        checkpoint.save_checkpoint(tmp_path, step, {"student_params": params}, {})
        (tmp_path / str(step) / "meta" / "metadata").write_text("{not json")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(checkpoint.NoReadableCheckpoint) as error:
        checkpoint.newest_readable(tmp_path, lambda s: checkpoint.read_meta(tmp_path, s))
    assert "2 (unreadable metadata), 1 (unreadable metadata)" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "error, reason",
    [
        (ValueError('OUT_OF_RANGE: reading "/c/20/student_params/d/x": Requested byte range'),
         "student_params: a truncated file"),
        (FileNotFoundError("Metadata file (named _METADATA) does not exist at /c/20/opt_states."),
         "a missing file"),
        (KeyError("checkpoint /c/20 has no item ['opt_states']"), "a missing item"),
        (ValueError("Expecting value: line 1 column 1 (char 0)"), "unreadable metadata"),
        (ValueError("Cannot load file containing pickled data"), "an unreadable host state"),
        (RuntimeError("something else entirely"), "RuntimeError: something else entirely"),
    ],
)  # fmt: skip
def test_why_a_step_does_not_read_is_said_in_a_few_words(error, reason):
    assert checkpoint.unreadable_reason(error) == reason
