"""classkd-jax: white-box knowledge distillation of language models in JAX/Flax."""

from classkd_jax import plugins as _plugins

_plugins.quiet_import()
