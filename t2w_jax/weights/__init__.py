"""t2w_jax.weights."""
