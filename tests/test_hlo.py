"""`classkd_jax.hlo`: the collectives of a compiled program, from its optimised HLO text."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from classkd_jax import hlo

# Lines in the form XLA prints them (TPU and GPU), trimmed to what the parser reads.
SYNC = (
    "  %all-gather.16 = bf16[4,64,8]{1,2,0:T(8,128)(2,1)S(1)} all-gather(%bitcast.28), "
    'channel_id=2, dimensions={0}, metadata={op_name="jit(f)/while/body/dot_general" '
    'stack_frame_id=4}, backend_config={"flag_configs":[]}'
)
ASYNC_PERMUTE = (
    "  %collective-permute-start = (bf16[8,128]{1,0:T(8,128)(2,1)S(1)}, "
    "bf16[8,64]{1,0:T(8,128)(2,1)S(1)}, u32[]{:S(2)}, u32[]{:S(2)}) "
    "collective-permute-start(%fusion.8), channel_id=3, source_target_pairs={{0,1}}, "
    'metadata={op_name="jit(f)/while/body/slice" stack_frame_id=5}'
)
ASYNC_GATHER = (
    "  %all-gather-start = (bf16[8,32]{0,1}, /*index=1*/bf16[8,256]{0,1}) "
    "all-gather-start(%p), channel_id=1, dimensions={1}, "
    'metadata={op_name="jit(f)/dot_general" scheduling_name="all-gather-start"}'
)
DONE = (
    "  %all-gather-done = bf16[8,256]{0,1} all-gather-done(%all-gather-start), "
    'metadata={op_name="jit(f)/dot_general"}'
)
ALL_REDUCE_START = (
    "  %all-reduce-start = (f32[1024]{0}, f32[16]{0}) all-reduce-start(%a, %b), "
    'to_apply=%add, metadata={op_name="jit(f)/psum"}'
)


def _module(*lines: str) -> str:
    return "\n".join(["ENTRY %main.1 (p: f32[]) -> f32[] {", *lines, "}"])


def _while(op_name: str, trips: int | None = None) -> str:
    config = "" if trips is None else f', backend_config={{"known_trip_count":{{"n":"{trips}"}}}}'
    return (
        f"  %while.3 = (s32[], bf16[8,32]{{1,0}}) while(%tuple.7), condition=%c, body=%b, "
        f'metadata={{op_name="{op_name}"}}{config}'
    )


def test_result_bytes_of_sync_and_async_forms():
    (gather,) = hlo.collectives(SYNC)
    assert gather == hlo.Collective(
        "all-gather", "jit(f)/while/body/dot_general", 4 * 64 * 8 * 2, True, "jit(f)/while/body"
    )
    (permute,) = hlo.collectives(ASYNC_PERMUTE)
    assert permute.kind == "collective-permute" and permute.bytes == 8 * 64 * 2  # the result
    (start,) = hlo.collectives(ASYNC_GATHER + "\n" + DONE)  # -done is not counted again
    assert start.kind == "all-gather" and start.bytes == 8 * 256 * 2
    assert not start.in_loop and start.loop is None
    (reduce,) = hlo.collectives(ALL_REDUCE_START)  # two arrays reduced at once
    assert reduce.kind == "all-reduce" and reduce.bytes == (1024 + 16) * 4


def test_cloned_bodies_count_once_with_the_largest_copy():
    clone = SYNC.replace("%all-gather.16", "%all-gather.17").replace("[4,64,8]", "[4,64,4]")
    text = "\n".join([clone, SYNC, ASYNC_PERMUTE, ASYNC_PERMUTE.replace("-start =", "-start.1 =")])
    found = hlo.collectives(text)
    assert [(c.kind, c.bytes) for c in found] == [
        ("all-gather", 4 * 64 * 8 * 2),
        ("collective-permute", 8 * 64 * 2),
    ]
    assert hlo.loops(text) == {"jit(f)/while/body": 4096 + 1024}
    assert hlo.loop_bytes(text) == 5120 and hlo.call_bytes(text) == 0


def test_nested_loops_multiply_by_stated_trip_counts():
    outer, inner = "jit(f)/while/body", "jit(f)/while/body/while/body"
    text = _module(
        SYNC,  # outer body: 4096 bytes
        SYNC.replace("while/body/dot_general", "while/body/while/body/dot_general"),
        ASYNC_GATHER,  # outside: 4096 bytes
        _while("jit(f)/while"),  # the outer loop: no stated trip count
        _while("jit(f)/while/body/while", trips=3),
    )
    found = {c.op_name: c for c in hlo.collectives(text)}
    assert found[inner + "/dot_general"].loop == outer  # the OUTERMOST loop
    assert hlo.trip_counts(text) == {inner: 3}
    assert hlo.loops(text) == {outer: 4096 + 3 * 4096}
    assert hlo.loop_bytes(text) == 16384
    assert hlo.call_bytes(text) == 4096
    assert hlo.total_bytes(text, unknown_trips=10) == 4096 + 10 * 16384


def test_several_outermost_loops():
    second = SYNC.replace("jit(f)/while/body/", "jit(f)/scan/while/body/").replace("4,64", "2,64")
    text = _module(SYNC, second, _while("jit(f)/scan/while", trips=5))
    assert hlo.loops(text) == {"jit(f)/while/body": 4096, "jit(f)/scan/while/body": 2048}
    assert hlo.loop_bytes(text) == 4096  # the loop that moves most per iteration
    assert hlo.total_bytes(text, unknown_trips=2) == 2 * 4096 + 5 * 2048


def test_collectives_without_metadata_are_each_kept_outside_loops():
    bare = "  %all-reduce.1 = f32[8]{0} all-reduce(%x), to_apply=%add"
    text = bare + "\n" + bare.replace("all-reduce.1", "all-reduce.2")
    found = hlo.collectives(text)
    assert [c.op_name for c in found] == ["%all-reduce.1", "%all-reduce.2"]
    assert hlo.call_bytes(text) == 64


def test_a_weight_gathered_inside_a_while_loop_on_a_tpu_slice():
    """A [512, 256] bf16 weight split over `fsdp` along its first (embedding) dim,
    gathered for use in every iteration: the loop moves the whole weight."""
    from classkd_jax import compile as compile_cli
    from classkd_jax import topology

    topology.quiet()
    topo = topology.get("v5e:2x2")
    mesh = jax.sharding.Mesh(np.array(topo.devices), ("fsdp",))
    weight = jax.ShapeDtypeStruct((512, 256), jnp.bfloat16, sharding=NamedSharding(mesh, P("fsdp")))
    x = jax.ShapeDtypeStruct((8, 512), jnp.bfloat16, sharding=NamedSharding(mesh, P()))

    def decode(w, x):
        def body(carry):
            i, h = carry
            whole = jax.lax.with_sharding_constraint(w, NamedSharding(mesh, P()))
            y = jnp.tanh(h @ whole)
            return i + 1, jnp.concatenate([y, y], axis=1)

        return jax.lax.while_loop(lambda c: c[0] < 4, body, (0, x))[1]

    with compile_cli.no_persistent_cache():
        text = jax.jit(decode).lower(weight, x).compile().as_text()
    gathers = [c for c in hlo.collectives(text) if c.kind == "all-gather" and c.in_loop]
    assert [c.bytes for c in gathers] == [512 * 256 * 2]
    assert gathers[0].loop.endswith("while/body")
    assert hlo.loop_bytes(text) >= 512 * 256 * 2


def test_a_loop_condition_counts_with_its_body():
    cond = (
        "  %all-reduce.5 = u32[]{:T(128)} all-reduce(%b), to_apply=%r, "
        'metadata={op_name="jit(run)/while/cond/reduce_and" stack_frame_id=52}'
    )
    (c,) = hlo.collectives(cond)
    assert c.in_loop and c.loop == "jit(run)/while/body"
    assert hlo.loops(cond + "\n" + SYNC.replace("jit(f)", "jit(run)")) == {
        "jit(run)/while/body": 4 + 4096
    }


# A decode loop in miniature: the body reads a [4,256] f32 weight (a dot), writes
# one [1,256] row of a [16,256] cache in place and slices one [1,256] row out of
# it; the condition `i < 16` gives the trip count (no known_trip_count stated).
LOOP_MODULE = """
%fused_update (param_0: f32[16,256], param_1: f32[1,256], param_2: s32[]) -> f32[16,256] {
  %param_0 = f32[16,256]{1,0} parameter(0)
  %param_1 = f32[1,256]{1,0} parameter(1)
  %param_2 = s32[] parameter(2)
  %c0 = s32[] constant(0)
  ROOT %dus = f32[16,256]{1,0} dynamic-update-slice(%param_0, %param_1, %param_2, %c0)
}

