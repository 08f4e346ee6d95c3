"""t2w_jax.train."""
