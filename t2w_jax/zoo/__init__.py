"""t2w_jax.zoo."""
