"""Diffusion training losses for the x0-prediction parameterisation.

The denoiser predicts clean weight tokens x0 of shape (B, L, P): B nets, L tokens (weight
blocks) per net, P values per block. The last block of each layer is zero-padded; those
pad positions carry no information and are excluded through a boolean mask.
"""
from typing import Optional

import jax
import jax.numpy as jnp

from t2w_jax.diffusion.schedules import Schedule


def x0_loss(pred_x0: jax.Array, x0: jax.Array, mask: jax.Array,
            layer_weights: Optional[jax.Array] = None) -> jax.Array:
  """Weighted mean squared error over the real (unmasked) token values.

  loss = Σ w_l m_blp (pred - x0)²_blp / Σ w_l m_blp, where m is the mask and w_l the weight
  of token l. Because the weights appear in the denominator too, any uniform weighting
  (all w_l equal) gives exactly the plain masked MSE, and only the relative weights of the
  tokens matter. When nothing is unmasked the loss is 0 rather than NaN.

  Args:
    pred_x0: (B, L, P) predicted clean tokens.
    x0: (B, L, P) target clean tokens.
    mask: (L, P) or (B, L, P), True (or 1) where a value is real, False at pad positions.
    layer_weights: optional (L,) non-negative per-token weights, e.g. the weight of the
      layer each token belongs to.

  Returns:
    Scalar float32 loss.

  Raises:
    ValueError: on mismatched shapes.
  """
  pred_x0 = jnp.asarray(pred_x0)
  x0 = jnp.asarray(x0)
  mask = jnp.asarray(mask)
  if pred_x0.shape != x0.shape or x0.ndim != 3:
    raise ValueError(f"pred_x0 and x0 must both have shape (B, L, P); got {pred_x0.shape} "
                     f"and {x0.shape}")
  _, L, P = x0.shape
  if mask.shape not in ((L, P), x0.shape):
    raise ValueError(f"mask must have shape (L, P)={(L, P)} or (B, L, P)={x0.shape}, "
                     f"got {mask.shape}")
  m = jnp.broadcast_to(mask.astype(jnp.float32), x0.shape)
  if layer_weights is not None:
    layer_weights = jnp.asarray(layer_weights, jnp.float32)
    if layer_weights.shape != (L,):
      raise ValueError(f"layer_weights must have shape (L,)={(L,)}, got {layer_weights.shape}")
    m = m * layer_weights[None, :, None]
  se = jnp.square(pred_x0.astype(jnp.float32) - x0.astype(jnp.float32))
  num = jnp.sum(m * se)
  den = jnp.sum(m)
  # jnp.where alone would still differentiate through num/0; guard the denominator too.
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def snr(schedule: Schedule, t) -> jax.Array:
  """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t) at integer timesteps t (any shape).

  Handy for weighting: the x0 MSE equals the ε MSE divided by snr(t), and min-SNR-γ
  weighting (Hang et al., 2023) scales a per-example x0 MSE by min(snr(t), γ).

  Args:
    schedule: the noise schedule.
    t: integer timesteps.

  Returns:
    float32 array of the shape of t.
  """
  ac = jnp.take(schedule.alphas_cumprod, jnp.asarray(t))
  return ac / (1.0 - ac)
