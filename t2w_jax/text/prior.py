"""The text prior: how much each class of a task counts in the task's text condition.

Each class embedding e_i is scored by its cosine similarity to the mean of the task's
class embeddings; a softmax over the classes (with a temperature) gives the prior
weights, as the PyTorch Text2Weight does in its data preparation. The prior-weighted,
renormalised sum is the fused task embedding that drives adaLN; the log-prior is the
additive bias of the cross-attention onto per-class text tokens.

Class lists are padded to a fixed k so that batches have one shape; a boolean mask marks
the real classes. Masked classes never touch the mean, get weight exactly 0 and a log
weight of `MASKED_LOG_PRIOR`, so padding changes nothing. Everything here is pure jnp,
works under jit and vmap, and accepts leading batch dimensions: class_emb (..., k, d),
mask (..., k).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Log weight of a masked class. Finite, so that an all-masked row gives no NaN when used
# as an attention bias, and far below any real log weight (>= -2/temperature - log k).
MASKED_LOG_PRIOR = -1e9
# The prior's softmax temperature where nothing sets one (a generator's config does).
DEFAULT_TEMPERATURE = 1.0

_EPS = 1e-12


def _check_temperature(temperature) -> None:
  # Only concrete values can be checked; a traced temperature is the caller's business.
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise ValueError(f"temperature must be positive, got {temperature}")


def _mask_or_ones(class_emb: jax.Array, mask: jax.Array | None) -> jax.Array:
  if class_emb.ndim < 2:
    raise ValueError(f"class_emb must have shape (..., k, d), got {class_emb.shape}")
  if mask is None:
    return jnp.ones(class_emb.shape[:-1], bool)
  mask = jnp.asarray(mask)
  if mask.shape != class_emb.shape[:-1]:
    raise ValueError(f"mask shape {mask.shape} does not match class_emb shape "
                     f"{class_emb.shape} (expected {class_emb.shape[:-1]})")
  return mask.astype(bool)


def _zero_masked(class_emb: jax.Array, mask: jax.Array) -> jax.Array:
  # `where`, not a product: padding rows may hold anything, NaN included.
  return jnp.where(mask[..., None], class_emb, 0.0)


def prior_logits(class_emb: jax.Array, mask: jax.Array | None = None,
                 temperature: float = DEFAULT_TEMPERATURE) -> jax.Array:
  """Scores each class: cos(e_i, mean of the valid e) / temperature.

  Args:
    class_emb: (..., k, d) class embeddings.
    mask: (..., k) booleans, True for real classes; None means all real.
    temperature: softmax temperature (> 0).

  Returns:
    (..., k) float32 scores; masked entries are `MASKED_LOG_PRIOR`.
  """
  _check_temperature(temperature)
  class_emb = jnp.asarray(class_emb, jnp.float32)
  mask = _mask_or_ones(class_emb, mask)
  class_emb = _zero_masked(class_emb, mask)
  count = jnp.maximum(mask.sum(axis=-1, keepdims=True), 1).astype(class_emb.dtype)
  mean = class_emb.sum(axis=-2) / count  # (..., d)
  dots = jnp.einsum("...kd,...d->...k", class_emb, mean)
  norms = jnp.linalg.norm(class_emb, axis=-1) * jnp.linalg.norm(mean, axis=-1)[..., None]
  cos = dots / jnp.maximum(norms, _EPS)
  return jnp.where(mask, cos / temperature, MASKED_LOG_PRIOR)


def prior_weights(class_emb: jax.Array, mask: jax.Array | None = None,
                  temperature: float = DEFAULT_TEMPERATURE) -> jax.Array:
  """Prior weight of each class: softmax of `prior_logits` over the valid classes.

  Args:
    class_emb: (..., k, d) class embeddings.
    mask: (..., k) booleans, True for real classes; None means all real.
    temperature: softmax temperature (> 0); lower is sharper.

  Returns:
    (..., k) float32 weights, summing to 1 over valid classes, exactly 0 where masked
    (all 0 if no class is valid).
  """
  class_emb = jnp.asarray(class_emb, jnp.float32)
  mask = _mask_or_ones(class_emb, mask)
  w = jax.nn.softmax(prior_logits(class_emb, mask, temperature), axis=-1)
  return jnp.where(mask, w, 0.0)


def log_prior(class_emb: jax.Array, mask: jax.Array | None = None,
              temperature: float = DEFAULT_TEMPERATURE) -> jax.Array:
  """Log of `prior_weights`, computed stably, for use as an attention bias.

  Args:
    class_emb: (..., k, d) class embeddings.
    mask: (..., k) booleans, True for real classes; None means all real.
    temperature: softmax temperature (> 0).

  Returns:
    (..., k) float32 log weights; masked entries are `MASKED_LOG_PRIOR`.
  """
  class_emb = jnp.asarray(class_emb, jnp.float32)
  mask = _mask_or_ones(class_emb, mask)
  logp = jax.nn.log_softmax(prior_logits(class_emb, mask, temperature), axis=-1)
  return jnp.where(mask, logp, MASKED_LOG_PRIOR)


def fuse(class_emb: jax.Array, mask: jax.Array | None = None,
         temperature: float = DEFAULT_TEMPERATURE) -> jax.Array:
  """Fused task embedding: the prior-weighted sum of class embeddings, L2-normalised.

  Args:
    class_emb: (..., k, d) class embeddings.
    mask: (..., k) booleans, True for real classes; None means all real.
    temperature: softmax temperature (> 0).

  Returns:
    (..., d) float32 unit vectors (zero if no class is valid).
  """
  class_emb = jnp.asarray(class_emb, jnp.float32)
  mask = _mask_or_ones(class_emb, mask)
  w = prior_weights(class_emb, mask, temperature)
  class_emb = _zero_masked(class_emb, mask)
  fused = jnp.einsum("...k,...kd->...d", w, class_emb)
  return fused / jnp.maximum(jnp.linalg.norm(fused, axis=-1, keepdims=True), _EPS)
