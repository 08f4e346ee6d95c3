"""Small shared pieces of the weight-space models: embeddings, projections, attention.

Every kernel is wrapped with ``nn.with_logical_partitioning`` so that a ``Mesh`` with axes
('data', 'model') can shard it through logical axis rules (see ``LOGICAL_AXIS_RULES``), and
activations pass through ``constrain_tokens`` (("batch", "tokens", "embed")).

Without a mesh everything runs as plain Linen: ``init`` then returns ``nn.Partitioned``
boxes in the params tree; ``apply`` accepts the boxed tree as it is, and
``nn.meta.unbox(params)`` (or ``unbox`` below) gives plain arrays for optimisers,
checkpoints or arithmetic on the params.

Logical axis names used on parameters:
  "embed": the model width; "mlp": MLP hidden / modulation outputs; "heads": attention
  heads; "kv": per-head feature dim; "tokens": weight-token position (per-token
  projections); "block": the block size P (token feature dim); "text": the text-encoder
  dim. Activations use "batch", "tokens", "embed".
"""
import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

# Default rules: data parallel over 'data', tensor parallel (heads, MLP hidden) over
# 'model'; everything else replicated. A config can swap in FSDP rules such as
# ("embed", "data") for large models.
LOGICAL_AXIS_RULES: tuple[tuple[str, Optional[str]], ...] = (
    ("batch", "data"),
    ("mlp", "model"),
    ("heads", "model"),
    ("embed", None),
    ("kv", None),
    ("tokens", None),
    ("block", None),
    ("text", None),
)

# Added to attention logits at masked keys. Finite (not -inf) so that a row that is fully
# masked gives a uniform softmax instead of NaN, and far below any real logit so that
# masked keys get exactly zero weight after exp underflows.
_MASK_VALUE = -1e30

embed_init = nn.initializers.normal(stddev=0.02)


def partitioned(init: Initializer, axes: Sequence[Optional[str]]) -> Initializer:
  """Shorthand for ``nn.with_logical_partitioning(init, axes)``."""
  return nn.with_logical_partitioning(init, tuple(axes))


def unbox(tree: Any) -> Any:
  """Strips ``nn.Partitioned`` boxes from a params (or variables) tree.

  Args:
    tree: output of ``Module.init`` (or its "params" collection).

  Returns:
    The same tree with plain arrays at the leaves.
  """
  return nn.meta.unbox(tree)


def constrain_tokens(x: Array) -> Array:
  """Logical sharding constraint for (batch, tokens, embed) activations (no-op without rules)."""
  return nn.with_logical_constraint(x, ("batch", "tokens", "embed"))


def _transposed_specs(spec: str) -> tuple[str, str]:
  """For "A,B->C", the specs of the two gradients: "C,B->A" and "A,C->B"."""
  inputs, out = spec.replace(" ", "").split("->")
  a, b = inputs.split(",")
  for idx, others in ((a, b + out), (b, a + out)):
    lost = set(idx.replace("...", "")) - set(others)
    if lost:  # an index summed within one operand has no transpose of this form
      raise ValueError(f"einsum {spec!r}: indices {sorted(lost)} appear in one operand only")
  return f"{out},{b}->{a}", f"{a},{out}->{b}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _low_precision_einsum(spec: str, a: Array, b: Array, dtype: Any) -> Array:
  return _low_precision_fwd(spec, a, b, dtype)[0]


def _low_precision_fwd(spec, a, b, dtype):
  a_low, b_low = a.astype(dtype), b.astype(dtype)
  out = jnp.einsum(spec, a_low, b_low, preferred_element_type=jnp.float32).astype(dtype)
  # Empty arrays carry the operands' dtypes (residuals must be arrays).
  return out, (a_low, b_low, jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype))


def _low_precision_bwd(spec, dtype, res, g):
  a_low, b_low, a_like, b_like = res
  spec_a, spec_b = _transposed_specs(spec)
  g = g.astype(dtype)
  da = jnp.einsum(spec_a, g, b_low, preferred_element_type=jnp.float32)
  db = jnp.einsum(spec_b, a_low, g, preferred_element_type=jnp.float32)
  return da.astype(a_like.dtype), db.astype(b_like.dtype)


