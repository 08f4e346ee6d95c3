"""Tests for the SubtaskCNN hidden-unit permutation symmetries."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2w_jax.weights import ParamLayout
from t2w_jax.weights import cnn_chain
from t2w_jax.weights import permute_flat
from t2w_jax.weights import permute_params
from t2w_jax.weights import random_permutation
from t2w_jax.weights import sample_perms
from t2w_jax.zoo.cnn import SubtaskCNN
from t2w_jax.zoo.cnn import init_params

IMAGE = 8
EMBED = 24


def _model(conv_impl="lax", widths=(8, 16, 32), strides=(1, 2, 2)):
  return SubtaskCNN(widths=widths, strides=strides, embed_dim=EMBED, conv_impl=conv_impl)


def _params(model, seed=0, batch=()):
  """Random params of the model's shapes, drawn in numpy (no XLA compile of an init).

  Kernels are fan-in scaled and biases are clearly non-zero, so every channel differs and
  a wrong permutation of a bias would show in the logits.
  """
  rng = np.random.default_rng(seed)

  def draw(s):
    scale = 0.3 if len(s.shape) == 1 else 1.0 / np.sqrt(np.prod(s.shape[:-1]))
    return jnp.asarray(rng.normal(size=batch + s.shape) * scale, jnp.float32)

  return jax.tree_util.tree_map(draw, _shapes(model))


def _shapes(model):
  """Parameter shapes only (no compute): enough for cnn_chain."""
  return jax.eval_shape(lambda: init_params(model, jax.random.key(0), IMAGE))


def _apply(model):
  """Jitted logits function: one compile serves original and permuted params alike."""
  return jax.jit(lambda p, x, e: model.apply({"params": p}, x, e))


def _inputs(seed=0, batch=4, classes=5):
  k1, k2 = jax.random.split(jax.random.key(seed))
  images = jax.random.uniform(k1, (batch, IMAGE, IMAGE, 3))
  class_emb = jax.random.normal(k2, (classes, EMBED))
  return images, class_emb


def _max_param_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y)))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize("conv_impl", ["lax", "im2col"])
def test_random_permutation_preserves_logits(conv_impl):
  model = _model(conv_impl)
  apply = _apply(model)
  params = _params(model)
  images, class_emb = _inputs()
  logits = apply(params, images, class_emb)
  permuted = jax.jit(random_permutation)(jax.random.key(7), params)
  chex.assert_trees_all_equal_shapes(permuted, params)
  new_logits = apply(permuted, images, class_emb)
  chex.assert_shape(new_logits, (4, 5))
  np.testing.assert_allclose(np.asarray(new_logits), np.asarray(logits), atol=1e-5)
  # The weights really moved: every conv kernel and the head kernel changed.
  for name in ("conv_0", "conv_1", "conv_2", "head"):
    assert float(jnp.max(jnp.abs(permuted[name]["kernel"] - params[name]["kernel"]))) > 0.1
  # The head bias sits after the pool and is never permuted.
  np.testing.assert_array_equal(np.asarray(permuted["head"]["bias"]),
                                np.asarray(params["head"]["bias"]))


def test_broken_permutation_changes_logits():
  """Permuting a layer's outputs without its consumer's inputs must be detectable."""
  model = _model()
  apply = _apply(model)
  params = _params(model)
  images, class_emb = _inputs()
  logits = apply(params, images, class_emb)
  p = jax.random.permutation(jax.random.key(3), 8)
  broken = {n: dict(v) for n, v in params.items()}
  broken["conv_0"]["kernel"] = params["conv_0"]["kernel"][..., p]
  broken["conv_0"]["bias"] = params["conv_0"]["bias"][p]
  bad_logits = apply(broken, images, class_emb)
  assert float(jnp.max(jnp.abs(bad_logits - logits))) > 1e-2


def test_explicit_perms():
  model = _model(widths=(4, 6), strides=(1, 2))
  apply = _apply(model)
  params = _params(model, seed=1)
  ident = [jnp.arange(4), jnp.arange(6)]
  same = permute_params(params, ident)
  assert _max_param_diff(same, params) == 0.0
  p0, p1 = jnp.array([2, 0, 3, 1]), jnp.array([5, 4, 3, 2, 1, 0])
  out = permute_params(params, [p0, p1])
  np.testing.assert_array_equal(np.asarray(out["conv_0"]["kernel"]),
                                np.asarray(params["conv_0"]["kernel"])[..., np.asarray(p0)])
  np.testing.assert_array_equal(np.asarray(out["conv_0"]["bias"]),
                                np.asarray(params["conv_0"]["bias"])[np.asarray(p0)])
  np.testing.assert_array_equal(
      np.asarray(out["conv_1"]["kernel"]),
      np.asarray(params["conv_1"]["kernel"])[:, :, np.asarray(p0)][..., np.asarray(p1)])
  np.testing.assert_array_equal(np.asarray(out["head"]["kernel"]),
                                np.asarray(params["head"]["kernel"])[np.asarray(p1)])
  images, class_emb = _inputs(seed=2)
  np.testing.assert_allclose(np.asarray(apply(out, images, class_emb)),
                             np.asarray(apply(params, images, class_emb)),
                             atol=1e-5)
  with pytest.raises(ValueError, match="2 permutations"):
    permute_params(params, [p0])
  with pytest.raises(ValueError, match=r"perms\[1\]"):
    permute_params(params, [p0, jnp.arange(5)])


def test_vmap_over_params_and_rngs():
  model = _model("im2col", widths=(4, 6), strides=(1, 2))
  batch = _params(model, seed=5, batch=(3,))
  rngs = jax.random.split(jax.random.key(1), 3)
  permuted = jax.jit(jax.vmap(random_permutation))(rngs, batch)
  chex.assert_trees_all_equal_shapes(permuted, batch)
  images, class_emb = _inputs(seed=3)
  apply = jax.jit(jax.vmap(lambda p: model.apply({"params": p}, images, class_emb)))
  np.testing.assert_allclose(np.asarray(apply(permuted)), np.asarray(apply(batch)), atol=1e-5)
  assert _max_param_diff(permuted, batch) > 0.01
  # Different rngs give different permutations.
  layout = ParamLayout.from_params(jax.tree_util.tree_map(lambda x: x[0], batch))
  perms = jax.jit(jax.vmap(lambda k: sample_perms(k, layout)))(rngs)
  chex.assert_shape(perms, [(3, 4), (3, 6)])
  assert len({tuple(np.asarray(p)) for p in perms[1]}) > 1


def test_permute_flat_jit_and_batch():
  model = _model()
  apply = _apply(model)
  params = _params(model, seed=4)
  layout = ParamLayout.from_params(params)
  flat = layout.flatten(params)
  images, class_emb = _inputs(seed=4)
  logits = apply(params, images, class_emb)

  one = jax.jit(permute_flat, static_argnums=2)(jax.random.key(5), flat, layout)
  chex.assert_shape(one, (layout.total,))
  assert float(jnp.max(jnp.abs(one - flat))) > 0.1
  np.testing.assert_allclose(
      np.asarray(apply(layout.unflatten(one), images, class_emb)),
      np.asarray(logits), atol=1e-5)
  # A permutation only moves values around.
  np.testing.assert_array_equal(np.sort(np.asarray(one)), np.sort(np.asarray(flat)))

  rows = jnp.stack([flat, flat, flat])
  many = jax.jit(lambda k, r: permute_flat(k, r, layout))(jax.random.key(6), rows)
  chex.assert_shape(many, rows.shape)
  assert float(jnp.max(jnp.abs(many[0] - many[1]))) > 0.1  # each row its own permutation
  for r in many:
    np.testing.assert_allclose(
        np.asarray(apply(layout.unflatten(r), images, class_emb)),
        np.asarray(logits), atol=1e-5)
  with pytest.raises(ValueError, match=str(layout.total)):
    permute_flat(jax.random.key(0), flat[:-1], layout)


def test_cnn_chain_derivation_and_errors():
  assert cnn_chain(_shapes(_model())) == (8, 16, 32)
  assert cnn_chain(_shapes(_model(widths=(3, 5, 7, 2), strides=(1, 1, 2, 1)))) == (3, 5, 7, 2)
  assert cnn_chain(ParamLayout.from_params(_shapes(_model()))) == (8, 16, 32)
  params = _shapes(_model(widths=(4, 6), strides=(1, 2)))
  with pytest.raises(ValueError, match="no head"):
    cnn_chain({k: v for k, v in params.items() if k != "head"})
  with pytest.raises(ValueError, match="unexpected modules"):
    cnn_chain({**params, "dense": params["head"]})
  with pytest.raises(ValueError, match="not 0..1"):
    cnn_chain({"conv_0": params["conv_0"], "conv_2": params["conv_1"], "head": params["head"]})
  broken = {n: dict(v) for n, v in params.items()}
  broken["conv_1"]["kernel"] = jax.ShapeDtypeStruct((3, 3, 5, 6), jnp.float32)
  with pytest.raises(ValueError, match="input channels"):
    cnn_chain(broken)
  broken = {n: dict(v) for n, v in params.items()}
  broken["head"]["kernel"] = jax.ShapeDtypeStruct((4, EMBED), jnp.float32)
  with pytest.raises(ValueError, match="pooled channels"):
    cnn_chain(broken)
  batched = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct((2,) + x.shape, x.dtype),
                                   params)
  with pytest.raises(ValueError, match="SubtaskCNN"):
    random_permutation(jax.random.key(0), batched)
  with pytest.raises(ValueError, match="SubtaskCNN"):
    cnn_chain({"params": params})
