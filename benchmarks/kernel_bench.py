"""Each speed change of the DiT against the code it replaced, in one run.

``python launch/bench.py kernels`` times, at the PyTorch T2W's CIFAR size (width 1024,
8 heads, 34 tokens, batch 32; forward and backward, jitted, unless said otherwise), pairs
of implementations of the same computation, a baseline and a candidate, alternating them
call by call so that both see the same machine:

* **MLP**: the two products as ``einsum("...i,io->...o")`` on (B, L, D) activations with
  (in, out) kernels (the code before ``layers.project``) against ``layers.project`` (one
  2-D product; (out, in) kernels);
* **attention projections**: Q, K, V as ``einsum("bld,dhk->blhk")`` and the output as
  ``einsum("bqhd,hdo->bqo")`` against ``layers.project``;
* **attention core, layout**, **train step, attention layout** and **denoising call,
  batch 1, attention layout**: attention's two products on (B, L, H, Dh) operands as they
  come (the code before) against ``layers.attend``, which moves the heads first;
* **attention core**: ``layers.attend`` (ours, kept) against
  ``jax.nn.dot_product_attention`` (self-attention and masked, biased cross-attention to 33
  keys);
* **self-attention Q, K, V, batch 1** (forward, every block): three products on three
  kernels (ours, kept) against one product on the three kernels stacked;
* **MLP biases**: the MLP's two products (``layers.project``) with their biases added as
  ``y + bias.astype(dtype)`` against ``layers.add_bias`` (in a lower precision the bias
  gradient as a product with a ones row; in float32 the two are the same code);
* **train step, biases** (lower precision only: in float32 both sides are the same code):
  the whole default DiT train step at that size compiled twice, with every bias added as
  ``y + bias.astype(dtype)`` and with ``layers.add_bias``, each donated as in training;
* **train step, Q, K, V and GELU input** and **denoising call, batch 1, Q, K, V and GELU
  input** (lower precision only): the whole default DiT with every projection returning
  the compute dtype against attention's Q, K and V and the MLP's first product returning
  their float32 accumulators (``layers.project``'s ``out_dtype``), which are computed on
  in float32 next;
* **train step, kernels** and **denoising call, batch 1, kernels** (one forward): the
  whole default DiT with its projection kernels stored and multiplied (in, out) (the code
  before ``layers.projection_kernel``) against (out, in);
* **train step, token projections** and **denoising call, batch 1, token projections**
  (when the size's default is not a map per token position): the whole DiT with a map
  per token position (the default at that size before) against its default token
  projection (the low-rank one);
* **per-token projection**, **train step, per-token products** and **denoising call,
  batch 1, per-token products** (lower precision only; the DiT with a map per token
  position): ``layers.PerTokenProjection``'s products in the compute dtype (the code
  before) against float32;
* **train step, conditioning path** and **denoising call, batch 1, conditioning path**
  (lower precision only): the whole default DiT with its conditioning path
  (``models.dit.CONDITIONING_MODULES``: the timestep and text embeddings and the adaLN
  modulations, one row per example) in the compute dtype, as before, against float32, the
  sampling params made by ``generator.inference_params`` either way;
* **optimiser update**: ``optax.chain(clip_by_global_norm, adamw)`` against
  ``train.adamw.clipped_adamw`` on the default DiT's parameter tree at that size, donated.

Each row reports both medians and the baseline / candidate ratio (above 1: the candidate
is faster). Every candidate but the attention core's and the fused Q, K, V's is the code
now in use (ours stays in those two).
"""
import contextlib
import dataclasses
import math
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.linen import initializers as flax_init

from benchmarks import dit_bench, harness
from t2w_jax.models import dit as dit_lib
from t2w_jax.models import layers
from t2w_jax.train import state as state_lib


def _interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
  """Seconds of each call, the functions taking turns; one warm-up call each first."""
  for fn in fns.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return times


def _grad_call(f, *args):
  g = jax.jit(jax.grad(f, argnums=tuple(range(len(args)))))
  return lambda: g(*args)


