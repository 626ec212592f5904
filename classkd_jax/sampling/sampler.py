"""The jitted, sharded sampler and the host-side prompt bucketing.

`Sampler` compiles `loop.sample_loop` once per (SamplingConfig, prompt bucket,
batch size) with `NamedSharding` in/out shardings: params come in as the
training rules place them, prompts and outputs split by rows as a training
batch (`classkd_jax.sharding`). Inside the program, before the decode loop, the
weights move once into the *decode layout* (`sharding.decode_rules`; tensor
parallel by default) and the loop, its activations and its KV caches follow
that layout, so a decode step moves activations between devices, never
weights. `left_pad` / `bucket_length` turn ragged token lists into the static,
left-padded shapes the loop wants.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from classkd_jax import sharding
from classkd_jax.models import ModelConfig, abstract_params, init_cache
from classkd_jax.sampling.loop import SampleOutput, sample_loop
from classkd_jax.sampling.processors import SamplingConfig


def default_buckets(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from `smallest` below `max_length`, then `max_length`."""
    buckets, b = [], smallest
    while b < max_length:
        buckets.append(b)
        b *= 2
    return (*buckets, max_length)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= `length`.

    Raises:
      ValueError: naming `length` when it exceeds the largest bucket.
    """
    for b in sorted(buckets):
        if length <= b:
            return b
    raise ValueError(
        f"prompt of {length} tokens is longer than the largest prompt bucket "
        f"{max(buckets)} (buckets: {tuple(sorted(buckets))}); left-truncate it "
        "(max_prompt_length) or add a larger bucket"
    )


def left_pad(
    prompts: Sequence[Sequence[int]], length: int, pad_id: int, batch_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-pads token lists to `length`, adding padding rows up to `batch_size`.

    Args:
      prompts: token id lists, each with 1 .. length tokens.
      length: the static prompt length P (a bucket).
      pad_id: id for padding slots.
      batch_size: static number of rows B >= len(prompts); default len(prompts).
        Padding rows hold one `pad_id` token and are marked invalid.

    Returns:
      (tokens [B, P] int32, mask [B, P] bool, row_valid [B] bool) numpy arrays.
    """
    batch = len(prompts) if batch_size is None else batch_size
    if len(prompts) > batch:
        raise ValueError(f"{len(prompts)} prompts do not fit batch_size={batch}")
    tokens = np.full((batch, length), pad_id, np.int32)
    mask = np.zeros((batch, length), bool)
    for i, ids in enumerate(prompts):
        if not 1 <= len(ids) <= length:
            raise ValueError(f"prompt {i} has {len(ids)} tokens; expected 1 .. {length}")
        tokens[i, length - len(ids) :] = ids
        mask[i, length - len(ids) :] = True
    # Padding rows need one real token so that attention is well defined.
    mask[len(prompts) :, -1] = True
    row_valid = np.arange(batch) < len(prompts)
    return tokens, mask, row_valid


def check_left_padded(mask: np.ndarray) -> None:
    """Raises ValueError naming the first row of `mask` [B, P] that is not left-padded
    (a run of False, then at least one True up to the end)."""
    mask = np.asarray(mask, bool)
    ok = mask[:, -1] & np.all(mask[:, 1:] >= mask[:, :-1], axis=1)
    if not ok.all():
        row = int(np.argmin(ok))
        raise ValueError(
            f"prompt_mask row {row} is not left-padded with >= 1 real token: "
            f"{mask[row].astype(int).tolist()}"
        )


