"""Prior-attention diffusion transformer (DiT) over weight tokens.

Tokens are blocks of a network's normalised weights, (B, L, P). The model predicts x0
(the clean tokens) from noisy tokens x_t, the timestep t, and a text condition:

* the timestep (sinusoidal -> MLP) and, when ``cond_adaln``, the projected fused text
  embedding are summed into one conditioning vector that drives adaLN-Zero in every
  block and in the final layer;
* when ``cross_attention``, each block lets the weight tokens attend to per-class text
  tokens (class embeddings projected to the model width), under the key-padding mask,
  and, when ``prior_bias``, with the log prior added to the attention logits; the
  cross-attention output is gated by adaLN like the other branches;
* when ``text_as_token``, the fused text embedding is projected to one extra token
  prepended to the sequence and dropped at the output (the PyTorch Text2Weight's plain
  conditioning).

Invariant (adaLN-Zero, as in the DiT paper): at init every residual branch's gate and
the final layer's modulation and output projection are zero, so every block is the
identity and the model outputs exactly zero for any input. With x0-prediction in
normalised weight space a zero output means "predict the mean weights", a sensible start.

Classifier-free guidance: ``text["drop"]`` (B,) bool selects, per example, learned null
conditions instead of the text: a null fused vector (for adaLN and the text token) and a
single learned null class token (the only key cross-attention then sees).

Params are created float32 and logically partitioned (see ``layers.LOGICAL_AXIS_RULES``);
``init`` returns ``nn.Partitioned`` boxes, which ``apply`` accepts as they are; use
``nn.meta.unbox`` for plain arrays.
"""
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2w_jax.models import layers
from t2w_jax.models.text_head import TextHead

Array = jax.Array


# How the blocks get their adaLN modulation (see ``DiT.adaln``).
ADALN_KINDS = ("block", "single")

# The modules of the per-example conditioning path: the timestep and text embeddings, the
# text token and every adaLN modulation, whose products have one row per example. They
# compute in ``CONDITIONING_DTYPE`` (float32) whatever the compute dtype: XLA's CPU
# backend runs a bfloat16 product with so few rows by converting its kernel to float32
# first, which in a batch-1 call cost more than the products themselves, and the
# modulations are then not rounded before they scale every token. Their outputs are cast
# to the compute dtype where they meet the tokens. ``generator.inference_params`` leaves
# their kernels float32.
CONDITIONING_MODULES = ("t_embed", "text_embed_fc1", "text_embed_fc2", "text_token",
                        "adaLN_single", "adaLN_modulation")
# None: the compute dtype (how the path computed before; ``launch/bench.py kernels``
# times the two).
CONDITIONING_DTYPE = jnp.float32


def conditioning_dtype(dtype: Any) -> Any:
  """The dtype the conditioning path (``CONDITIONING_MODULES``) computes in."""
  return dtype if CONDITIONING_DTYPE is None else CONDITIONING_DTYPE


def on_conditioning_path(path: Any) -> bool:
  """Whether a parameter at ``path`` (a pytree key path) belongs to a module of the
  conditioning path that computes in float32, whatever the compute dtype."""
  return (CONDITIONING_DTYPE is not None and jnp.dtype(CONDITIONING_DTYPE) == jnp.float32
          and any(getattr(k, "key", None) in CONDITIONING_MODULES for k in path))


def num_branches(cross_attention: bool) -> int:
  """Residual branches of a block (self-attention, [cross-attention], MLP); each has its
  shift, scale and gate."""
  return 3 if cross_attention else 2