_low_precision_einsum.defvjp(_low_precision_fwd, _low_precision_bwd)


def einsum(spec: str, a: Array, b: Array, dtype: Dtype) -> Array:
  """``jnp.einsum`` of two operands computed in ``dtype``, its gradients too.

  In float32 it is the plain einsum. In a lower precision (bfloat16) the operands, and in
  the backward pass the cotangent, are cast to ``dtype`` and every product (forward and
  both gradients) accumulates in float32 (``preferred_element_type``), the usual mixed
  precision. This is also what reaches the CPU's bfloat16 matrix units (AMX): XLA's CPU
  backend gives a bfloat16 product with a bfloat16 result to a slow generic kernel, and
  JAX's own transpose of a float32-result product multiplies a float32 cotangent by a
  bfloat16 operand (benchmarks/ measures both).

  Args:
    spec: "A,B->C" without repeated indices within an operand; every index of A appears
      in B or C, and every index of B in A or C (true of every projection and attention
      product here; another is refused with a ValueError in low precision).
    a, b: the operands (any float dtype; their gradients come back in it).
    dtype: the compute dtype; the result has it.
  """
  if jnp.dtype(dtype) == jnp.float32:
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype))
  _transposed_specs(spec)  # refuses a spec whose gradients it cannot form, here
  return _low_precision_einsum(spec, a, b, jnp.dtype(dtype))


def projection_kernel(module: nn.Module, name: str, in_shape: Sequence[int],
                      out_shape: Sequence[int], in_axes: Sequence[Optional[str]],
                      out_axes: Sequence[Optional[str]], *, zero_init: bool = False) -> Array:
  """A projection's float32 kernel, created in ``module``: stored (*out, *in).

  Output dimensions first, as in ``torch.nn.Linear``: XLA's CPU backend runs a product
  with few rows (a batch-1 denoising call has one row per weight token) markedly faster
  when the contracted dimension is the kernel's minor one, and the two layouts train
  alike (``python launch/bench.py kernels`` times both). Initialised with LeCun's
  truncated normal over the input dimensions (``nn.Dense``'s default), or zero.

  Args:
    module: the module that owns the parameter (call from its ``@nn.compact`` body).
    name: parameter name.
    in_shape, out_shape: the input and output dimensions.
    in_axes, out_axes: their logical axis names (``LOGICAL_AXIS_RULES``).
    zero_init: a zero kernel (adaLN-Zero modulations, output layers).

  Returns:
    The (*out_shape, *in_shape) kernel, for ``project``.
  """
  n_out, n_in = len(out_shape), len(in_shape)
  if zero_init:
    init = nn.initializers.zeros_init()
  else:
    init = nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=tuple(range(n_out, n_out + n_in)),
        out_axis=tuple(range(n_out)))
  return module.param(name, partitioned(init, (*out_axes, *in_axes)),
                      (*out_shape, *in_shape), jnp.float32)


# How ``projection_kernel`` stores a kernel; checkpoints record it (``generator.py``).
# "in_out" ((*in, *out), ``nn.Dense``'s layout) is how kernels were stored before.
KERNEL_LAYOUT = "out_in"
KERNEL_LAYOUTS = ("in_out", "out_in")

# Input dimensions of each kind of projection kernel, by parameter name: a Dense "kernel"
# is 2-D (a per-token projection's "kernel" is 3-D, keeps its (L, in, out) layout and is
# used in float32: not a projection kernel).
_KERNEL_INPUTS = {"query_kernel": 1, "key_kernel": 1, "value_kernel": 1, "out_kernel": 2}


def projection_kernel_inputs(path: Sequence[Any], shape: Sequence[int]) -> int:
  """How many input dimensions a parameter at ``path`` (a pytree key path) with ``shape``
  has if it is a projection kernel (one ``projection_kernel`` made), else 0."""
  name = getattr(path[-1], "key", None) if path else None
  return _KERNEL_INPUTS.get(name, 1 if name == "kernel" and len(shape) == 2 else 0)


