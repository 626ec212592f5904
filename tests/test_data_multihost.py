"""Per-host data sharding across 2 real JAX processes on 127.0.0.1 (gloo).

Run as a script, this file is one worker process: it reads its slice of every
global batch, assembles global arrays with `jax.make_array_from_process_local_data`,
counts with a jitted reduction how often each example was seen, and compares
the global batches with a single-process iterator over the same data.
"""

import json
import os
import sys

import numpy as np
import pytest

NUM_EXAMPLES = 45  # not a multiple of the global batch: the last batch has filler rows
GLOBAL_BATCH = 16


def _fake_data():
    from classkd_jax.data.tokenize import TokenizedData, TokenizeStats

    rng = np.random.default_rng(0)
    prompts = [
        rng.integers(3, 100, rng.integers(2, 30)).astype(np.int32) for _ in range(NUM_EXAMPLES)
    ]
    responses = [
        rng.integers(3, 100, rng.integers(1, 10)).astype(np.int32) for _ in range(NUM_EXAMPLES)
    ]
    stats = TokenizeStats(NUM_EXAMPLES, NUM_EXAMPLES)
    return TokenizedData(prompts, responses, np.arange(NUM_EXAMPLES), 0, stats)


def _worker(process_id: int, port: int, out: str) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax
    import jax.numpy as jnp
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    from classkd_jax.data import iterator

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    data = _fake_data()
    kw = dict(
        kind="paired",
        global_batch_size=GLOBAL_BATCH,
        seed=3,
        num_epochs=1,
        drop_remainder=False,
        length_buckets=(16, 32, 64),
        prompt_buckets=(16, 32),
    )
    local = iterator.BatchIterator(data, **kw)  # process index and count from JAX
    single = iterator.BatchIterator(data, process_index=0, process_count=1, **kw)

    @jax.jit
    def count(counts, index, valid):
        return counts.at[jnp.where(valid > 0, index, NUM_EXAMPLES)].add(1, mode="drop")

    counts = jnp.zeros((NUM_EXAMPLES,), jnp.int32)
    same = True
    n_batches = 0
    for batch, want in zip(local, single, strict=True):
        assert batch["tokens"].shape[0] == GLOBAL_BATCH // 2
        g = iterator.to_global(batch, sharding)
        assert g["tokens"].shape == want["tokens"].shape
        counts = count(counts, g["index"], g["valid"])
        for k, v in g.items():
            same &= bool(np.array_equal(multihost_utils.process_allgather(v, tiled=True), want[k]))
        n_batches += 1
    result = {
        "counts": np.asarray(multihost_utils.process_allgather(counts, tiled=True)).tolist(),
        "same": same,
        "batches": n_batches,
        "devices": jax.device_count(),
    }
    with open(out, "w") as f:
        json.dump(result, f)
    jax.distributed.shutdown()  # as the CLIs do (`distributed.shutdown`): not at teardown


@pytest.mark.multiprocess
def test_two_processes_cover_the_data_exactly_once(tmp_path):
    from tests.multiprocess import free_port, run_processes  # this file is also the worker

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    commands = [[sys.executable, __file__, str(i), str(port), str(outs[i])] for i in range(2)]
    run_processes(commands, env, timeout=120)
    for out in outs:
        result = json.loads(out.read_text())
        assert result["devices"] == 8
        assert result["batches"] == 3  # ceil(45 / 16)
        assert result["counts"] == [1] * NUM_EXAMPLES
        assert result["same"]


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
