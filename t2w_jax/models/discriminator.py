"""Weight-space discriminator: real vs generated weight tokens, optionally text-aware.

A small pre-LN transformer over the weight tokens (same per-token input projection and
layer/block-id embeddings as the DiT), mean-pooled to one feature vector h. The logit is
``w . h + b``, plus, when ``text_conditioned``, the projection-discriminator term
``<h, W_text fused>`` (Miyato & Koyama, 2018), which asks "do these weights fit this text"
rather than only "do these look like weights".
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2w_jax.models import layers

Array = jax.Array


class _Block(nn.Module):
  """Pre-LN transformer block: x += Attn(LN(x)); x += MLP(LN(x))."""
  num_heads: int
  mlp_ratio: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    h = layers.layer_norm(affine=True, dtype=self.dtype, name="norm1")(x)
    x = layers.constrain_tokens(
        x + layers.Attention(self.num_heads, dtype=self.dtype, name="attn")(h))
    h = layers.layer_norm(affine=True, dtype=self.dtype, name="norm2")(x)
    h = layers.Mlp(int(self.mlp_ratio * width), dtype=self.dtype, name="mlp")(h)
    return layers.constrain_tokens(x + h)


class WeightDiscriminator(nn.Module):
  """Transformer discriminator on weight tokens; returns one logit per example.

  Attributes:
    width: model width.
    depth: number of transformer blocks (0 gives an embedding + pooling + linear model).
    num_heads: attention heads.
    mlp_ratio: MLP hidden size / width.
    block_size: P, the token size.
    num_layers: size of the layer-id embedding table.
    max_blocks: size of the block-id embedding table.
    text_dim: d, the text-encoder dimension (used when text_conditioned).
    text_conditioned: add the projection term <h, W fused>.
    dtype: compute dtype (params float32; logits float32).
  """
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  block_size: int
  num_layers: int
  max_blocks: int
  text_dim: int = 384
  text_conditioned: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array, layer_ids: Array, block_ids: Array,
               fused: Optional[Array] = None) -> Array:
    """Scores weight tokens.

    Args:
      tokens: (B, L, P) normalised weight tokens (real, or predicted x0).
      layer_ids: (L,) int layer id per token.
      block_ids: (L,) int block index per token.
      fused: (B, d) fused text embedding; required when text_conditioned, else ignored.

    Returns:
      (B,) float32 logits (higher = more "real").

    Raises:
      ValueError: on inconsistent shapes or a missing ``fused``.
    """
    if jnp.ndim(tokens) != 3 or tokens.shape[-1] != self.block_size:
      raise ValueError(f"tokens must have shape (B, L, {self.block_size}), "
                       f"got {jnp.shape(tokens)}")
    batch, num_tokens, _ = tokens.shape
    layers.check_token_ids("layer_ids", layer_ids, num_tokens, self.num_layers)
    layers.check_token_ids("block_ids", block_ids, num_tokens, self.max_blocks)

    h = layers.TokenEmbedding(self.width, self.num_layers, self.max_blocks,
                              dtype=self.dtype, name="embed")(tokens, layer_ids, block_ids)
    h = layers.constrain_tokens(h)
    for i in range(self.depth):
      h = _Block(self.num_heads, self.mlp_ratio, dtype=self.dtype, name=f"block_{i}")(h)
    h = layers.layer_norm(affine=True, dtype=self.dtype, name="final_norm")(h)
    pooled = jnp.mean(h.astype(jnp.float32), axis=1)
    logit = layers.dense(1, ("embed", None), dtype=jnp.float32, name="head")(pooled)[:, 0]
    if self.text_conditioned:
      if fused is None:
        raise ValueError("text_conditioned=True needs fused (B, text_dim)")
      fused = jnp.asarray(fused)
      if fused.shape != (batch, self.text_dim):
        raise ValueError(f"fused must have shape ({batch}, {self.text_dim}), "
                         f"got {tuple(fused.shape)}")
      proj = layers.dense(self.width, ("text", "embed"), dtype=jnp.float32,
                          use_bias=False, name="text_proj")(fused.astype(jnp.float32))
      logit = logit + jnp.sum(proj * pooled, axis=-1)
    return logit
