"""t2w_jax.evaluate."""