class DiTBlock(nn.Module):
  """adaLN-Zero transformer block with optional gated cross-attention to class tokens.

  x += g1 * SelfAttn(mod(LN(x))); [x += g2 * CrossAttn(mod(LN(x)), class tokens)];
  x += g3 * MLP(mod(LN(x))); shifts, scales and gates come from a zero-initialised
  Dense on SiLU(c) ("block" adaLN, as in DiT), or, with ``adaln="single"`` (as in
  PixArt-alpha), from one modulation that every block shares plus this block's own
  zero-initialised offsets; either way the block is the identity at init.

  Attributes:
    num_heads: attention heads.
    mlp_ratio: MLP hidden = mlp_ratio * width.
    cross_attention: add the cross-attention branch.
    adaln: "block" (a modulation Dense per block) or "single" (shared, see above).
    dtype: compute dtype.
  """
  num_heads: int
  mlp_ratio: float
  cross_attention: bool
  adaln: str = "block"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, c: Array, kv: Optional[Array] = None,
               kv_bias: Optional[Array] = None, kv_mask: Optional[Array] = None
               ) -> Array:
    """Args:
      x: (B, S, width) tokens.
      c: (B, width) conditioning vector; with ``adaln="single"`` the shared modulation,
        (B, 3 * branches * width); in ``conditioning_dtype``.
      kv: (B, K', width) class tokens (cross_attention only).
      kv_bias: (B, 1, 1, K') additive attention bias, or None.
      kv_mask: (B, 1, 1, K') boolean key mask.

    Returns:
      (B, S, width).
    """
    width = x.shape[-1]
    n_branches = num_branches(self.cross_attention)
    if self.adaln == "single":
      offsets = self.param("adaLN_offsets", layers.partitioned(nn.initializers.zeros_init(),
                                                               ("mlp",)),
                           (3 * n_branches * width,), jnp.float32)
      mod = c + offsets.astype(c.dtype)
    else:
      mod = layers.dense(3 * n_branches * width, ("embed", "mlp"),
                         dtype=conditioning_dtype(self.dtype), zero_init=True,
                         name="adaLN_modulation")(nn.silu(c))
    mod = mod.astype(self.dtype)
    chunks = jnp.split(mod, 3 * n_branches, axis=-1)

    shift, scale, gate = chunks[0:3]
    h = layers.modulate(layers.layer_norm(affine=False, dtype=self.dtype, name="norm1")(x),
                        shift, scale)
    h = layers.Attention(self.num_heads, dtype=self.dtype, name="attn")(h)
    x = layers.constrain_tokens(x + gate[:, None, :] * h)

    if self.cross_attention:
      shift, scale, gate = chunks[3:6]
      h = layers.modulate(
          layers.layer_norm(affine=False, dtype=self.dtype, name="norm_cross")(x),
          shift, scale)
      h = layers.Attention(self.num_heads, dtype=self.dtype, name="cross_attn")(
          h, kv, bias=kv_bias, mask=kv_mask)
      x = layers.constrain_tokens(x + gate[:, None, :] * h)

    shift, scale, gate = chunks[-3:]
    h = layers.modulate(layers.layer_norm(affine=False, dtype=self.dtype, name="norm2")(x),
                        shift, scale)
    h = layers.Mlp(int(self.mlp_ratio * width), dtype=self.dtype, name="mlp")(h)
    return layers.constrain_tokens(x + gate[:, None, :] * h)


class FinalLayer(nn.Module):
  """LN -> adaLN modulation -> token output projection; all zero-initialised.

  Attributes:
    block_size: P, output features per token.
    dtype: compute dtype.
    token_proj: "per_token", "shared" or "low_rank" (``layers.token_projection``).
    token_proj_rank: the rank of "low_rank"'s per-token corrections.
  """
  block_size: int
  dtype: Any = jnp.float32
  token_proj: str = "per_token"
  token_proj_rank: int = layers.TOKEN_PROJ_RANK

  @nn.compact
  def __call__(self, x: Array, c: Array) -> Array:
    """Args: x (B, L, width), c (B, width). Returns (B, L, P)."""
    width = x.shape[-1]
    mod = layers.dense(2 * width, ("embed", "mlp"), dtype=conditioning_dtype(self.dtype),
                       zero_init=True, name="adaLN_modulation")(nn.silu(c))
    shift, scale = jnp.split(mod.astype(self.dtype), 2, axis=-1)
    x = layers.modulate(layers.layer_norm(affine=False, dtype=self.dtype, name="norm")(x),
                        shift, scale)
    return layers.token_projection(self, x, self.block_size, ("tokens", "embed", "block"),
                                   self.dtype, self.token_proj, name="out_proj",
                                   zero_init=True, rank=self.token_proj_rank)


def _get(text: Mapping[str, Any], key: str, why: str) -> Array:
  if key not in text:
    raise KeyError(f"text[{key!r}] is required ({why}); got keys {sorted(text)}")
  return jnp.asarray(text[key])


def _check_shape(name: str, x: Array, shape: tuple[int, ...]) -> None:
  if tuple(x.shape) != shape:
    raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")


