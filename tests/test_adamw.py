"""Tests for train/adamw.py: the fused clip + AdamW against optax's chain."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t2w_jax.train.adamw import clipped_adamw

SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20, end_value=5e-4)
KW = dict(b1=0.9, b2=0.99, weight_decay=0.05)


def reference(max_norm):
  return optax.chain(optax.clip_by_global_norm(max_norm), optax.adamw(SCHEDULE, **KW))


@pytest.mark.parametrize("max_norm", [1e3, 0.5])  # never clipped / clipped every step
def test_matches_optax_chain_over_steps(max_norm):
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.standard_normal((5, 7)), jnp.float32),
            "b": {"x": jnp.asarray(rng.standard_normal(3), jnp.float32)}}
  ours, ref = clipped_adamw(SCHEDULE, max_norm=max_norm, **KW), reference(max_norm)
  s_ours, s_ref = ours.init(params), ref.init(params)
  # The same state tree: a checkpoint of either restores into the other.
  chex.assert_trees_all_equal_structs(s_ours, s_ref)
  p_ours = p_ref = params
  for step in range(8):
    grads = jax.tree.map(
        lambda x, s=step: jnp.asarray(rng.standard_normal(x.shape), jnp.float32) * (s + 1),
        params)
    u_ours, s_ours = jax.jit(ours.update)(grads, s_ours, p_ours)
    u_ref, s_ref = jax.jit(ref.update)(grads, s_ref, p_ref)
    chex.assert_trees_all_close(u_ours, u_ref, rtol=2e-5, atol=1e-7)
    p_ours, p_ref = optax.apply_updates(p_ours, u_ours), optax.apply_updates(p_ref, u_ref)
  chex.assert_trees_all_close(p_ours, p_ref, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(s_ours, s_ref, rtol=1e-5, atol=1e-8)
  assert int(s_ours[1][0].count) == int(s_ours[1][2].count) == 8


def test_needs_params():
  tx = clipped_adamw(SCHEDULE, max_norm=1.0, **KW)
  params = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match="params"):
    tx.update(params, tx.init(params))
