"""Comparisons of methods (`python -m classkd_jax.compare`): plan the runs, train and
score each, tabulate."""