def move_projection_kernels(params: Any, source: str, target: str) -> Any:
  """``params`` (a plain or shape tree of the models here) with every projection kernel
  moved from the ``source`` layout to the ``target`` one (``KERNEL_LAYOUTS``).

  Reads checkpoints written when kernels were stored (*in, *out): their arrays move to
  (*out, *in), element for element, so the model computes the same function.
  """
  for layout in (source, target):
    if layout not in KERNEL_LAYOUTS:
      raise ValueError(f"unknown kernel layout {layout!r}; expected one of {KERNEL_LAYOUTS}")
  if source == target:
    return params

  def move(path, x):
    n_in = projection_kernel_inputs(path, x.shape)
    if n_in == 0:
      return x
    ndim = len(x.shape)
    n_first = n_in if source == "in_out" else ndim - n_in
    perm = (*range(n_first, ndim), *range(n_first))
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(tuple(x.shape[i] for i in perm), x.dtype,
                                  sharding=x.sharding)
    return jnp.transpose(x, perm)

  return jax.tree_util.tree_map_with_path(move, params)


def project(x: Array, kernel: Array, num_in: int, dtype: Dtype,
            out_dtype: Optional[Dtype] = None) -> Array:
  """``x`` (..., *in) times ``kernel`` (*out, *in) -> (..., *out): every projection's product.

  In float32 it is ONE 2-D matrix product, (N, in) x (out, in)^T: XLA's CPU backend runs a
  product whose left operand has several free dimensions (and, above all, its kernel
  gradient, which contracts over them) markedly slower than the flattened one. In a lower
  precision (``einsum``'s mixed precision) the forward product is that flattened one too,
  and the two gradients are the einsums over the original dimensions, which reach the
  CPU's bf16 matrix units where the flattened gradients did not (``python launch/bench.py
  kernels`` times the forms). Either way the parameters keep their shapes and logical axes.

  Args:
    x: (..., *in) activations.
    kernel: (*out, *in) with ``num_in`` trailing (input) dimensions, from
      ``projection_kernel``.
    num_in: how many trailing kernel dimensions are contracted with x's trailing ones.
    dtype: compute dtype (``einsum``'s mixed precision).
    out_dtype: the result's dtype (default ``dtype``). In a lower precision, float32 returns
      the product's float32 accumulator as it is, for what is computed in float32 next
      (attention's queries, keys and values; the MLP's GELU): the rounding to bfloat16
      and back is saved (``python launch/bench.py kernels --dtype bfloat16`` times both).

  Returns:
    (..., *out) in ``out_dtype``.
  """
  in_shape = kernel.shape[kernel.ndim - num_in:]
  if tuple(x.shape[x.ndim - num_in:]) != tuple(in_shape):
    raise ValueError(f"project: x {x.shape} does not end in the kernel's input dims {in_shape}")
  if jnp.dtype(dtype) != jnp.float32:
    return _low_precision_project(x, kernel, num_in, jnp.dtype(dtype),
                                  jnp.dtype(out_dtype or dtype))
  x2, k2, shape = _as_2d(x, kernel, num_in)
  return einsum("ni,oi->no", x2, k2, dtype).reshape(shape)


def _as_2d(x: Array, kernel: Array, num_in: int) -> tuple[Array, Array, tuple[int, ...]]:
  """(N, in) activations, (out, in) kernel, and the product's shape (..., *out)."""
  out_shape = kernel.shape[:kernel.ndim - num_in]
  n_out = math.prod(out_shape)
  n_in = kernel.size // n_out
  return (x.reshape(-1, n_in), kernel.reshape(n_out, n_in),
          (*x.shape[:x.ndim - num_in], *out_shape))


def _project_spec(num_in: int, num_out: int) -> str:
  ins, outs = "ijklm"[:num_in], "opqrs"[:num_out]
  return f"...{ins},{outs}{ins}->...{outs}"