%body (state: (s32[], f32[16,256], f32[4,256], f32[1,4])) -> (s32[], f32[16,256], f32[4,256], f32[1,4]) {
  %state = (s32[], f32[16,256]{1,0}, f32[4,256]{1,0}, f32[1,4]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %cache = f32[16,256]{1,0} get-tuple-element(%state), index=1
  %w = f32[4,256]{1,0} get-tuple-element(%state), index=2
  %x = f32[1,4]{1,0} get-tuple-element(%state), index=3
  %y = f32[1,256]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(run)/while/body/dot_general"}
  %new = f32[16,256]{1,0} fusion(%cache, %y, %i), kind=kLoop, calls=%fused_update
  %c0 = s32[] constant(0)
  %row = f32[1,256]{1,0} dynamic-slice(%new, %i, %c0), dynamic_slice_sizes={1,256}
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], f32[16,256]{1,0}, f32[4,256]{1,0}, f32[1,4]{1,0}) tuple(%next, %new, %w, %x)
}

%cond (state.1: (s32[], f32[16,256], f32[4,256], f32[1,4])) -> pred[] {
  %state.1 = (s32[], f32[16,256]{1,0}, f32[4,256]{1,0}, f32[1,4]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%state.1), index=0
  %limit = s32[] constant(16)
  ROOT %lt = pred[] compare(%i.1, %limit), direction=LT
}

