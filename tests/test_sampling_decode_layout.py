"""The decode layout: the sampler moves the weights once per call, then decodes in place.

Every sampler (on-policy, teacher-mixed, validation's greedy, SeqKD's teacher,
`generate`) reshards the models it decodes into `sharding.decode_rules(...)`
before its loop. What must hold: the tokens do not depend on the mesh or the
layout, and no decode step moves weights between devices (the compiled
program's own collectives say so, for a TPU slice and a GPU node).
"""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from classkd_jax import sharding
from classkd_jax.models import ModelConfig, init_params
from classkd_jax.sampling import Sampler, SamplingConfig, left_pad
from classkd_jax.sharding import decode_rules, logical_to_mesh, make_mesh

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15], [16, 17, 18, 19, 20]] * 2
MESHES = {"8x1x1": (8, 1, 1), "1x8x1": (1, 8, 1), "2x2x2": (2, 2, 2), "1x4x2": (1, 4, 2)}


def _config(**kw) -> ModelConfig:
    base = dict(
        vocab_size=64,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    return ModelConfig(**{**base, **kw})


_init = jax.jit(init_params, static_argnums=0)


@pytest.fixture(scope="module")
def model():
    config = _config()
    return config, _init(config, jax.random.key(0))


@pytest.fixture(scope="module")
def prompts():
    return left_pad(PROMPTS, 8, pad_id=0, batch_size=8)


def _sample(sampler, params, prompts, cfg, key=0, **kw):
    tokens, mask, row_valid = prompts
    return sampler(params, tokens, mask, jax.random.key(key), cfg, row_valid=row_valid, **kw)


@pytest.fixture(scope="module")
def single_device(model, prompts):
    """Greedy and sampled outputs on one device: the reference for every mesh."""
    config, params = model
    sampler = Sampler(config)
    greedy = SamplingConfig(max_new_tokens=8, greedy=True, pad_id=0)
    sampled = SamplingConfig(max_new_tokens=8, temperature=1.3, pad_id=0)
    return _sample(sampler, params, prompts, greedy), _sample(sampler, params, prompts, sampled)


def test_the_tensor_layout_splits_heads_mlp_and_vocab_never_the_embedding():
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    rules = decode_rules("tensor", mesh, [_config()])
    # 4 query heads over 'fsdp' (4); each of the 2 KV heads is held twice, by the
    # two devices whose query heads read it.
    spec = lambda names, shape, rules=rules: logical_to_mesh(names, rules, shape, mesh)
    assert spec(("embed", "heads", "head_dim"), (32, 4, 8)) == P(None, "fsdp", None)
    assert spec(("embed", "kv_heads", "head_dim"), (32, 4, 8)) == P(None, "fsdp", None)
    assert sharding.decode_kv_heads(2, mesh, rules) == 4
    assert spec(("embed", "mlp"), (32, 64)) == P(None, ("fsdp", "tensor"))
    assert spec(("vocab", "embed"), (64, 32)) == P(("fsdp", "tensor"), None)
    # A vocabulary the 8 devices do not divide falls back to fewer of them.
    assert spec(("vocab", "embed"), (50, 32)) == P("tensor", None)
    # Heads no axis divides (3 query heads, 1 KV head): attention whole on every device.
    odd = decode_rules("tensor", mesh, [_config(num_heads=3, num_kv_heads=1)])
    assert spec(("embed", "heads", "head_dim"), (32, 3, 8), odd) == P(None, None, None)
    # The batch: over 'data' only (the other axes hold the weights' shards).
    assert spec(("batch", "length"), (8, 16)) == P("data", None)
    assert decode_rules("train") == sharding.DEFAULT_RULES
    with pytest.raises(ValueError, match="decode layout 'fast'"):
        decode_rules("fast")


@pytest.mark.parametrize("mesh_name", MESHES)
def test_greedy_and_sampled_tokens_do_not_depend_on_the_mesh(
    model, prompts, single_device, mesh_name
):
    config, params = model
    greedy_ref, sampled_ref = single_device
    sampler = Sampler(config, mesh=make_mesh(*MESHES[mesh_name]))
    greedy = _sample(sampler, params, prompts, SamplingConfig(8, greedy=True, pad_id=0))
    np.testing.assert_array_equal(np.asarray(greedy.tokens), np.asarray(greedy_ref.tokens))
    np.testing.assert_allclose(greedy.logprobs, greedy_ref.logprobs, atol=1e-5)
    # The key's bits do not depend on the sharding (threefry is partitionable), so
    # sampled tokens agree too, up to a near-tie that a summation order could flip.
    sampled = _sample(sampler, params, prompts, SamplingConfig(8, temperature=1.3, pad_id=0))
    agree = np.asarray(sampled.tokens) == np.asarray(sampled_ref.tokens)
    assert agree.mean() >= 0.95, f"{mesh_name}: {agree.mean():.2f} of sampled tokens agree"


@pytest.mark.parametrize("layout", ["replicated", "train"])
def test_every_layout_decodes_the_same_tokens(model, prompts, single_device, layout):
    config, params = model
    greedy_ref, _ = single_device
    sampler = Sampler(config, mesh=make_mesh(1, 4, 2), decode_layout=layout)
    out = _sample(sampler, params, prompts, SamplingConfig(8, greedy=True, pad_id=0))
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(greedy_ref.tokens))
    # Outputs come back split as a training batch, whatever the decode layout.
    assert out.tokens.sharding.spec[0] == ("data", "fsdp")


