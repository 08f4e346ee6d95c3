"""t2w_jax.text."""