ENTRY %main (w.1: f32[4,256], x.1: f32[1,4]) -> f32[16,256] {
  %w.1 = f32[4,256]{1,0} parameter(0)
  %x.1 = f32[1,4]{1,0} parameter(1)
  %zero = s32[] constant(0)
  %init = f32[16,256]{1,0} broadcast(%x.1), dimensions={}
  %t = (s32[], f32[16,256]{1,0}, f32[4,256]{1,0}, f32[1,4]{1,0}) tuple(%zero, %init, %w.1, %x.1)
  %loop = (s32[], f32[16,256]{1,0}, f32[4,256]{1,0}, f32[1,4]{1,0}) while(%t), condition=%cond, body=%body, metadata={op_name="jit(run)/while"}
  ROOT %res = f32[16,256]{1,0} get-tuple-element(%loop), index=1
}
"""  # noqa: E501 - HLO lines as XLA prints them


def test_memory_counts_loop_bodies_per_iteration():
    row, weight, cache = 256 * 4, 4 * 256 * 4, 16 * 256 * 4
    m = hlo.memory(LOOP_MODULE)
    outside, loops = m.call, m.loops
    assert outside == cache + 4 * 4  # the broadcast writes the cache, reads x
    per_step = (
        (16 + weight + row)  # the dot reads x and the weight, writes a row
        + (row + 4 + row)  # the fusion reads the update and the index, writes the row in place
        + 2 * row  # the dynamic-slice reads and writes one row
        + 3 * 4  # the counter's add
    )
    compare = 2 * 4 + 1  # the condition runs every iteration too
    assert loops == {"jit(run)/while/body": per_step + compare}
    assert hlo.trip_counts(LOOP_MODULE) == {"jit(run)/while/body": 16}
    assert m.trips == {"jit(run)/while/body": 16}
    assert m.total == outside + 16 * (per_step + compare)


# The TPU fuses async collectives (`async-collective-*` fusions that pass buffers
# through): their bytes are the collective's, not HBM traffic of a kernel.
FUSED_COLLECTIVE = """
%gather_fusion (param_0: bf16[64,8], param_1: bf16[64,32]) -> (bf16[64,8], bf16[64,32], bf16[64,32]) {
  %param_0 = bf16[64,8]{1,0} parameter(0)
  %param_1 = bf16[64,32]{1,0} parameter(1)
  %all-gather.3 = bf16[64,32]{1,0} all-gather(%param_0), dimensions={1}, metadata={op_name="jit(run)/while/body/dot_general"}
  ROOT %t = (bf16[64,8]{1,0}, bf16[64,32]{1,0}, bf16[64,32]{1,0}) tuple(%param_0, %param_1, %all-gather.3)
}

%pass (param_0.1: f32[1024], param_1.1: f32[16]) -> (f32[1024], f32[16]) {
  %param_0.1 = f32[1024]{0} parameter(0)
  %param_1.1 = f32[16]{0} parameter(1)
  %neg = f32[16]{0} negate(%param_1.1)
  ROOT %t.1 = (f32[1024]{0}, f32[16]{0}) tuple(%param_0.1, %neg)
}

ENTRY %main (w: bf16[64,8], buf: bf16[64,32], big: f32[1024], small: f32[16]) -> f32[16] {
  %w = bf16[64,8]{1,0} parameter(0)
  %buf = bf16[64,32]{1,0} parameter(1)
  %big = f32[1024]{0} parameter(2)
  %small = f32[16]{0} parameter(3)
  %async-collective-start = (bf16[64,8]{1,0}, bf16[64,32]{1,0}, bf16[64,32]{1,0}) fusion(%w, %buf), kind=kCustom, calls=%gather_fusion
  %p = (f32[1024]{0}, f32[16]{0}) fusion(%big, %small), kind=kLoop, calls=%pass
  ROOT %out = f32[16]{0} get-tuple-element(%p), index=1
}
"""  # noqa: E501 - HLO lines as XLA prints them


def test_fused_collectives_and_pass_through_buffers_are_not_hbm_traffic():
    m = hlo.memory(FUSED_COLLECTIVE)
    assert m.total == m.call == 16 * 4 * 2  # the negate reads and writes 16 floats
    (gather,) = hlo.collectives(FUSED_COLLECTIVE)
    assert gather.bytes == 64 * 32 * 2 and gather.in_loop  # found inside the fusion
