"""The subtask CNN: a small conv net with a text-space head.

A subtask net maps an image to a vector in the text encoder's space; its logits over a
task's classes are ``logit_scale * cos(f(x), e(class))``. The weight shape is therefore the
same for any number and order of classes, and any class name can be asked for (docs/design.md,
"Subtask family by config"). Permuting the class list permutes the logits, nothing else.

The conv layers can run as XLA convolutions (``conv_impl="lax"``) or as im2col (shifted
slices + one matmul, ``conv_impl="im2col"``): the latter survives ``vmap`` over many nets as
a batched matmul, where a vmapped ``lax.conv`` becomes a slow grouped convolution on XLA:CPU.
Both give the same function of the same parameters.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def _im2col_conv(x, kernel, stride):
  """SAME-padded 2-D convolution as shifted slices and one matmul.

  Args:
    x: (B, H, W, Cin) activations.
    kernel: (kh, kw, Cin, Cout), the layout of ``nn.Conv``.
    stride: spatial stride (same in both axes).

  Returns:
    (B, ceil(H/stride), ceil(W/stride), Cout), equal to ``lax.conv_general_dilated`` with
    SAME padding up to float rounding.
  """
  kh, kw, cin, cout = kernel.shape
  _, h, w, _ = x.shape
  out_h, out_w = -(-h // stride), -(-w // stride)
  # SAME padding as XLA computes it: total pad so that the output has ceil(n/stride) rows.
  pad_h = max((out_h - 1) * stride + kh - h, 0)
  pad_w = max((out_w - 1) * stride + kw - w, 0)
  xp = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                   (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  cols = [
      xp[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride, :]
      for i in range(kh) for j in range(kw)
  ]
  patches = jnp.concatenate(cols, axis=-1)  # (B, out_h, out_w, kh*kw*Cin), (i, j, c) order
  return patches @ kernel.reshape(kh * kw * cin, cout)


class _Conv(nn.Module):
  """3x3 SAME conv with bias whose parameters match ``nn.Conv`` exactly."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  impl: str = "lax"

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    if self.impl == "lax":
      y = jax.lax.conv_general_dilated(
          x, kernel, (self.stride, self.stride), "SAME",
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    elif self.impl == "im2col":
      y = _im2col_conv(x, kernel, self.stride)
    else:
      raise ValueError(f"unknown conv_impl {self.impl!r}; use 'lax' or 'im2col'")
    return y + bias


class SubtaskCNN(nn.Module):
  """Small CNN whose head lives in the text space.

  Attributes:
    widths: output channels of the conv layers.
    strides: stride of each conv layer.
    embed_dim: text-embedding dimension (384 for MiniLM, 512 for CLIP ViT-B/32).
    logit_scale: multiplies the cosine similarities to give logits.
    conv_impl: "lax" or "im2col" (same function; pick per backend for speed).

  Parameters are ``conv_{i}/{kernel,bias}`` and ``head/{kernel,bias}``; a hidden-unit
  permutation of conv i's output channels (and conv i+1's / the head's input rows) leaves
  the function unchanged (see ``t2w_jax.weights.permute``).
  """
  widths: Sequence[int] = (8, 16, 32)
  strides: Sequence[int] = (1, 2, 2)
  embed_dim: int = 384
  logit_scale: float = 10.0
  conv_impl: str = "lax"

  def setup(self):
    if len(self.widths) != len(self.strides):
      raise ValueError(f"widths {self.widths} and strides {self.strides} differ in length")
    self.convs = [_Conv(w, stride=s, impl=self.conv_impl, name=f"conv_{i}")
                  for i, (w, s) in enumerate(zip(self.widths, self.strides))]
    self.head = nn.Dense(self.embed_dim, name="head")

  def features(self, images):
    """Images (B, H, W, 3), uint8 or float in [0, 1] -> pooled conv features (B, widths[-1]).

    What the head sees; the adapter family trains this part once as its frozen trunk.
    """
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
      x = x / 255.0
    x = (x - 0.5) * 4.0  # roughly zero-mean, unit-variance pixels
    for conv in self.convs:
      x = nn.relu(conv(x))
    return jnp.mean(x, axis=(1, 2))

  def embed(self, images):
    """Images (B, H, W, 3), uint8 or float in [0, 1] -> unit vectors (B, embed_dim)."""
    return unit_normalize(self.head(self.features(images)))

  def __call__(self, images, class_emb):
    """Logits (B, K) of images against K class embeddings (K, embed_dim)."""
    check_class_emb(class_emb, self.embed_dim)
    return cosine_logits(self.embed(images), class_emb, self.logit_scale)


def check_class_emb(class_emb, embed_dim: int) -> None:
  """Raises ValueError unless ``class_emb`` is a non-empty (K, embed_dim) class list.

  Shared by every subtask family, so a wrong class list fails the same way for all.
  """
  if class_emb.ndim != 2 or class_emb.shape[0] == 0:
    raise ValueError(f"need a non-empty class list: class embeddings of shape (K>0, "
                     f"{embed_dim}), got {class_emb.shape}")
  if class_emb.shape[1] != embed_dim:
    raise ValueError(f"class embeddings have dim {class_emb.shape[1]}, the net's text space "
                     f"has {embed_dim}")


def cosine_logits(embeddings, class_emb, scale: float):
  """The text-space head: logits ``scale * cos(f(x), e(class))``, (B, K).

  Every subtask family's logits, and the corpus trainer's accuracy from cached image
  embeddings, are this one function.

  Args:
    embeddings: (B, embed_dim) unit vectors, a net's ``embed`` of B inputs.
    class_emb: (K, embed_dim) class embeddings (normalised here).
    scale: the net's ``logit_scale``.
  """
  return scale * embeddings @ unit_normalize(class_emb).T


def unit_normalize(x, eps=1e-8):
  """x scaled to unit L2 norm along its last axis (eps keeps a zero vector finite).

  The norm's gradient at a zero vector is 0/0 (NaN); taking the norm of ones there
  instead, and then 0, keeps the value and makes that gradient 0, so a net whose features
  all die on one image (a random init can) trains on instead of turning NaN.
  """
  nonzero = jnp.any(x != 0, axis=-1, keepdims=True)
  norm = jnp.linalg.norm(jnp.where(nonzero, x, 1.0), axis=-1, keepdims=True)
  return x / (jnp.where(nonzero, norm, 0.0) + eps)


def init_params(model, rng, image_size: int):
  """Initial parameters (the inner ``params`` dict) of a subtask net.

  Args:
    model: a SubtaskCNN, or any subtask family whose input is a feature vector and which
      says so with a ``feature_dim`` attribute (``t2w_jax.zoo.family.AdapterNet``).
    rng: PRNG key.
    image_size: the images' height and width (unused by feature-input families; kept so
      that every caller initialises any family the same way).

  Returns:
    The params dict.
  """
  feature_dim = getattr(model, "feature_dim", None)
  if feature_dim is not None:
    x = jnp.zeros((1, int(feature_dim)), jnp.float32)
  else:
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return model.init(rng, x, method="embed")["params"]