# In a lower precision the forward product is the flattened 2-D one, which XLA's CPU
# backend runs on the kernel as it is stored, and the two gradients are ``einsum``'s over
# the original dimensions, the forms that reach the bf16 matrix units (the flattened
# gradients do not, and the einsum form's forward copies a 3-D kernel to another layout
# first, which in a batch-1 call costs more than the product).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _low_precision_project(x: Array, kernel: Array, num_in: int, dtype: Any,
                           out_dtype: Any) -> Array:
  return _low_precision_project_fwd(x, kernel, num_in, dtype, out_dtype)[0]


def _low_precision_project_fwd(x, kernel, num_in, dtype, out_dtype):
  x_low, k_low = x.astype(dtype), kernel.astype(dtype)
  x2, k2, shape = _as_2d(x_low, k_low, num_in)
  y = jnp.einsum("ni,oi->no", x2, k2, preferred_element_type=jnp.float32)
  # The residuals of ``_low_precision_einsum``'s, for its backward pass.
  res = (x_low, k_low, jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype))
  return y.astype(out_dtype).reshape(shape), res


def _low_precision_project_bwd(num_in, dtype, out_dtype, res, g):
  spec = _project_spec(num_in, res[1].ndim - num_in)
  return _low_precision_bwd(spec, dtype, res, g)


_low_precision_project.defvjp(_low_precision_project_fwd, _low_precision_project_bwd)