def data_axes(mesh: Mesh, rules: sharding.Rules = sharding.DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes the batch is split over: the rules' 'batch' axes present in `mesh`."""
    axes = dict(rules).get("batch") or ()
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return tuple(a for a in axes if a in mesh.axis_names)


class Sampler:
    """Samples from a student (optionally teacher-mixed) with one compile per shape.

    Example:
      sampler = Sampler(config, mesh=mesh)
      out = sampler(params, tokens, mask, jax.random.key(0),
                    SamplingConfig(max_new_tokens=64, eos_ids=config.eos_token_ids))

    Attributes:
      num_traces: how many times a sampling program was traced (= compiled);
        the compile counter the tests use.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        mesh: Mesh | None = None,
        rules: sharding.Rules = sharding.DEFAULT_RULES,
        param_shardings=None,
        teacher_config: ModelConfig | None = None,
        teacher_param_shardings=None,
        decode_layout: str = "tensor",
    ):
        """Args:
        config: the student's model config.
        mesh: where to run; None = the default device, unsharded. The batch
          is split over the rules' 'batch' axes (the data axes), the KV caches
          follow `classkd_jax.sharding.cache_shardings`, and the model's
          activation constraints are on.
        rules: logical-axis rules (`classkd_jax.sharding.DEFAULT_RULES`).
        param_shardings: a pytree of `NamedSharding` (or a prefix) for the
          params; default the training placement `sharding.param_shardings(
          abstract_params(config), mesh, rules)`.
        teacher_config: the teacher's config, for teacher-mixed sampling.
        teacher_param_shardings: like `param_shardings`, for the teacher.
        decode_layout: where the weights live while decoding
          (`classkd_jax.sharding.decode_rules`): 'tensor' (default),
          'replicated', or 'train' (decode from the training placement, which
          gathers every weight on every token; kept to measure against).
        """
        self.config = config
        self.teacher_config = teacher_config
        self.mesh = mesh
        self.rules = tuple(rules)
        self.decode_layout = decode_layout
        decoded = (config,) if teacher_config is None else (config, teacher_config)
        self.decode_rules = tuple(sharding.decode_rules(decode_layout, mesh, decoded, self.rules))
        if mesh is not None:
            if param_shardings is None:
                param_shardings = sharding.param_shardings(abstract_params(config), mesh, rules)
            if teacher_config is not None and teacher_param_shardings is None:
                teacher_param_shardings = sharding.param_shardings(
                    abstract_params(teacher_config), mesh, rules
                )
            # Prompts and outputs split by rows over the data axes; the key is replicated.
            self._rows = NamedSharding(mesh, P(data_axes(mesh, self.rules) or None))
            self._decode_rows = NamedSharding(mesh, P(data_axes(mesh, self.decode_rules) or None))
            self._replicated = NamedSharding(mesh, P())
        self._param_shardings = param_shardings
        self._teacher_param_shardings = teacher_param_shardings
        self._programs: dict = {}
        self.num_traces = 0

    @property
    def batch_shards(self) -> int:
        """The batch size must be a multiple of this: of the rows' shards as a
        training batch (the data axes) and as the decode layout splits them."""
        if self.mesh is None:
            return 1
        shards = lambda rules: math.prod(self.mesh.shape[a] for a in data_axes(self.mesh, rules))
        return math.lcm(shards(self.rules), shards(self.decode_rules))

    def _cache_sharding(self, config: ModelConfig, batch: int, slots: int):
        shapes = jax.eval_shape(lambda: init_cache(config, batch, slots))
        return sharding.cache_shardings(shapes, self.mesh, self.decode_rules)

    @functools.cache  # noqa: B019 - one entry per model config; the sampler lives as long
    def _layout(self, config: ModelConfig, repeat: bool = True):
        """`loop.DecodeLayout`: the config `config` decodes as (its KV heads
        repeated up to the KV shards, `sharding.decode_kv_heads`, unless not
        `repeat`), the shardings of its unrolled params and of its [V, D] head
        under the decode rules."""
        if repeat:
            kv = sharding.decode_kv_heads(config.num_kv_heads, self.mesh, self.decode_rules)
            config = config.replace(num_kv_heads=kv)
        rules = self.decode_rules
        params = sharding.param_shardings(abstract_params(config), self.mesh, rules)
        head_shape = (config.vocab_size, config.hidden_size)
        head = sharding.logical_sharding(("vocab", "embed"), self.mesh, rules, head_shape)
        return config, params, head

    def jitted(self, cfg: SamplingConfig):
        """The `jax.jit` object of `cfg`'s program, called as
        `(params, teacher_params, tokens, mask, row_valid, rng)`; for `.lower(...)`
        (under `sharding.activation_sharding(mesh)`) and memory analysis."""
        return self._program(cfg)

    def _program(self, cfg: SamplingConfig):
        if cfg in self._programs:
            return self._programs[cfg]

        def run(params, teacher_params, tokens, mask, row_valid, rng):
            self.num_traces += 1  # Python side effect: runs once per trace.
            placed, rules = {}, contextlib.nullcontext()
            if self.mesh is not None:
                # Rows move to the decode layout's split once (the loop's carry follows
                # them), and the loop's activations follow the decode rules, whatever
                # rules the caller traces under (e.g. the compile command's).
                tokens, mask, row_valid = jax.lax.with_sharding_constraint(
                    (tokens, mask, row_valid), (self._decode_rows,) * 3
                )
                placed = dict(cache_sharding=self._cache_sharding, layout=self._layout)
                rules = sharding.logical_rules(self.decode_rules)
            with rules:
                return sample_loop(
                    self.config,
                    params,
                    tokens,
                    mask,
                    rng,
                    cfg,
                    row_valid=row_valid,
                    teacher_config=self.teacher_config,
                    teacher_params=teacher_params,
                    **placed,
                )

        if self.mesh is None:
            program = jax.jit(run)
        else:
            replicated, rows = self._replicated, self._rows
            student = self._param_shardings
            teacher = self._teacher_param_shardings or replicated
            out = SampleOutput(
                tokens=rows,
                mask=rows,
                logprobs=rows,
                student_logprobs=rows,
                prompt_tokens=rows,
                prompt_mask=rows,
                num_steps=replicated,
            )
            program = jax.jit(
                run,
                in_shardings=(student, teacher, rows, rows, rows, replicated),
                out_shardings=out,
            )
        self._programs[cfg] = program
        return program

    def __call__(
        self,
        params,
        prompt_tokens,
        prompt_mask,
        rng: jax.Array,
        cfg: SamplingConfig,
        *,
        row_valid=None,
        teacher_params=None,
    ) -> SampleOutput:
        """Samples completions (see `loop.sample_loop` for the semantics).

        Args:
          params: the student's params.
          prompt_tokens: [B, P] int32 LEFT-padded prompts (e.g. from `left_pad`).
          prompt_mask: [B, P] bool, True for real tokens.
          rng: a PRNG key (typed `jax.random.key` or raw `PRNGKey`).
          cfg: the static `SamplingConfig`.
          row_valid: [B] bool, False for batch-padding rows; default all True.
          teacher_params: the teacher's params iff `cfg.teacher_mix > 0`.

        Returns:
          `SampleOutput`, batch-sharded over the mesh's data axes.
        """
        if isinstance(prompt_mask, np.ndarray):  # host inputs: check without a device sync
            check_left_padded(prompt_mask)
            longest = int(prompt_mask.sum(axis=1).max())
            context = self.config.max_position_embeddings
            if longest + cfg.max_new_tokens > context:
                raise ValueError(
                    f"a prompt of {longest} tokens + max_new_tokens={cfg.max_new_tokens} "
                    f"exceeds the model's context of {context} (max_position_embeddings)"
                )
        tokens = jnp.asarray(prompt_tokens, jnp.int32)
        mask = jnp.asarray(prompt_mask, bool)
        if tokens.ndim != 2 or mask.shape != tokens.shape:
            raise ValueError(
                f"prompt_tokens {tokens.shape} and prompt_mask {mask.shape} must be equal [B, P]"
            )
        if tokens.shape[0] % self.batch_shards:
            raise ValueError(
                f"batch size {tokens.shape[0]} is not a multiple of the {self.batch_shards} "
                f"shards of the mesh's data axes {data_axes(self.mesh, self.rules)}"
            )
        if (cfg.teacher_mix > 0) != (teacher_params is not None):
            raise ValueError(f"teacher_mix={cfg.teacher_mix} requires teacher_params iff > 0")
        if cfg.teacher_mix > 0 and self.teacher_config is None:
            raise ValueError("teacher_mix > 0 needs Sampler(..., teacher_config=...)")
        if row_valid is None:
            row_valid = jnp.ones(tokens.shape[:1], bool)
        program = self._program(cfg)
        if self.mesh is None:
            return program(params, teacher_params, tokens, mask, row_valid, rng)
        # A no-op for inputs already placed so (params in the training placement);
        # otherwise it moves them, where jit would refuse committed mismatches. On a
        # mesh spanning processes, host-local inputs must be the same everywhere.
        tokens, mask, row_valid = sharding.put((tokens, mask, row_valid), self._rows)
        rng = sharding.put(rng, self._replicated)
        params = sharding.put(params, self._param_shardings)
        if teacher_params is not None and self._teacher_param_shardings is not None:
            teacher_params = sharding.put(teacher_params, self._teacher_param_shardings)
        # Traced under the mesh and rules, the model's activation constraints apply.
        with sharding.activation_sharding(self.mesh, self.rules):
            return program(params, teacher_params, tokens, mask, row_valid, rng)
