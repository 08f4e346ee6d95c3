"""t2w_jax.diffusion."""