def add_bias(y: Array, bias: Array, dtype: Dtype) -> Array:
  """``y + bias`` with ``bias`` (float32 parameters) over ``y``'s trailing dimensions.

  In float32, or on a float32 ``y`` (``project``'s float32 results), it is the plain sum.
  In a lower precision the bias's gradient, the sum of the cotangent over every leading
  dimension, is one matrix product of a ones row with the cotangent flattened to
  (N, bias.size), accumulated in float32 (and so not rounded to ``dtype``): XLA's CPU
  backend turns a large bfloat16 sum into a tree of reduce-windows that runs far slower
  than the product (``python launch/bench.py kernels --dtype bfloat16`` times both).

  Args:
    y: (..., *bias.shape) in ``dtype`` or float32.
    bias: the bias parameter.
    dtype: the compute dtype.

  Returns:
    ``y + bias`` in ``y``'s dtype.
  """
  if jnp.dtype(dtype) == jnp.float32 or y.dtype == jnp.float32:
    return y + bias.astype(y.dtype)
  if tuple(y.shape[y.ndim - bias.ndim:]) != tuple(bias.shape):
    raise ValueError(f"add_bias: y {y.shape} does not end in the bias's shape {bias.shape}")
  return _bias_sum(y, bias, jnp.dtype(dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _bias_sum(y: Array, bias: Array, dtype) -> Array:
  return y + bias.astype(dtype)


def _bias_sum_fwd(y, bias, dtype):
  # The bias itself is the residual: only its shape and dtype are read.
  return y + bias.astype(dtype), bias


def _bias_sum_bwd(dtype, bias, g):
  g = g.astype(dtype)
  flat = g.reshape(-1, bias.size)
  ones = jnp.ones((1, flat.shape[0]), dtype)
  db = jnp.dot(ones, flat, preferred_element_type=jnp.float32).reshape(bias.shape)
  return g, db.astype(bias.dtype)


_bias_sum.defvjp(_bias_sum_fwd, _bias_sum_bwd)


class Dense(nn.Module):
  """``nn.Dense`` (same parameter names; the kernel stored (out, in), see
  ``projection_kernel``) whose product is ``project``'s.

  Attributes:
    features: output features.
    axes: logical names of the (in, out) kernel axes; the bias has axes[1].
    dtype: compute dtype (params stay float32).
    zero_init: zero kernel and bias (adaLN-Zero modulations, gates).
    use_bias: whether to add a bias.
    out_dtype: the output's dtype (default ``dtype``; ``project``).
  """
  features: int
  axes: tuple[Optional[str], Optional[str]]
  dtype: Dtype = jnp.float32
  zero_init: bool = False
  use_bias: bool = True
  out_dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = projection_kernel(self, "kernel", (x.shape[-1],), (self.features,),
                               self.axes[:1], self.axes[1:], zero_init=self.zero_init)
    y = project(x, kernel, 1, self.dtype, self.out_dtype)
    if self.use_bias:
      bias = self.param("bias", partitioned(nn.initializers.zeros_init(), (self.axes[1],)),
                        (self.features,), jnp.float32)
      y = add_bias(y, bias, self.dtype)
    return y


def dense(features: int, axes: tuple[Optional[str], Optional[str]], *, dtype: Dtype,
          zero_init: bool = False, use_bias: bool = True, name: Optional[str] = None,
          out_dtype: Optional[Dtype] = None) -> Dense:
  """A ``Dense`` with logically partitioned kernel (axes) and bias (axes[1]).

  Args:
    features: output features.
    axes: logical names of the (in, out) kernel axes.
    dtype: compute dtype (params stay float32).
    zero_init: zero kernel and bias (adaLN-Zero modulations, gates).
    use_bias: whether to add a bias.
    name: module name.
    out_dtype: the output's dtype (default ``dtype``; ``project``).

  Returns:
    The Dense module.
  """
  return Dense(features, axes, dtype=dtype, zero_init=zero_init, use_bias=use_bias,
               out_dtype=out_dtype, name=name)


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
  """Sinusoidal embedding of (possibly fractional) timesteps, as in DiT / ADM.

  Args:
    t: (B,) timesteps (int or float).
    dim: embedding size (even sizes get cos|sin halves; odd sizes get a zero pad).
    max_period: lowest frequency's period.

  Returns:
    (B, dim) float32 embedding.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedder(nn.Module):
  """Sinusoidal timestep features -> Dense -> SiLU -> Dense.

  Attributes:
    features: output width.
    frequency_dim: size of the sinusoidal features.
    dtype: compute dtype.
  """
  features: int
  frequency_dim: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: Array) -> Array:
    h = timestep_embedding(t, self.frequency_dim).astype(self.dtype)
    h = dense(self.features, (None, "mlp"), dtype=self.dtype, name="fc1")(h)
    h = nn.silu(h)
    return dense(self.features, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)


def modulate(x: Array, shift: Array, scale: Array) -> Array:
  """adaLN modulation: x * (1 + scale) + shift, with (B, D) shift/scale over (B, L, D) x."""
  return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class PerTokenProjection(nn.Module):
  """A separate affine map per token position, as ONE batched einsum (as in G.pt).

  Kernel (L, in, out) and bias (L, out); token l of every example uses kernel[l]. L is
  taken from the input at init, so apply must see the same number of tokens.

  Its products run in float32 whatever the compute dtype: XLA's CPU backend runs a
  bfloat16 batched product with few rows per batch entry (one per token in a batch-1
  denoising call) on a slow generic path, an order of magnitude slower than in float32
  (``python launch/bench.py kernels --dtype bfloat16`` times both), and these products are
  about one percent of the DiT's FLOPs.

  Attributes:
    features: output features per token.
    axes: logical names of the kernel axes (tokens, in, out).
    zero_init: zero kernel (output projection of an adaLN-Zero model).
    dtype: the output's dtype (the model's compute dtype).
  """
  features: int
  axes: tuple[str, str, str]
  zero_init: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x (B, L, in). Returns: (B, L, features)."""
    num_tokens, in_features = x.shape[-2], x.shape[-1]
    if self.zero_init:
      kinit = nn.initializers.zeros_init()
    else:
      # Fan-in per token position: token axis is a batch axis of the initializer.
      kinit = nn.initializers.variance_scaling(
          1.0, "fan_in", "truncated_normal", in_axis=1, out_axis=2, batch_axis=(0,))
    kernel = self.param("kernel", partitioned(kinit, self.axes),
                        (num_tokens, in_features, self.features), jnp.float32)
    bias = self.param("bias", partitioned(nn.initializers.zeros_init(),
                                          (self.axes[0], self.axes[2])),
                      (num_tokens, self.features), jnp.float32)
    y = einsum("lbi,lio->lbo", jnp.swapaxes(x, 0, 1), kernel, jnp.float32)
    return add_bias(jnp.swapaxes(y, 0, 1), bias, jnp.float32).astype(self.dtype)


def attention_weights(q: Array, k: Array, bias: Optional[Array],
                      mask: Optional[Array]) -> Array:
  """Softmax attention weights in float32.

  Args:
    q: (B, H, Lq, Dh) queries, heads first.
    k: (B, H, Lk, Dh) keys, heads first.
    bias: additive logit bias broadcastable to (B, H, Lq, Lk), or None.
    mask: boolean, broadcastable to (B, H, Lq, Lk); False keys get zero weight, or None.

  Returns:
    (B, H, Lq, Lk) float32 weights.
  """
  scale = 1.0 / math.sqrt(q.shape[-1])
  # In float32 whatever the compute dtype: a few percent of the FLOPs at these token
  # counts, and XLA's CPU backend cannot run every layout of their bf16 gradients with a
  # float32 result (``einsum``).
  logits = einsum("bhqd,bhkd->bhqk", q, k, jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, _MASK_VALUE)
  return jax.nn.softmax(logits, axis=-1)


def attend(q: Array, k: Array, v: Array, bias: Optional[Array] = None,
           mask: Optional[Array] = None) -> Array:
  """Softmax attention of (B, L, H, Dh) queries, keys and values, in float32.

  The heads move in front of the tokens first, so that both products batch over (B, H)
  as their leading dimensions: XLA's CPU backend runs these many small products, and their
  gradients, faster in that layout than with the heads between tokens and features
  (``python launch/bench.py kernels`` times both).

  Args:
    q: (B, Lq, H, Dh) queries.
    k, v: (B, Lk, H, Dh) keys and values.
    bias, mask: as ``attention_weights``'s.

  Returns:
    (B, Lq, H, Dh) float32.
  """
  q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
  out = einsum("bhqk,bhkd->bhqd", attention_weights(q, k, bias, mask), v, jnp.float32)
  return jnp.swapaxes(out, 1, 2)


class Attention(nn.Module):
  """Multi-head attention (self when ``kv`` is None, else cross) with bias and key mask.

  Attributes:
    num_heads: number of heads; the query width must be divisible by it.
    dtype: compute dtype (softmax always in float32).
  """
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, kv: Optional[Array] = None, *,
               bias: Optional[Array] = None, mask: Optional[Array] = None) -> Array:
    """Args:
      x: (B, Lq, D) queries' source.
      kv: (B, Lk, D) keys/values' source; None means self-attention on x.
      bias: additive logit bias broadcastable to (B, H, Lq, Lk).
      mask: boolean key mask broadcastable to (B, H, Lq, Lk).

    Returns:
      (B, Lq, D).
    """
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    kv = x if kv is None else kv

    def proj(name, src):
      kernel = projection_kernel(self, f"{name}_kernel", (src.shape[-1],),
                                 (self.num_heads, head_dim), ("embed",), ("heads", "kv"))
      bias = self.param(f"{name}_bias",
                        partitioned(nn.initializers.zeros_init(), ("heads", "kv")),
                        (self.num_heads, head_dim), jnp.float32)
      # float32 out: attention computes in float32 (``attention_weights``).
      return add_bias(project(src, kernel, 1, self.dtype, jnp.float32), bias, self.dtype)

    q = proj("query", x)
    k = proj("key", kv)
    v = proj("value", kv)
    out = attend(q, k, v, bias, mask)
    out_kernel = projection_kernel(self, "out_kernel", (self.num_heads, head_dim), (width,),
                                   ("heads", "kv"), ("embed",))
    out_bias = self.param("out_bias", partitioned(nn.initializers.zeros_init(), ("embed",)),
                          (width,), jnp.float32)
    return add_bias(project(out, out_kernel, 2, self.dtype), out_bias, self.dtype)