def test_teacher_mixing_over_a_shared_vocabulary_never_draws_a_padding_row(model, prompts):
    """A teacher and a student of one tokenizer (60 real tokens) whose heads are
    padded differently (80 and 64 rows), as Qwen2.5-7B and -1.5B are. The
    teacher's padding rows carry the largest logits: only the mask keeps them out."""
    student_config, student = model
    teacher_config = _config(vocab_size=80, num_layers=1, hidden_size=48, head_dim=12)
    teacher = _init(teacher_config, jax.random.key(3))
    head = np.array(teacher["lm_head"])
    head[:, 60:] = 5.0 * np.abs(head).max()
    teacher = {**teacher, "lm_head": jax.numpy.asarray(head)}
    alpha, real = 0.5, 60
    cfg = SamplingConfig(max_new_tokens=6, teacher_mix=alpha, mix_vocab=real, pad_id=0)
    tokens, mask, row_valid = prompts
    for mesh in (None, make_mesh(1, 4, 2)):
        sampler = Sampler(student_config, teacher_config=teacher_config, mesh=mesh)
        out = _sample(sampler, student, prompts, cfg, key=7, teacher_params=teacher)
        toks = np.asarray(out.tokens)
        assert toks.max() < real
        # The first token's log-probabilities, by hand over the 60 real ids.
        first = toks[:, 0]
        q = jax.nn.softmax(_last_logits(student_config, student, tokens, mask)[:, :real])
        p = jax.nn.softmax(_last_logits(teacher_config, teacher, tokens, mask)[:, :real])
        pick = lambda probs, first=first: np.asarray(probs)[np.arange(len(first)), first]
        np.testing.assert_allclose(out.student_logprobs[:, 0], np.log(pick(q)), atol=1e-5)
        mixed = np.log(alpha * pick(p) + (1 - alpha) * pick(q))
        np.testing.assert_allclose(out.logprobs[:, 0], mixed, atol=1e-5)
    with pytest.raises(ValueError, match="mix_vocab=70 must be in"):
        bad = SamplingConfig(max_new_tokens=2, teacher_mix=alpha, mix_vocab=70, pad_id=0)
        _sample(
            Sampler(student_config, teacher_config=teacher_config),
            student,
            prompts,
            bad,
            teacher_params=teacher,
        )


