"""t2w_jax.models."""
