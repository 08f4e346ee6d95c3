"""t2w_jax.data."""
