"""t2w_jax: Text2Weight in JAX/Flax."""