def _mlp_operands(size, rng):
  """(x, w1, w2, b1, b2): the MLP's input, kernels and biases at ``size``."""
  b, l, d = size.batch_size, size.num_tokens, size.width
  hidden = int(size.mlp_ratio * d)
  x = jnp.asarray(rng.standard_normal((b, l, d), np.float32))
  w1 = jnp.asarray(rng.standard_normal((d, hidden), np.float32) * 0.02)
  w2 = jnp.asarray(rng.standard_normal((hidden, d), np.float32) * 0.02)
  b1, b2 = (jnp.asarray(rng.standard_normal((n,), np.float32) * 0.02) for n in (hidden, d))
  return x, w1, w2, b1, b2


def mlp_pair(size, rng, dtype=jnp.float32):
  """(old, new) MLP forward + backward, products in ``dtype``."""
  x, w1, w2, _, _ = _mlp_operands(size, rng)

  def old(w1, w2, x):
    h = jax.nn.gelu(layers.einsum("...i,io->...o", x, w1, dtype))
    return jnp.sum(layers.einsum("...i,io->...o", h, w2, dtype).astype(jnp.float32) ** 2)

  def new(w1, w2, x):
    h = jax.nn.gelu(layers.project(x, w1, 1, dtype))
    return jnp.sum(layers.project(h, w2, 1, dtype).astype(jnp.float32) ** 2)

  return _grad_call(old, w1, w2, x), _grad_call(new, *out_in((w1, 1), (w2, 1)), x)


