"""Tests for benchmarks/kernel_bench.py: each pair computes the same thing (equal work)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import dit_bench, kernel_bench
from configs import dit as dit_config


# Input dimensions of each argument that is a projection kernel (0: not one): the old side
# takes (*in, *out) kernels, the new side (*out, *in) (both sides of the bias pair do).
KERNEL_INPUTS = {"mlp_pair": (1, 1, 0), "projection_pair": (1, 1, 1, 2, 0),
                 "attention_pair": (0,) * 5, "attention_layout_pair": (0,) * 5,
                 "bias_pair": (0,) * 5}


def _old_layout(pair_name, new_grads):
  """The new side's gradients with each kernel's gradient in the old side's layout."""
  return tuple(g if n == 0 else jnp.moveaxis(g, tuple(range(g.ndim - n, g.ndim)),
                                             tuple(range(n)))
               for g, n in zip(new_grads, KERNEL_INPUTS[pair_name], strict=True))


@pytest.mark.parametrize("name", sorted(KERNEL_INPUTS))
def test_pairs_compute_the_same_gradients(name):
  old, new = getattr(kernel_bench, name)(dit_bench.QUICK_SIZE, np.random.default_rng(0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), old(),
               _old_layout(name, new()))


def test_fused_qkv_pair_computes_the_same_function():
  """One product on the stacked kernels gives the three products' Q, K and V."""
  old, new = kernel_bench.fused_qkv_pair(dit_bench.QUICK_SIZE, np.random.default_rng(0))
  a, b = float(old()), float(new())
  assert abs(a) > 1e-3
  np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("name", ["mlp_pair", "projection_pair", "bias_pair"])
def test_pairs_agree_in_bfloat16(name):
  old, new = getattr(kernel_bench, name)(dit_bench.QUICK_SIZE, np.random.default_rng(0),
                                         jnp.bfloat16)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=3e-2, atol=1e-3), old(),
      _old_layout(name, new()))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kernel_layouts_compute_the_same_function(dtype):
  """The benchmark's old code on the kernels moved to its layout computes what ours does
  (which also checks ``layers.move_projection_kernels``)."""
  size = dit_bench.QUICK_SIZE
  call, (params, *args) = dit_bench.denoise_inputs(size, dtype, 0)
  with kernel_bench._kernels_in_out():
    old_call, (old_params, *_) = dit_bench.denoise_inputs(size, dtype, 0)
    moved = kernel_bench.layers.move_projection_kernels(params, "out_in", "in_out")
    assert jax.tree.map(jnp.shape, moved) == jax.tree.map(jnp.shape, old_params)
    old = jax.jit(old_call)(moved, *args)
  assert kernel_bench.layers.project is not kernel_bench._project_in_out
  # Results in the compute dtype, as the old code's: in bf16 the same roundings.
  with kernel_bench._compute_dtype_results():
    new = jax.jit(call)(params, *args)
  assert kernel_bench.layers.project is kernel_bench._PROJECT
  assert float(jnp.abs(new).max()) > 0
  np.testing.assert_allclose(np.asarray(old), np.asarray(new), rtol=1e-4, atol=1e-5)


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
  old, new = kernel_bench.step_pair(dit_bench.QUICK_SIZE, dit_config.get_config("small"),
                                    "bfloat16", kernel_bench._plain_bias_sum)
  assert kernel_bench.layers.add_bias is real
  for _ in range(2):
    a, b = float(old()), float(new())
  np.testing.assert_allclose(a, b, rtol=2e-2)


def test_per_token_pair_agrees_and_restores_the_projection():
  old, new = kernel_bench.per_token_pair(dit_bench.QUICK_SIZE, np.random.default_rng(0),
                                         jnp.bfloat16)
  for a, b in zip(old(), new(), strict=True):  # bf16 products against float32 ones
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.linalg.norm(a - b) <= 0.02 * np.linalg.norm(b)
  real = kernel_bench.layers.PerTokenProjection
  with kernel_bench._per_token_in_dtype():
    assert kernel_bench.layers.PerTokenProjection is not real
  assert kernel_bench.layers.PerTokenProjection is real


def test_conditioning_context_restores_the_float32_path():
  """Within the baseline's context the conditioning path computes in the compute dtype and
  sampling casts its kernels; after it, float32 again."""
  dit = kernel_bench.dit_lib
  path = (jax.tree_util.DictKey("adaLN_single"), jax.tree_util.DictKey("kernel"))
  with kernel_bench._conditioning_in_dtype():
    assert dit.conditioning_dtype(jnp.bfloat16) == jnp.bfloat16
    assert not dit.on_conditioning_path(path)
  assert dit.conditioning_dtype(jnp.bfloat16) == jnp.float32
  assert dit.on_conditioning_path(path)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,step_row", [
    ("float32", []), ("bfloat16", ["train step, biases", "train step, Q, K, V and GELU input",
                                   "denoising call, batch 1, Q, K, V and GELU input",
                                   "train step, conditioning path",
                                   "denoising call, batch 1, conditioning path"])])
def test_quick_run_reports_every_pair(dtype, step_row):
  result = kernel_bench.run(dit_config.get_config("small"), quick=True, dtype=dtype)
  low = ["per-token projection", "train step, per-token products",
         "denoising call, batch 1, per-token products"] if step_row else []
  assert [r["what"] for r in result["rows"]] == [
      "MLP", "attention projections", "attention core, layout", "attention core",
      "self-attention Q, K, V, batch 1 (forward)", "MLP biases", *step_row,
      "train step, attention layout", "denoising call, batch 1, attention layout",
      "train step, kernels", "denoising call, batch 1, kernels",
      "train step, token projections", "denoising call, batch 1, token projections", *low,
      "optimiser update"]
  assert all(r["old_median"] > 0 and r["new_median"] > 0 for r in result["rows"])
  assert "baseline / candidate" in kernel_bench.format_report(result)