class DiT(nn.Module):
  """Prior-attention diffusion transformer over weight tokens; predicts x0.

  Invariant: at init the output is exactly zero for any input (adaLN-Zero gates and the
  zero final layer), i.e. x0 = the mean weights in normalised space.

  Attributes:
    width: model width.
    depth: number of blocks.
    num_heads: attention heads (width must be divisible by it).
    mlp_ratio: MLP hidden size / width.
    block_size: P, the token size.
    num_layers: size of the layer-id embedding table.
    max_blocks: size of the block-id embedding table.
    text_dim: d, the text-encoder dimension.
    cond_adaln: timestep + projected fused text drive adaLN (else timestep only).
    cross_attention: per-block cross-attention from weight tokens to class tokens.
    prior_bias: add log_prior to the cross-attention logits (needs cross_attention).
    text_as_token: prepend the projected fused text as one extra token.
    text_head: hidden width of the deterministic text head added to the output
      (``models/text_head.py``: x0 = head(text) + transformer); 0: none.
    text_head_depth: its hidden layers.
    adaln: "block": each block's shifts, scales and gates come from its own Dense on the
      conditioning vector (DiT's adaLN-Zero); "single": one Dense for all blocks plus
      per-block learned offsets (PixArt-alpha's adaLN-single), depth-fold fewer
      modulation parameters. The final layer keeps its own modulation either way.
    token_proj: how tokens are projected to and from the width: "per_token" (a separate
      affine map per token position, as in G.pt), "shared" (one map plus a per-token
      bias) or "low_rank" (the shared map plus a per-token correction of rank
      ``token_proj_rank``; ``layers.TOKEN_PROJECTIONS``).
    token_proj_rank: the rank of "low_rank"'s per-token corrections.
    frequency_dim: size of the sinusoidal timestep features.
    dtype: compute dtype (params are float32; the output is float32; the conditioning
      path, ``CONDITIONING_MODULES``, computes in float32).
  """
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  block_size: int
  num_layers: int
  max_blocks: int
  text_dim: int
  cond_adaln: bool = True
  cross_attention: bool = True
  prior_bias: bool = True
  text_as_token: bool = False
  text_head: int = 0
  text_head_depth: int = 2
  adaln: str = "block"
  token_proj: str = "per_token"
  token_proj_rank: int = layers.TOKEN_PROJ_RANK
  frequency_dim: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_t: Array, t: Array, layer_ids: Array, block_ids: Array,
               text: Mapping[str, Any]) -> Array:
    """Predicts x0.

    Args:
      x_t: (B, L, P) noisy normalised weight tokens.
      t: (B,) int timesteps.
      layer_ids: (L,) int layer id of each token, in [0, num_layers).
      block_ids: (L,) int block index of each token within its layer, in [0, max_blocks).
      text: dict with "fused" (B, d) (needed when cond_adaln or text_as_token),
        "class_emb" (B, K, d) and "class_mask" (B, K) bool (needed when cross_attention),
        "log_prior" (B, K) (needed when prior_bias; "class_emb" and "class_mask" also
        when text_head), and optional "drop" (B,) bool: True
        replaces that example's text by the learned null condition.

    Returns:
      (B, L, P) float32 x0 prediction.

    Raises:
      ValueError: inconsistent shapes or ids; KeyError: a needed text entry is missing.
    """
    if self.prior_bias and not self.cross_attention:
      raise ValueError("prior_bias=True needs cross_attention=True")
    if self.adaln not in ADALN_KINDS:
      raise ValueError(f"adaln must be one of {ADALN_KINDS}, got {self.adaln!r}")
    if jnp.ndim(x_t) != 3 or x_t.shape[-1] != self.block_size:
      raise ValueError(f"x_t must have shape (B, L, {self.block_size}), "
                       f"got {jnp.shape(x_t)}")
    batch, num_tokens, _ = x_t.shape
    _check_shape("t", jnp.asarray(t), (batch,))
    layers.check_token_ids("layer_ids", layer_ids, num_tokens, self.num_layers)
    layers.check_token_ids("block_ids", block_ids, num_tokens, self.max_blocks)
    if not isinstance(text, Mapping):
      raise ValueError(f"text must be a dict, got {type(text).__name__}")
    drop = jnp.asarray(text.get("drop", jnp.zeros((batch,), bool)))
    _check_shape('text["drop"]', drop, (batch,))
    drop = drop.astype(bool)

    h = layers.TokenEmbedding(self.width, self.num_layers, self.max_blocks,
                              dtype=self.dtype, token_proj=self.token_proj,
                              token_proj_rank=self.token_proj_rank,
                              name="embed")(x_t, layer_ids, block_ids)
    cond_dtype = conditioning_dtype(self.dtype)
    c = layers.TimestepEmbedder(self.width, self.frequency_dim, dtype=cond_dtype,
                                name="t_embed")(t)

    if self.cond_adaln or self.text_as_token:
      fused = _get(text, "fused", "cond_adaln or text_as_token")
      _check_shape('text["fused"]', fused, (batch, self.text_dim))
      null_fused = self.param("null_fused", layers.partitioned(layers.embed_init, ("text",)),
                              (self.text_dim,), jnp.float32)
      fused = jnp.where(drop[:, None], null_fused[None], fused).astype(cond_dtype)
      if self.cond_adaln:
        y = layers.dense(self.width, ("text", "mlp"), dtype=cond_dtype,
                         name="text_embed_fc1")(fused)
        y = layers.dense(self.width, ("mlp", "embed"), dtype=cond_dtype,
                         name="text_embed_fc2")(nn.silu(y))
        c = c + y
      if self.text_as_token:
        tok = layers.dense(self.width, ("text", "embed"), dtype=cond_dtype,
                           name="text_token")(fused)
        h = jnp.concatenate([tok[:, None, :].astype(h.dtype), h], axis=1)
    h = layers.constrain_tokens(h)

    kv = kv_bias = kv_mask = None
    if self.cross_attention:
      kv, kv_bias, kv_mask = self._class_tokens(text, drop, batch)

    block_cond = c
    if self.adaln == "single":
      n_branches = num_branches(self.cross_attention)
      block_cond = layers.dense(3 * n_branches * self.width, ("embed", "mlp"),
                                dtype=cond_dtype, zero_init=True,
                                name="adaLN_single")(nn.silu(c))
    for i in range(self.depth):
      h = DiTBlock(self.num_heads, self.mlp_ratio, self.cross_attention, adaln=self.adaln,
                   dtype=self.dtype, name=f"block_{i}")(h, block_cond, kv, kv_bias, kv_mask)
    if self.text_as_token:
      h = h[:, 1:]
    out = FinalLayer(self.block_size, dtype=self.dtype, token_proj=self.token_proj,
                     token_proj_rank=self.token_proj_rank, name="final")(h, c)
    out = out.astype(jnp.float32)
    if self.text_head:
      class_emb = _get(text, "class_emb", "text_head")
      class_mask = _get(text, "class_mask", "text_head")
      _check_shape('text["class_mask"]', class_mask, class_emb.shape[:2])
      out = out + TextHead(self.text_head, self.text_head_depth, num_tokens, self.block_size,
                           dtype=self.dtype, name="text_head")(class_emb, class_mask, drop)
    return out

  def _class_tokens(self, text: Mapping[str, Any], drop: Array, batch: int
                    ) -> tuple[Array, Optional[Array], Array]:
    """Class tokens with the null token in slot 0, and their bias and mask.

    The null class token is always present as key 0 but is unmasked only for dropped
    examples, whose real class tokens are all masked; so shapes stay static and dropping
    is a per-example choice. No positional embedding touches the class tokens, so the
    cross-attention is invariant to the order of classes.

    Returns:
      kv (B, K+1, width); bias (B, 1, 1, K+1) or None; mask (B, 1, 1, K+1) bool.
    """
    class_emb = _get(text, "class_emb", "cross_attention")
    if class_emb.ndim != 3 or class_emb.shape[0] != batch or class_emb.shape[2] != self.text_dim:
      raise ValueError(f'text["class_emb"] must have shape (B={batch}, K, {self.text_dim}), '
                       f"got {tuple(class_emb.shape)}")
    num_classes = class_emb.shape[1]
    class_mask = _get(text, "class_mask", "cross_attention")
    _check_shape('text["class_mask"]', class_mask, (batch, num_classes))
    class_mask = class_mask.astype(bool)

    null_class = self.param("null_class", layers.partitioned(layers.embed_init, ("text",)),
                            (self.text_dim,), jnp.float32)
    emb = jnp.concatenate(
        [jnp.broadcast_to(null_class, (batch, 1, self.text_dim)).astype(jnp.float32),
         class_emb.astype(jnp.float32)], axis=1)
    # Padded rows may hold any finite values: they get exactly zero attention weight.
    mask = jnp.concatenate([drop[:, None], class_mask & ~drop[:, None]], axis=1)
    kv = layers.dense(self.width, ("text", "embed"), dtype=self.dtype,
                      name="class_proj")(emb.astype(self.dtype))
    kv = layers.layer_norm(affine=True, dtype=self.dtype, name="class_norm")(kv)

    bias = None
    if self.prior_bias:
      log_prior = _get(text, "log_prior", "prior_bias")
      _check_shape('text["log_prior"]', log_prior, (batch, num_classes))
      # Zero the masked entries so that -inf padding cannot leak NaNs into gradients;
      # the mask removes those keys anyway.
      log_prior = jnp.where(class_mask, log_prior.astype(jnp.float32), 0.0)
      bias = jnp.concatenate([jnp.zeros((batch, 1), jnp.float32), log_prior], axis=1)
      bias = jnp.where(mask, bias, 0.0)[:, None, None, :]
    return kv, bias, mask[:, None, None, :]