def projection_pair(size, rng, dtype=jnp.float32):
  """(old, new) Q, K, V and output projections, forward + backward, in ``dtype``."""
  b, l, d, h = size.batch_size, size.num_tokens, size.width, size.num_heads
  x = jnp.asarray(rng.standard_normal((b, l, d), np.float32))
  qkv = [jnp.asarray(rng.standard_normal((d, h, d // h), np.float32) * 0.02) for _ in range(3)]
  wo = jnp.asarray(rng.standard_normal((h, d // h, d), np.float32) * 0.02)

  def old(wq, wk, wv, wo, x):
    q, k, v = (layers.einsum("bld,dhk->blhk", x, w, dtype) for w in (wq, wk, wv))
    out = layers.einsum("bqhd,hdo->bqo", q * k * v, wo, dtype)
    return jnp.sum(out.astype(jnp.float32) ** 2)

  def new(wq, wk, wv, wo, x):
    q, k, v = (layers.project(x, w, 1, dtype) for w in (wq, wk, wv))
    return jnp.sum(layers.project(q * k * v, wo, 2, dtype).astype(jnp.float32) ** 2)

  return (_grad_call(old, *qkv, wo, x),
          _grad_call(new, *out_in(*((w, 1) for w in qkv), (wo, 2)), x))


def fused_qkv_pair(size, rng, dtype=jnp.float32):
  """(ours, fused) self-attention Q, K and V of every block in a batch-1 forward (one row
  per token): three products on three (heads, kv, width) kernels, as ``layers.Attention``,
  against one product on a (3, heads, kv, width) kernel split after; in ``dtype``. Each
  block's input depends on the previous block's queries, as in the model."""
  l, d, h = size.num_tokens, size.width, size.num_heads
  x = jnp.asarray(rng.standard_normal((1, l, d), np.float32))
  kernels = [[jnp.asarray(rng.standard_normal((h, d // h, d), np.float32) * 0.02)
              for _ in range(3)] for _ in range(size.depth)]
  fused = [jnp.stack(block) for block in kernels]

  def chain(qkv):
    def f(blocks, x):
      total = jnp.zeros((), jnp.float32)
      for block in blocks:
        q, k, v = qkv(x, block)
        total += jnp.sum(k.astype(jnp.float32)) + jnp.sum(v.astype(jnp.float32))
        x = x + 1e-3 * q.reshape(x.shape).astype(x.dtype)
      return total
    return f

  ours = chain(lambda x, block: [layers.project(x, w, 1, dtype) for w in block])
  one_product = chain(lambda x, w: jnp.moveaxis(layers.project(x, w, 1, dtype), 2, 0))
  old, new = jax.jit(ours), jax.jit(one_product)
  return (lambda: old(kernels, x)), (lambda: new(fused, x))


def bias_pair(size, rng, dtype=jnp.float32):
  """(old, new) MLP with biases, forward + backward, in ``dtype``: the biases' gradients."""
  x, w1, w2, b1, b2 = _mlp_operands(size, rng)

  def mlp(add):
    def f(w1, b1, w2, b2, x):
      h = jax.nn.gelu(add(layers.project(x, w1, 1, dtype), b1))
      return jnp.sum(add(layers.project(h, w2, 1, dtype), b2).astype(jnp.float32) ** 2)
    return f

  old = mlp(lambda y, bias: y + bias.astype(dtype))
  new = mlp(lambda y, bias: layers.add_bias(y, bias, dtype))
  w1, w2 = out_in((w1, 1), (w2, 1))
  return _grad_call(old, w1, b1, w2, b2, x), _grad_call(new, w1, b1, w2, b2, x)


def out_in(*kernels):
  """(*in, *out) kernels, each given with its number of input dimensions, as
  ``layers.projection_kernel`` stores them: (*out, *in)."""
  return tuple(jnp.moveaxis(w, tuple(range(n)), tuple(range(w.ndim - n, w.ndim)))
               for w, n in kernels)


@contextlib.contextmanager
def _patched(**functions):
  """Within it, ``layers.NAME`` is the given function for each NAME; a model built inside
  keeps what it traced."""
  real = {name: getattr(layers, name) for name in functions}
  for name, fn in functions.items():
    setattr(layers, name, fn)
  try:
    yield
  finally:
    for name, fn in real.items():
      setattr(layers, name, fn)


def _plain_bias_sum():
  """Models add biases as ``y + bias.astype(dtype)`` (the code before ``layers.add_bias``)."""
  return _patched(add_bias=lambda y, bias, dtype: y + bias.astype(dtype))


def _kernel_in_out(module, name, in_shape, out_shape, in_axes, out_axes, *, zero_init=False):
  """``layers.projection_kernel`` as it was: the kernel stored (*in, *out), as ``nn.Dense``."""
  n_in, n_out = len(in_shape), len(out_shape)
  init = (flax_init.zeros_init() if zero_init else flax_init.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=tuple(range(n_in)),
      out_axis=tuple(range(n_in, n_in + n_out))))
  return module.param(name, layers.partitioned(init, (*in_axes, *out_axes)),
                      (*in_shape, *out_shape), jnp.float32)


def _project_in_out(x, kernel, num_in, dtype, out_dtype=None):
  """``layers.project`` as it was, on (*in, *out) kernels: its result in the compute
  dtype whatever ``out_dtype`` asks."""
  del out_dtype
  in_shape, out_shape = kernel.shape[:num_in], kernel.shape[num_in:]
  if jnp.dtype(dtype) != jnp.float32:
    ins, outs = "ijklm"[:num_in], "opqrs"[:len(out_shape)]
    return layers.einsum(f"...{ins},{ins}{outs}->...{outs}", x, kernel, dtype)
  lead = x.shape[:x.ndim - num_in]
  n_in, n_out = math.prod(in_shape), math.prod(out_shape)
  y = layers.einsum("ni,io->no", x.reshape(-1, n_in), kernel.reshape(n_in, n_out), dtype)
  return y.reshape(*lead, *out_shape)


_PROJECT = layers.project


def _compute_dtype_results():
  """Every projection returns the compute dtype, whatever its caller asks (the code before
  the float32 results for attention's Q, K, V and the MLP's GELU)."""
  return _patched(project=lambda x, kernel, num_in, dtype, out_dtype=None: _PROJECT(
      x, kernel, num_in, dtype))


def _kernels_in_out():
  """Models store and multiply their projection kernels (*in, *out) (the code before
  ``layers.projection_kernel``)."""
  return _patched(projection_kernel=_kernel_in_out, project=_project_in_out)


class _PerTokenInDtype(layers.PerTokenProjection):
  """``layers.PerTokenProjection`` as it was: its products in the compute dtype."""

  @nn.compact
  def __call__(self, x):
    num_tokens, in_features = x.shape[-2], x.shape[-1]
    kernel = self.param("kernel", layers.partitioned(flax_init.zeros_init(), self.axes),
                        (num_tokens, in_features, self.features), jnp.float32)
    bias = self.param("bias", layers.partitioned(flax_init.zeros_init(),
                                                 (self.axes[0], self.axes[2])),
                      (num_tokens, self.features), jnp.float32)
    y = layers.einsum("lbi,lio->lbo", jnp.swapaxes(x, 0, 1), kernel, self.dtype)
    return layers.add_bias(jnp.swapaxes(y, 0, 1), bias, self.dtype)


def _per_token_in_dtype():
  """Models run their per-token projections in the compute dtype (the code before they ran
  in float32)."""
  return _patched(PerTokenProjection=_PerTokenInDtype)


@contextlib.contextmanager
def _conditioning_in_dtype():
  """Models run their conditioning path in the compute dtype (the code before it ran in
  float32) and sampling casts its kernels."""
  real = dit_lib.CONDITIONING_DTYPE
  dit_lib.CONDITIONING_DTYPE = None
  try:
    yield
  finally:
    dit_lib.CONDITIONING_DTYPE = real


def per_token_pair(size, rng, dtype):
  """(old, new) the per-token input projection, forward + backward: products in ``dtype``
  against float32."""
  x = jnp.asarray(rng.standard_normal((size.num_tokens, size.batch_size, size.block_size),
                                      np.float32))
  kernel = jnp.asarray(rng.standard_normal((size.num_tokens, size.block_size, size.width),
                                           np.float32) * 0.02)

  def loss(compute):
    def f(kernel, x):
      y = layers.einsum("lbi,lio->lbo", x, kernel, compute).astype(dtype)
      return jnp.sum(y.astype(jnp.float32) ** 2)
    return f

  return _grad_call(loss(dtype), kernel, x), _grad_call(loss(jnp.float32), kernel, x)


def step_pair(size, config, dtype, before=contextlib.nullcontext, old_size=None,
              after=contextlib.nullcontext):
  """(old, new) donated train steps of the default DiT: the old one built within the
  ``before`` context (the code replaced) and at ``old_size`` (default ``size``), the new
  one at ``size`` within ``after`` (by default the code as it is)."""

  def build(size):
    step_fn, params, opt_state, batch = dit_bench.train_inputs(size, config, dtype, 0)
    key = jax.random.PRNGKey(0)
    compiled = jax.jit(step_fn, donate_argnums=(0, 1)).lower(
        params, opt_state, batch, key).compile()
    state = [params, opt_state]

    def call():
      state[0], state[1], loss = compiled(state[0], state[1], batch, key)
      return loss
    return call

  with before():
    old = build(old_size or size)
  with after():
    return old, build(size)


def denoise_pair(size, dtype, before=contextlib.nullcontext, old_size=None,
                 after=contextlib.nullcontext):
  """(old, new) batch-1 denoising calls of the default DiT (one forward, as
  ``dit_bench.bench_denoise``): as ``step_pair``'s, the old one within ``before`` and at
  ``old_size``, the new one within ``after``."""

  def build(size):
    call, args = dit_bench.denoise_inputs(size, dtype, 0)
    compiled = jax.jit(call).lower(*args).compile()
    return lambda: compiled(*args)

  with before():
    old = build(old_size or size)
  with after():
    return old, build(size)


def _attend_token_major(q, k, v, bias=None, mask=None):
  """``layers.attend`` as it was: both products on (B, L, H, Dh) operands as they come, the
  heads between tokens and features."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask, logits, layers._MASK_VALUE)  # noqa: SLF001
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)


def _attention_token_major():
  """Models attend with both products on (B, L, H, Dh) operands (the code before
  ``layers.attend`` moved the heads first)."""
  return _patched(attend=_attend_token_major)


def _attention_operands(size, rng):
  b, l, h, k = size.batch_size, size.num_tokens, size.num_heads, size.max_classes + 1
  dh = size.width // h
  q, kk, v = (jnp.asarray(rng.standard_normal((b, l, h, dh), np.float32)) for _ in range(3))
  kc, vc = (jnp.asarray(rng.standard_normal((b, k, h, dh), np.float32)) for _ in range(2))
  bias = jnp.asarray(rng.standard_normal((b, 1, 1, k), np.float32))
  mask = jnp.asarray(rng.random((b, 1, 1, k)) > 0.3)
  return (q, kk, v, kc, vc), bias, mask


def _attention_loss(attend, bias, mask):
  """Self-attention and masked, biased cross-attention to the class tokens, as a loss."""
  def loss(q, kk, v, kc, vc):
    return jnp.sum(attend(q, kk, v) * attend(q, kc, vc, bias, mask))
  return loss


def attention_pair(size, rng):
  """(ours, jax.nn.dot_product_attention): self- and cross-attention, forward + backward."""
  args, bias, mask = _attention_operands(size, rng)

  def fused(q, k, v, bias=None, mask=None):
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)

  return (_grad_call(_attention_loss(layers.attend, bias, mask), *args),
          _grad_call(_attention_loss(fused, bias, mask), *args))


def attention_layout_pair(size, rng):
  """(token-major, heads first): ``layers.attend``'s layouts, forward + backward."""
  args, bias, mask = _attention_operands(size, rng)
  return (_grad_call(_attention_loss(_attend_token_major, bias, mask), *args),
          _grad_call(_attention_loss(layers.attend, bias, mask), *args))


def optimiser_pair(size, config):
  """(optax chain, clipped_adamw): one donated update of the DiT's parameters."""
  dit = dit_bench.build_dit(size, "float32")
  params = dit_bench.init_dit_params(dit, size, 0)
  grads = jax.tree.map(lambda p: 0.5 * p + 1e-3, params)
  # The chain that training used before clipped_adamw, on the same schedule and settings.
  chain = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                      optax.adamw(state_lib.learning_rate_schedule(config),
                                  **state_lib.ADAMW_BETAS, weight_decay=config.weight_decay))
  fused = state_lib.build_optimizers(config)[0]
  calls = []
  for tx in (chain, fused):
    def update(p, s, tx=tx):
      u, s = tx.update(grads, s, p)
      return optax.apply_updates(p, u), s
    step = jax.jit(update, donate_argnums=(0, 1))
    state = [jax.tree.map(jnp.copy, params), None]
    state[1] = tx.init(state[0])

    def call(step=step, state=state):
      state[0], state[1] = step(state[0], state[1])
      return state[0]
    calls.append(call)
  return calls[0], calls[1], sum(x.size for x in jax.tree.leaves(params))


def run(config, *, quick: bool = False, repeats: int | None = None, seed: int = 0,
        dtype: str = "float32") -> dict:
  """Times every pair; see the module docstring.

  Args:
    config: the DiT config (its optimiser settings drive the update pair).
    quick: tiny sizes, one repeat (smoke test).
    dtype: the products' compute dtype in the MLP and projection pairs (attention's core
      is float32 either way, as in the model).
    repeats: timed calls of each implementation (median reported).
    seed: data seed.

  Returns:
    dict with the machine, commit, date, size and one row per pair.
  """
  size = dit_bench.QUICK_SIZE if quick else dit_bench.CIFAR_SIZE
  repeats = repeats or (1 if quick else 7)
  rng = np.random.default_rng(seed)
  compute = jnp.dtype(dtype)
  # Each pair is built when its turn comes and dropped after (builders, not built pairs):
  # the whole-model pairs hold a model's parameters and optimiser state each, too many to
  # keep at once in a CPU's memory at this size.
  pairs = [("MLP", "einsum ...i,io->...o", "layers.project",
            lambda: mlp_pair(size, rng, compute)),
           ("attention projections", "einsum bld,dhk->blhk / bqhd,hdo->bqo",
            "layers.project", lambda: projection_pair(size, rng, compute)),
           ("attention core, layout", "(B, L, H, Dh) products", "heads first (layers.attend)",
            lambda: attention_layout_pair(size, rng)),
           ("attention core", "ours (layers.attend)",
            "jax.nn.dot_product_attention", lambda: attention_pair(size, rng)),
           ("self-attention Q, K, V, batch 1 (forward)", "three products (ours)",
            "one fused product", lambda: fused_qkv_pair(size, rng, compute)),
           ("MLP biases", "y + bias", "layers.add_bias", lambda: bias_pair(size, rng, compute))]
  if compute != jnp.float32:
    pairs += [("train step, biases", "y + bias", "layers.add_bias",
               lambda: step_pair(size, config, dtype, _plain_bias_sum)),
              ("train step, Q, K, V and GELU input", f"in {compute.name}", "in float32",
               lambda: step_pair(size, config, dtype, _compute_dtype_results)),
              ("denoising call, batch 1, Q, K, V and GELU input", f"in {compute.name}",
               "in float32", lambda: denoise_pair(size, dtype, _compute_dtype_results)),
              ("train step, conditioning path", f"in {compute.name}", "in float32",
               lambda: step_pair(size, config, dtype, _conditioning_in_dtype)),
              ("denoising call, batch 1, conditioning path", f"in {compute.name}",
               "in float32", lambda: denoise_pair(size, dtype, _conditioning_in_dtype))]
  pairs += [("train step, attention layout", "(B, L, H, Dh) products", "heads first",
             lambda: step_pair(size, config, dtype, _attention_token_major)),
            ("denoising call, batch 1, attention layout", "(B, L, H, Dh) products",
             "heads first", lambda: denoise_pair(size, dtype, _attention_token_major))]
  # Both sides' projections return the compute dtype, as they did then: the layout alone.
  pairs += [("train step, kernels", "(in, out)", "(out, in)",
             lambda: step_pair(size, config, dtype, _kernels_in_out,
                               after=_compute_dtype_results)),
            ("denoising call, batch 1, kernels", "(in, out)", "(out, in)",
             lambda: denoise_pair(size, dtype, _kernels_in_out,
                                  after=_compute_dtype_results))]
  # The DiT with a map per token position (the per-token pairs' subject).
  per_token = dataclasses.replace(size, token_proj="per_token")
  if size.token_proj != "per_token":
    low = f"{size.token_proj}, rank {size.token_proj_rank}"
    pairs += [("train step, token projections", "a map per token", low,
               lambda: step_pair(size, config, dtype, old_size=per_token)),
              ("denoising call, batch 1, token projections", "a map per token", low,
               lambda: denoise_pair(size, dtype, old_size=per_token))]
  if compute != jnp.float32:
    in_dtype = f"products in {compute.name}"
    pairs += [("per-token projection", in_dtype, "in float32",
               lambda: per_token_pair(size, rng, compute)),
              ("train step, per-token products", in_dtype, "in float32",
               lambda: step_pair(per_token, config, dtype, _per_token_in_dtype)),
              ("denoising call, batch 1, per-token products", in_dtype, "in float32",
               lambda: denoise_pair(per_token, dtype, _per_token_in_dtype))]
  n_params = []

  def optimiser():
    old, new, n = optimiser_pair(size, config)
    n_params.append(n)
    return old, new
  pairs.append(("optimiser update", "optax clip + adamw chain", "clipped_adamw", optimiser))
  rows = []
  for what, old_name, new_name, build in pairs:
    old, new = build()
    times = _interleaved({"old": old, "new": new}, repeats)
    del old, new
    o, n = harness.median(times["old"]), harness.median(times["new"])
    rows.append({"what": what, "old": old_name, "new": new_name, "old_seconds": times["old"],
                 "new_seconds": times["new"], "old_median": o, "new_median": n,
                 "old_over_new": o / n})
  return {"benchmark": "kernels", "date": harness.utc_now(), "machine": harness.machine_info(),
          "commit": harness.git_commit(harness.ROOT), "quick": quick, "dtype": dtype,
          "size": dataclasses.asdict(size), "optimised_params": n_params[0], "rows": rows}


def format_report(result: dict) -> str:
  """The printed table with the machine, commit and date."""
  s = result["size"]
  head = (f"DiT kernels, baseline against candidate, alternating calls ({result['date']}; "
          f"{harness.describe_machine(result['machine'])}; t2w_jax "
          f"{harness.describe_commit(result['commit'])}): width {s['width']}, "
          f"{s['num_heads']} heads, {s['num_tokens']} tokens, batch {s['batch_size']}, "
          f"forward + backward, products in {result.get('dtype', 'float32')}; the update on "
          f"{result['optimised_params'] / 1e6:.1f} M parameters")
  rows = [[r["what"], r["old"], f"{1e3 * r['old_median']:.1f}", r["new"],
           f"{1e3 * r['new_median']:.1f}", f"{r['old_over_new']:.2f}x"]
          for r in result["rows"]]
  return head + "\n" + harness.format_table(
      ["computation", "baseline", "baseline ms", "candidate", "candidate ms", "baseline / candidate"], rows)