class Mlp(nn.Module):
  """Dense -> GELU(tanh) -> Dense.

  Attributes:
    hidden: hidden width.
    dtype: compute dtype.
  """
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    # The GELU in float32 on the product's float32 accumulator (``project``'s out_dtype);
    # fc2 casts it to the compute dtype.
    h = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="fc1",
              out_dtype=jnp.float32)(x)
    h = nn.gelu(h, approximate=True)
    return dense(width, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)


def layer_norm(*, affine: bool, dtype: Dtype, name: Optional[str] = None) -> nn.LayerNorm:
  """LayerNorm (eps 1e-6) with logically partitioned scale/bias; affine=False for adaLN."""
  return nn.LayerNorm(
      epsilon=1e-6, use_scale=affine, use_bias=affine, dtype=dtype,
      param_dtype=jnp.float32,
      scale_init=partitioned(nn.initializers.ones_init(), ("embed",)),
      bias_init=partitioned(nn.initializers.zeros_init(), ("embed",)), name=name)


# How weight tokens are projected to and from the model width (``token_projection``):
# "per_token", a separate affine map per token position (as in G.pt); "shared", one map
# for every token plus a learned per-token bias (far fewer parameters when tokens are many
# and wide); "low_rank", the shared map plus a per-token correction of rank
# ``token_proj_rank`` and the per-token bias: a map per position at a fraction of the
# parameters.
TOKEN_PROJECTIONS = ("per_token", "shared", "low_rank")
# The modules' default rank of "low_rank" (configs/dit.py sets the generator's).
TOKEN_PROJ_RANK = 8


