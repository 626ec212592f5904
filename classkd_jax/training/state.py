"""Train states and where they live on the mesh.

A trainable role (student, classmate) is a `TrainState` (step, params, optax
state); a run is a `RunState` holding the student, the classmate when the
method has one, and the classmate's gap statistics. Frozen roles (the
teacher) are plain param pytrees passed beside the state, never inside it:
they get no optimizer state and are never written into run checkpoints.

Shardings are derived from the params' logical axis names
(`classkd_jax.sharding`), optimizer moments mirror their params, scalars
replicate. States are materialised directly in their shardings
(`jax.jit(..., out_shardings=...)`), so no full copy lands on one device.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from classkd_jax import sharding
from classkd_jax.models import ModelConfig, abstract_params


@flax.struct.dataclass
class TrainState:
    """A trainable role's state: `step: [] int32` (its optimizer steps), `params`, `opt_state`."""

    step: jax.Array
    params: Any
    opt_state: Any


@flax.struct.dataclass
class GapState:
    """Running averages of KL(p || q) (student) and KL(p || c) (classmate) on the
    off-policy batches, for the classmate's gap control. `count: [] int32` is the
    number of measurements (the averages are bias-corrected by it)."""

    student_kl: jax.Array
    classmate_kl: jax.Array
    count: jax.Array

    @classmethod
    def zeros(cls) -> GapState:
        z = jnp.zeros((), jnp.float32)
        return cls(z, z, jnp.zeros((), jnp.int32))

    def averages(self, decay: float) -> tuple[jax.Array, jax.Array]:
        """Bias-corrected running averages (0 before the first measurement)."""
        correction = 1.0 - decay ** self.count.astype(jnp.float32)
        safe = jnp.where(self.count > 0, correction, 1.0)
        return self.student_kl / safe, self.classmate_kl / safe

    def update(self, student_kl: jax.Array, classmate_kl: jax.Array, decay: float) -> GapState:
        mix = lambda old, new: decay * old + (1.0 - decay) * new
        return GapState(
            mix(self.student_kl, student_kl), mix(self.classmate_kl, classmate_kl), self.count + 1
        )


@flax.struct.dataclass
class RunState:
    """Everything a train step updates.

    Attributes:
      step: [] int32, optimizer steps done (the student's).
      student: the student's `TrainState`.
      classmate: the classmate's `TrainState`, or None (methods without one).
      gap: the classmate's `GapState`, or None.
    """

    step: jax.Array
    student: TrainState
    classmate: TrainState | None = None
    gap: GapState | None = None


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def params_shardings(config: ModelConfig, mesh: Mesh) -> Any:
    """`NamedSharding`s of a model's params by the logical rules."""
    return sharding.param_shardings(abstract_params(config), mesh)


def train_state_shardings(
    config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """Shardings of a role's `TrainState`: moments mirror their params, counts replicate."""
    boxed = abstract_params(config)
    params_sh = sharding.param_shardings(boxed, mesh)
    abstract_opt = jax.eval_shape(optimizer.init, nn.meta.unbox(boxed))
    opt_sh = optax.tree_map_params(
        optimizer,
        lambda _, s: s,
        abstract_opt,
        params_sh,
        transform_non_params=lambda _: replicated(mesh),
    )
    return TrainState(replicated(mesh), params_sh, opt_sh)


def run_state_shardings(
    mesh: Mesh,
    student: tuple[ModelConfig, optax.GradientTransformation],
    classmate: tuple[ModelConfig, optax.GradientTransformation] | None = None,
) -> RunState:
    rep = replicated(mesh)
    return RunState(
        step=rep,
        student=train_state_shardings(*student, mesh),
        classmate=None if classmate is None else train_state_shardings(*classmate, mesh),
        gap=None if classmate is None else GapState(rep, rep, rep),
    )


def new_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """A role's fresh state around existing params (traceable; jit it with out_shardings)."""
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def init_run_state(
    mesh: Mesh,
    student: tuple[ModelConfig, optax.GradientTransformation, Any],
    classmate: tuple[ModelConfig, optax.GradientTransformation, Any] | None = None,
) -> RunState:
    """A fresh `RunState` from each role's `(config, optimizer, params)`, placed on the mesh.

    The params are copied into the state (the caller's arrays are not donated),
    so a classmate may start from the very arrays of the student's init.
    """
    shardings = run_state_shardings(mesh, student[:2], None if classmate is None else classmate[:2])

    def build(student_params, classmate_params):
        copy = lambda tree: jax.tree.map(jnp.copy, tree)
        return RunState(
            step=jnp.zeros((), jnp.int32),
            student=new_train_state(copy(student_params), student[1]),
            classmate=None
            if classmate is None
            else new_train_state(copy(classmate_params), classmate[1]),
            gap=None if classmate is None else GapState.zeros(),
        )

    student_params = sharding.put(student[2], shardings.student.params)
    classmate_params = (
        None if classmate is None else sharding.put(classmate[2], shardings.classmate.params)
    )
    return jax.jit(build, out_shardings=shardings)(student_params, classmate_params)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of a batch over the data axes; the other dims replicate."""
    return sharding.logical_sharding(("batch", "length"), mesh)


def abstract_run_state(
    mesh: Mesh,
    student: tuple[ModelConfig, optax.GradientTransformation],
    classmate: tuple[ModelConfig, optax.GradientTransformation] | None = None,
) -> RunState:
    """The `RunState`'s shapes, dtypes and shardings, with no array allocated (a
    restore target)."""

    def build():
        def role(config, optimizer):
            params = nn.meta.unbox(abstract_params(config))
            return new_train_state(params, optimizer)

        return RunState(
            step=jnp.zeros((), jnp.int32),
            student=role(*student),
            classmate=None if classmate is None else role(*classmate),
            gap=None if classmate is None else GapState.zeros(),
        )

    shapes = jax.eval_shape(build)
    shardings = run_state_shardings(mesh, student, classmate)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
