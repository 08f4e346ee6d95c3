"""Subtask CNN: the text-space head's invariances and the two conv implementations."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2w_jax.weights.layout import ParamLayout
from t2w_jax.zoo.cnn import SubtaskCNN, init_params, unit_normalize


@pytest.fixture(scope="module")
def net():
  model = SubtaskCNN(widths=(4, 8), strides=(1, 2), embed_dim=16)
  params = init_params(model, jax.random.PRNGKey(0), 12)
  images = jax.random.uniform(jax.random.PRNGKey(1), (5, 12, 12, 3))
  emb = jax.random.normal(jax.random.PRNGKey(2), (6, 16))
  return model, params, images, emb


def test_shapes_and_param_count():
  model = SubtaskCNN()
  params = init_params(model, jax.random.PRNGKey(0), 16)
  layout = ParamLayout.from_params(params)
  # Counted by hand: 3x3 convs 3->8, 8->16, 16->32 (kernel + bias) and a 32->384 head.
  by_hand = (9 * 3 * 8 + 8) + (9 * 8 * 16 + 16) + (9 * 16 * 32 + 32) + (32 * 384 + 384)
  assert by_hand == 18_704
  assert layout.total == by_hand, layout.total
  logits = model.apply({"params": params}, jnp.zeros((3, 16, 16, 3), jnp.uint8),
                       jnp.ones((7, 384)))
  chex.assert_shape(logits, (3, 7))


def test_permuting_classes_permutes_logits(net):
  model, params, images, emb = net
  perm = np.array([3, 0, 5, 1, 4, 2])
  a = model.apply({"params": params}, images, emb)
  b = model.apply({"params": params}, images, emb[perm])
  np.testing.assert_allclose(b, a[:, perm], atol=1e-6)
  assert not np.allclose(a, a[:, perm])  # the logits do differ per class


def test_logits_are_scaled_cosines(net):
  model, params, images, emb = net
  logits = model.apply({"params": params}, images, emb)
  assert np.all(np.abs(logits) <= model.logit_scale + 1e-4)
  # Rescaling a class embedding does not change its logit: the head uses cosines.
  scaled = model.apply({"params": params}, images, emb * jnp.arange(1, 7)[:, None])
  np.testing.assert_allclose(scaled, logits, atol=1e-5)


@pytest.mark.parametrize("size", [12, 13])
def test_im2col_equals_lax_conv(net, size):
  model, params, _, emb = net
  images = jax.random.uniform(jax.random.PRNGKey(3), (4, size, size, 3))
  params = init_params(model, jax.random.PRNGKey(4), size)
  a = model.apply({"params": params}, images, emb)
  b = model.clone(conv_impl="im2col").apply({"params": params}, images, emb)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_errors(net):
  model, params, images, _ = net
  with pytest.raises(ValueError, match="non-empty class list"):
    model.apply({"params": params}, images, jnp.zeros((0, 16)))
  with pytest.raises(ValueError, match="dim 9"):
    model.apply({"params": params}, images, jnp.zeros((3, 9)))
  with pytest.raises(ValueError, match="conv_impl"):
    init_params(model.clone(conv_impl="fft"), jax.random.PRNGKey(0), 12)


def test_layout_round_trip_exact(net):
  _, params, _, _ = net
  layout = ParamLayout.from_params(params)
  back = layout.unflatten(layout.flatten(params))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params, back)
  assert ParamLayout.from_json(layout.to_json()) == layout
  with pytest.raises(ValueError, match="layout needs"):
    layout.unflatten(jnp.zeros(layout.total + 1))


def test_a_zero_embedding_has_finite_gradients(net):
  # A net whose head outputs 0 for an image (dead features, as a random init can have):
  # the embedding is 0 and the loss finite, and so must its gradient be (no NaN step).
  model, params, images, emb = net
  params = jax.tree.map(lambda x: x, params)
  params["head"] = jax.tree.map(jnp.zeros_like, params["head"])
  embedded = model.apply({"params": params}, images, method="embed")
  np.testing.assert_array_equal(np.asarray(embedded), 0.0)

  def loss(p):
    logits = model.apply({"params": p}, images, emb)
    return -jax.nn.log_softmax(logits)[:, 0].mean()

  grads = jax.grad(loss)(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  # Away from 0 the normalisation is the plain one, bit for bit.
  x = jax.random.normal(jax.random.PRNGKey(3), (7, 16))
  np.testing.assert_array_equal(np.asarray(unit_normalize(x)),
                                np.asarray(x / (jnp.linalg.norm(x, axis=-1, keepdims=True)
                                                + 1e-8)))
