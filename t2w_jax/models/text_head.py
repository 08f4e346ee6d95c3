"""The DiT's deterministic text head: class embeddings -> a net, in normalised token space.

With ``DiT.text_head`` > 0 the DiT predicts x0 = TextHead(text) + transformer(x_t, t, text):
the head is a plain text-to-weights map (the hypernetwork's shape: the mean of the task's
unit class embeddings through an MLP), trained jointly with the transformer, and the
diffusion part only models what the corpus adds around it. A task's nets then do not have
to pass through the transformer's narrow width to depend on the text.

Invariant: the output layer is zero at init, so a DiT with a text head still outputs
exactly zero at init (the corpus's mean net); an example whose text is dropped
(classifier-free guidance) gets zero from the head, so the null condition is unchanged.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2w_jax.models import layers


def mean_unit_embedding(class_emb: jax.Array, class_mask: jax.Array) -> jax.Array:
  """(B, K, d) class embeddings and (B, K) mask -> (B, d) mean of the unit embeddings.

  A task is a set of classes, so the result does not depend on their order or on padding.
  """
  m = class_mask.astype(jnp.float32)[..., None]
  e = class_emb.astype(jnp.float32)
  nonzero = jnp.any(e != 0, axis=-1, keepdims=True)
  norm = jnp.linalg.norm(jnp.where(nonzero, e, 1.0), axis=-1, keepdims=True)
  unit = jnp.where(nonzero, e / norm, 0.0)
  return jnp.sum(unit * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)


class TextHead(nn.Module):
  """Mean unit class embedding -> MLP (GELU) -> (B, L, P) tokens; zero output at init.

  Attributes:
    hidden: hidden width.
    depth: hidden layers.
    num_tokens: L.
    block_size: P.
    dtype: compute dtype of the products (params float32, output float32).
  """
  hidden: int
  depth: int
  num_tokens: int
  block_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, class_emb: jax.Array, class_mask: jax.Array, drop: jax.Array
               ) -> jax.Array:
    """Args: class_emb (B, K, d), class_mask (B, K) bool, drop (B,) bool.

    Returns:
      (B, L, P) float32; zero for dropped examples.
    """
    x = mean_unit_embedding(class_emb, class_mask).astype(self.dtype)
    for i in range(self.depth):
      # Replicated: the head is small next to the batch it serves.
      x = nn.gelu(layers.dense(self.hidden, ("text" if i == 0 else None, None),
                               dtype=self.dtype, name=f"hidden_{i}")(x))
    out = layers.dense(self.num_tokens * self.block_size, (None, None), dtype=self.dtype,
                       zero_init=True, name="out")(x)
    out = out.astype(jnp.float32).reshape(x.shape[0], self.num_tokens, self.block_size)
    return jnp.where(drop[:, None, None], 0.0, out)