def _check_token_proj(token_proj: str, rank: int) -> None:
  if token_proj not in TOKEN_PROJECTIONS:
    raise ValueError(f"token_proj must be one of {TOKEN_PROJECTIONS}, got {token_proj!r}")
  if token_proj == "low_rank" and (not isinstance(rank, int) or rank < 1):
    raise ValueError(f"token_proj='low_rank' needs token_proj_rank >= 1, got {rank!r}")


class TokenEmbedding(nn.Module):
  """Weight tokens -> width: a token projection + layer-id and block-id embeddings.

  The projection's per-token bias (L, width) doubles as a learned per-position embedding;
  the layer-id and block-id tables let positions share what they have in common.

  Attributes:
    width: model width.
    num_layers: size of the layer-id table (ids in [0, num_layers)).
    max_blocks: size of the block-id table (ids in [0, max_blocks)).
    dtype: compute dtype.
    token_proj: "per_token", "shared" or "low_rank" (``TOKEN_PROJECTIONS``).
    token_proj_rank: the rank of "low_rank"'s per-token corrections.
  """
  width: int
  num_layers: int
  max_blocks: int
  dtype: Dtype = jnp.float32
  token_proj: str = "per_token"
  token_proj_rank: int = TOKEN_PROJ_RANK

  @nn.compact
  def __call__(self, tokens: Array, layer_ids: Array, block_ids: Array) -> Array:
    """Args: tokens (B, L, P); layer_ids, block_ids (L,) int. Returns (B, L, width)."""
    h = token_projection(self, tokens, self.width, ("tokens", "block", "embed"), self.dtype,
                         self.token_proj, name="in_proj", rank=self.token_proj_rank)
    layer_table = self.param("layer_embed", partitioned(embed_init, (None, "embed")),
                             (self.num_layers, self.width), jnp.float32)
    block_table = self.param("block_embed", partitioned(embed_init, (None, "embed")),
                             (self.max_blocks, self.width), jnp.float32)
    # mode="clip" keeps gather well defined under jit; ranges are checked eagerly by callers.
    pos = (jnp.take(layer_table, layer_ids, axis=0, mode="clip")
           + jnp.take(block_table, block_ids, axis=0, mode="clip"))
    return h + pos.astype(self.dtype)[None]