def _last_logits(config, params, tokens, mask):
    """[B, V] logits at the last prompt slot, from one uncached forward."""
    from classkd_jax.models import Transformer
    from classkd_jax.sampling import prompt_positions

    out = Transformer(config).apply(
        {"params": params},
        jax.numpy.asarray(tokens),
        positions=prompt_positions(jax.numpy.asarray(mask)),
        segment_ids=jax.numpy.asarray(mask, np.int32),
    )
    return out.logits[:, -1]


def _decode_step_collectives(topology_name: str, layout: str) -> tuple[list, int]:
    """The tiny ClassKD run's on-policy sampler compiled for `topology_name`: the
    collectives of one decode step, and the student's weight bytes (global)."""
    from classkd_jax import hlo, topology
    from classkd_jax.train import parse_flags
    from classkd_jax.training import programs, run

    topology.quiet()
    # FSDP over the whole slice, as the pairs run (tiny's default mesh is all data).
    flags = ["--config", "configs/classkd.py:size=tiny", "--config.classkd.lmbda=0.5"]
    flags += ["--config.mesh.data=1", "--config.mesh.fsdp=-1"]
    # A student wider than tiny's (d=64, MLP 256): the sampler's per-row arrays over
    # the 256-token vocabulary then weigh against the weights as they do at scale.
    flags += [
        "--config.student.shape.hidden_size=64",
        "--config.student.shape.intermediate_size=256",
    ]
    config, _ = parse_flags([*flags, f"--config.sampling.decode_layout={layout}"], workdir=False)
    mesh = run.make_mesh(config, devices=topology.get(topology_name).devices)
    plan = programs.plan(config, mesh)
    (sampler,) = [p for p in plan.programs if p.kind == "sampler"]
    text = sampler.lower().compile().as_text()
    step = [c for c in hlo.collectives(text) if c.in_loop]
    student = programs.abstract_model_params(plan.models.student.config, mesh)
    return step, sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(student))


@pytest.mark.parametrize("topology_name", ["v5e:2x2", "h100:8"])
def test_a_decode_step_moves_activations_never_weights(topology_name):
    """Counted in the compiled program, each source-level collective once: the
    training layout gathers the student's weights on every token; the decode
    layout moves activation-sized collectives (the [8, 64] hidden state after
    each MLP, the embedding lookup's row, the softmax's statistics, the
    sampler's [8, 256] block of probabilities). This student is so small that
    those are a few percent of its weights; at a 1.5B model they are 0.3%
    (benchmarks/README.md)."""
    before, weights = _decode_step_collectives(topology_name, "train")
    assert sum(c.bytes for c in before) >= 0.5 * weights  # (the TPU gathers some in bf16)
    after, _ = _decode_step_collectives(topology_name, "tensor")
    assert sum(c.bytes for c in after) < 0.1 * weights, after


def test_minillm_pair_with_differently_padded_heads_traces_for_a_pod():
    """Qwen2.5-7B pads its head to 152064 rows, 1.5B to 151936, one tokenizer:
    the teacher-mixed sampler traces for v5e:4x4 (no weights, no compile);
    `benchmarks/bench_lower.py` does every method x pair."""
    from classkd_jax import topology
    from classkd_jax.train import parse_flags
    from classkd_jax.training import programs, run

    topology.quiet()
    pair = "configs/minillm.py:pair=qwen2.5-7b/qwen2.5-1.5b"
    config, _ = parse_flags(["--config", pair], workdir=False)
    mesh = run.make_mesh(config, devices=topology.get("v5e:4x4").devices)
    plan = programs.plan(config, mesh)
    mixed = [p for p in plan.programs if p.name.startswith("sampler (teacher-mixed)")]
    sampler = mixed[-1]  # the largest prompt bucket
    assert plan.models.teacher.config.vocab_size != plan.models.student.config.vocab_size
    assert "while" in sampler.lower().as_text()