_REQUIRED = object()


def _cfg(config: Any, key: str, default: Any = _REQUIRED) -> Any:
  """Reads ``key`` from a Mapping / ConfigDict / attribute object."""
  if isinstance(config, Mapping):
    if key in config:
      return config[key]
  elif hasattr(config, key):
    return getattr(config, key)
  if default is _REQUIRED:
    raise KeyError(f"model_flops_per_example: config has no {key!r}")
  return default


def model_flops_per_example(config: Any, num_tokens: Optional[int] = None,
                            max_classes: Optional[int] = None,
                            training: bool = True) -> float:
  """Dense-FLOPs estimate of one DiT example, for MFU reporting.

  Counts multiply-adds of every matmul (x2 for FLOPs); ignores norms, softmax and
  elementwise ops. With S = L + text_as_token tokens, w = width, r = mlp_ratio,
  K' = max_classes + 1 (null token), d = text_dim, n = 3 adaLN chunks per branch:

    per-token:   L*P*w (in) + L*w*P (out) + [low_rank] 2 L*rank*(P + w)
                 + depth * S * (4 w^2 + 2 r w^2 + [cross] 2 w^2)
    attention:   depth * (2 S^2 w + [cross] 2 S K' w)        (QK^T and AV)
    per-example: depth * n*branches*w^2 ([adaln "single"]: n*branches*w^2 once)
                 + 2 w^2 (final adaLN) + (f w + w^2) (timestep MLP, f = frequency_dim)
                 + [cond_adaln] (d w + w^2) + [text_as_token] d w
                 + [cross] K' (d w + depth * 2 w^2)           (class tokens, their K/V)

  forward FLOPs = 2 * MACs; training = 3 * forward (backward ~ 2 * forward). This is the
  "2 * params * tokens + attention" rule made exact for the per-token projections, whose
  (L, P, w) params are each used by one token only.

  Args:
    config: Mapping, ConfigDict or object (a ``DiT`` works) with width, depth, mlp_ratio,
      block_size, and optionally num_tokens, max_classes, text_dim (384), cond_adaln,
      cross_attention, text_as_token, adaln, token_proj, token_proj_rank (defaults as in
      ``DiT``), frequency_dim (256).
    num_tokens: L; overrides config.num_tokens.
    max_classes: K; overrides config.max_classes (default 0 when absent).
    training: count forward + backward (x3) instead of forward only.

  Returns:
    FLOPs per example (float).
  """
  w = int(_cfg(config, "width"))
  depth = int(_cfg(config, "depth"))
  r = float(_cfg(config, "mlp_ratio"))
  p = int(_cfg(config, "block_size"))
  num_l = int(num_tokens if num_tokens is not None else _cfg(config, "num_tokens"))
  k = int(max_classes if max_classes is not None else _cfg(config, "max_classes", 0))
  d = int(_cfg(config, "text_dim", 384))
  freq = int(_cfg(config, "frequency_dim", 256))
  cond_adaln = bool(_cfg(config, "cond_adaln", True))
  cross = bool(_cfg(config, "cross_attention", True))
  as_token = bool(_cfg(config, "text_as_token", False))
  adaln_blocks = 1 if _cfg(config, "adaln", "block") == "single" else depth
  low_rank = _cfg(config, "token_proj", "per_token") == "low_rank"

  s = num_l + int(as_token)
  kk = k + 1
  per_token_block = 4 * w * w + 2 * r * w * w + (2 * w * w if cross else 0)
  macs = 2 * num_l * p * w + depth * s * per_token_block
  if low_rank:  # the per-token corrections, in and out
    rank = int(_cfg(config, "token_proj_rank", layers.TOKEN_PROJ_RANK))
    macs += 2 * num_l * rank * (p + w)
  macs += depth * (2 * s * s * w + (2 * s * kk * w if cross else 0))
  branches = num_branches(cross)
  macs += adaln_blocks * 3 * branches * w * w + 2 * w * w + freq * w + w * w
  if cond_adaln:
    macs += d * w + w * w
  if as_token:
    macs += d * w
  if cross:
    macs += kk * (d * w + depth * 2 * w * w)
  flops = 2.0 * macs
  return 3.0 * flops if training else flops