def token_projection(module: nn.Module, x: Array, features: int,
                     axes: tuple[str, str, str], dtype: Dtype, token_proj: str, *,
                     name: str, zero_init: bool = False,
                     rank: int = TOKEN_PROJ_RANK) -> Array:
  """Tokens (B, L, in) -> (B, L, features), made in ``module`` (call from its
  ``@nn.compact`` body): ``name``; with "shared" and "low_rank" also the per-token bias
  "token_bias", and with "low_rank" the per-token factors "token_down" (L, rank, in) and
  "token_up" (L, features, rank).

  "low_rank" computes ``W x_l + U_l (D_l x_l) + b_l`` for token l: the shared map W plus a
  rank-``rank`` correction per position, which starts at zero (U_l does, as in LoRA), so
  the model starts as the shared one and learns how far each position departs from it.

  Args:
    module: the module that owns the parameters.
    x: (B, L, in).
    features: output features per token.
    axes: logical names (tokens, in, out).
    dtype: compute dtype; the result has it.
    token_proj: "per_token" (``PerTokenProjection``), "shared" (one Dense for every token
      plus a (L, features) bias) or "low_rank" (``TOKEN_PROJECTIONS``).
    name: the projection's name.
    zero_init: zero kernel (the output of an adaLN-Zero model); biases start at zero.
    rank: the rank of "low_rank"'s per-token corrections.
  """
  _check_token_proj(token_proj, rank)
  if token_proj == "per_token":
    return PerTokenProjection(features, axes, zero_init=zero_init, dtype=dtype, name=name)(x)
  y = dense(features, axes[1:], dtype=dtype, zero_init=zero_init, use_bias=False,
            name=name)(x)
  num_tokens, in_features = x.shape[-2], x.shape[-1]
  if token_proj == "low_rank":
    down = module.param("token_down", partitioned(
        nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=2,
                                         out_axis=1, batch_axis=(0,)),
        (axes[0], None, axes[1])), (num_tokens, rank, in_features), jnp.float32)
    up = module.param("token_up", partitioned(nn.initializers.zeros_init(),
                                              (axes[0], axes[2], None)),
                      (num_tokens, features, rank), jnp.float32)
    # Per-token products in float32, as ``PerTokenProjection``'s (its docstring says why).
    z = einsum("lbi,lri->lbr", jnp.swapaxes(x, 0, 1), down, jnp.float32)
    y = y + jnp.swapaxes(einsum("lbr,lor->lbo", z, up, jnp.float32), 0, 1).astype(dtype)
  bias = module.param("token_bias", partitioned(nn.initializers.zeros_init(),
                                                (axes[0], axes[2])),
                      (num_tokens, features), jnp.float32)
  return add_bias(y, bias, dtype)


def check_token_ids(name: str, ids: Any, num_tokens: int, size: int) -> None:
  """Validates static token metadata; value checks only when ``ids`` is concrete.

  Args:
    name: argument name for the error message.
    ids: (L,) integer ids.
    num_tokens: expected L.
    size: ids must lie in [0, size).

  Raises:
    ValueError: wrong shape, dtype or range.
  """
  shape = tuple(jnp.shape(ids))
  if shape != (num_tokens,):
    raise ValueError(f"{name} must have shape ({num_tokens},) to match the tokens, "
                     f"got {shape}")
  if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
    raise ValueError(f"{name} must be integer, got {jnp.result_type(ids)}")
  if isinstance(ids, jax.core.Tracer):
    return
  # numpy, not jnp: under an outer jit, jnp ops on a concrete constant still trace.
  ids_np = np.asarray(ids)
  lo, hi = int(ids_np.min()), int(ids_np.max())
  if lo < 0 or hi >= size:
    raise ValueError(f"{name} must lie in [0, {size}), got range [{lo}, {hi}]")


def param_count(params: Any) -> int:
  """Number of scalars in a params tree (``nn.Partitioned`` boxes are unboxed first).

  Args:
    params: a params pytree, boxed or not (e.g. ``variables["params"]``).

  Returns:
    Total element count.
  """
  leaves = jax.tree_util.tree_leaves(unbox(params))
  return int(sum(int(jnp.size(x)) for x in leaves))
