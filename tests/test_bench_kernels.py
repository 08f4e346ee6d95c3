"""Tests for benchmarks/kernel_bench.py: each pair computes the same thing (equal work)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import dit_bench, kernel_bench
from configs import dit as dit_config


@pytest.mark.parametrize("pair", [kernel_bench.mlp_pair, kernel_bench.projection_pair,
                                  kernel_bench.attention_pair, kernel_bench.bias_pair])
def test_pairs_compute_the_same_gradients(pair):
  old, new = pair(dit_bench.QUICK_SIZE, np.random.default_rng(0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), old(),
               new())


@pytest.mark.parametrize("pair", [kernel_bench.mlp_pair, kernel_bench.projection_pair,
                                  kernel_bench.bias_pair])
def test_pairs_agree_in_bfloat16(pair):
  old, new = pair(dit_bench.QUICK_SIZE, np.random.default_rng(0), jnp.bfloat16)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=3e-2, atol=1e-3), old(), new())


@pytest.mark.slow
def test_optimiser_pair_updates_alike():
  old, new, n = kernel_bench.optimiser_pair(dit_bench.QUICK_SIZE,
                                            dit_config.get_config("small"))
  assert n > 0
  for _ in range(2):
    a, b = old(), new()
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a, b)


@pytest.mark.slow
def test_step_bias_pair_trains_alike_and_restores_add_bias():
  real = kernel_bench.layers.add_bias
  old, new = kernel_bench.step_bias_pair(dit_bench.QUICK_SIZE, dit_config.get_config("small"),
                                         "bfloat16")
  assert kernel_bench.layers.add_bias is real
  for _ in range(2):
    a, b = float(old()), float(new())
  np.testing.assert_allclose(a, b, rtol=2e-2)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,step_row", [("float32", []), ("bfloat16", ["train step, biases"])])
def test_quick_run_reports_every_pair(dtype, step_row):
  result = kernel_bench.run(dit_config.get_config("small"), quick=True, dtype=dtype)
  assert [r["what"] for r in result["rows"]] == [
      "MLP", "attention projections", "attention core", "MLP biases", *step_row,
      "optimiser update"]
  assert all(r["old_median"] > 0 and r["new_median"] > 0 for r in result["rows"])
  assert "baseline / candidate" in kernel_bench.format_report(result)
