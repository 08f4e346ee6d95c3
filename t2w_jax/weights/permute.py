"""Hidden-unit permutation symmetries of the subtask CNN (weight-space augmentation).

The SubtaskCNN is a chain ``conv_0 -> relu -> conv_1 -> ... -> conv_{n-1} -> relu ->
global mean pool -> head``. ReLU acts per channel and the pool averages each channel on its
own, so reordering the output channels of conv i (kernel last axis and bias), together with
the matching input axis of the next layer (conv i+1's kernel axis 2, or the head kernel's
rows after the last conv), gives a different weight vector for exactly the same function.
The DiT trainer draws such permutations to augment corpus rows (docs/design.md, "Adversarial
loss and permutation augmentation").

Everything here is pure ``jnp`` on static shapes: use it inside ``jit``, and ``vmap`` it over
a batch of params (or flat rows) with a batch of rngs. The chain is read from the parameter
names and shapes (``conv_{i}/{kernel,bias}``, ``head/{kernel,bias}``), not hard-coded.
"""
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from t2w_jax.weights.layout import ParamLayout

_CONV = re.compile(r"^conv_(\d+)$")


def cnn_chain(layout_or_params) -> tuple[int, ...]:
  """Hidden widths of a SubtaskCNN layout, checked for a consistent conv chain.

  Args:
    layout_or_params: a ``ParamLayout`` or the (unbatched) params dict of a SubtaskCNN.

  Returns:
    Output channels of conv_0 .. conv_{n-1}; each is one permutable hidden layer.

  Raises:
    ValueError: if the parameters are not exactly ``conv_{0..n-1}/{kernel,bias}`` and
      ``head/{kernel,bias}`` with chained shapes.
  """
  layout = (layout_or_params if isinstance(layout_or_params, ParamLayout)
            else ParamLayout.from_params(layout_or_params))
  shapes = dict(zip(layout.paths, layout.shapes))

  def fail(why):
    raise ValueError(f"layout does not look like a SubtaskCNN ({why}): {layout.describe()}. "
                     "Expected conv_{0..n-1}/{kernel (kh,kw,Cin,Cout), bias (Cout,)} and "
                     "head/{kernel (C_last, d), bias (d,)} of one unbatched net "
                     "(vmap over batches, and pass the inner 'params' dict).")

  modules: dict[str, set] = {}
  for path in layout.paths:
    parts = path.split("/")
    if len(parts) != 2:
      fail(f"parameter {path!r} is not module/name")
    modules.setdefault(parts[0], set()).add(parts[1])
  convs = sorted((int(m.group(1)), name) for name in modules
                 if (m := _CONV.match(name)))
  extra = set(modules) - {n for _, n in convs} - {"head"}
  if extra:
    fail(f"unexpected modules {sorted(extra)}")
  if "head" not in modules:
    fail("no head")
  if not convs:
    fail("no conv layers")
  if [i for i, _ in convs] != list(range(len(convs))):
    fail(f"conv indices {[i for i, _ in convs]} are not 0..{len(convs) - 1}")
  for name in modules:
    if modules[name] != {"kernel", "bias"}:
      fail(f"module {name!r} has {sorted(modules[name])}, wants kernel and bias")

  widths = []
  prev = None
  for _, name in convs:
    k, b = shapes[f"{name}/kernel"], shapes[f"{name}/bias"]
    if len(k) != 4 or b != (k[3],):
      fail(f"{name} kernel {k} / bias {b} are not (kh,kw,Cin,Cout) / (Cout,)")
    if prev is not None and k[2] != prev:
      fail(f"{name} takes {k[2]} input channels but the previous conv gives {prev}")
    prev = k[3]
    widths.append(k[3])
  hk, hb = shapes["head/kernel"], shapes["head/bias"]
  if len(hk) != 2 or hb != (hk[1],) or hk[0] != prev:
    fail(f"head kernel {hk} / bias {hb} do not take {prev} pooled channels")
  return tuple(widths)


def permute_params(params: Mapping[str, Any], perms: Sequence[Any]) -> dict:
  """Applies explicit hidden-unit permutations to SubtaskCNN params.

  Args:
    params: the inner params dict (``conv_{i}``, ``head``) of one net.
    perms: one int array per conv layer; ``perms[i]`` has shape (widths[i],) and must be a
      permutation of ``arange(widths[i])`` (not checked, it may be traced). New channel j of
      conv i is old channel ``perms[i][j]``.

  Returns:
    A new params dict of the same structure computing the same function.
  """
  widths = cnn_chain(params)
  if len(perms) != len(widths):
    raise ValueError(f"need {len(widths)} permutations (one per conv layer), got {len(perms)}")
  perms = [jnp.asarray(p) for p in perms]
  for i, (p, w) in enumerate(zip(perms, widths)):
    if p.shape != (w,) or not jnp.issubdtype(p.dtype, jnp.integer):
      raise ValueError(f"perms[{i}] must be an int array of shape ({w},), "
                       f"got {p.dtype} {p.shape}")

  out = {name: dict(sub) for name, sub in params.items()}
  for i, p in enumerate(perms):
    conv = out[f"conv_{i}"]
    conv["kernel"] = jnp.take(conv["kernel"], p, axis=3)
    conv["bias"] = jnp.take(conv["bias"], p, axis=0)
    if i + 1 < len(perms):
      nxt = out[f"conv_{i + 1}"]
      nxt["kernel"] = jnp.take(nxt["kernel"], p, axis=2)
    else:
      out["head"]["kernel"] = jnp.take(out["head"]["kernel"], p, axis=0)
  return out


def sample_perms(rng: jax.Array, layout_or_params) -> list[jax.Array]:
  """Draws one uniformly random permutation per hidden (conv) layer.

  Args:
    rng: a PRNG key.
    layout_or_params: a ``ParamLayout`` or one net's params dict.

  Returns:
    List of int32 arrays, ``perms[i]`` of shape (widths[i],).
  """
  widths = cnn_chain(layout_or_params)
  keys = jax.random.split(rng, len(widths))
  return [jax.random.permutation(k, w) for k, w in zip(keys, widths)]


def random_permutation(rng: jax.Array, params: Mapping[str, Any]) -> dict:
  """Params of one net with a random hidden-unit permutation applied (same function).

  For a batch, ``jax.vmap(random_permutation)(rngs, batched_params)``.

  Args:
    rng: a PRNG key.
    params: the inner params dict of one SubtaskCNN.

  Returns:
    Permuted params dict.
  """
  return permute_params(params, sample_perms(rng, params))


def permute_flat(rng: jax.Array, flat, layout: ParamLayout) -> jax.Array:
  """Random hidden-unit permutation of flat weight vectors (unflatten, permute, flatten).

  Args:
    rng: a PRNG key.
    flat: (D,) vector, or (..., D) rows; each row gets its own permutation (the key is
      split over rows).
    layout: the SubtaskCNN layout of the rows.

  Returns:
    Array of the same shape and dtype.
  """
  cnn_chain(layout)  # fail early with a clear message
  flat = jnp.asarray(flat)
  if flat.ndim < 1 or flat.shape[-1] != layout.total:
    raise ValueError(f"permute_flat expects (..., {layout.total}), got shape {tuple(flat.shape)}")
  if flat.ndim > 1:
    batch = flat.shape[:-1]
    rows = flat.reshape((-1, layout.total))
    keys = jax.random.split(rng, rows.shape[0])
    out = jax.vmap(lambda k, r: permute_flat(k, r, layout))(keys, rows)
    return out.reshape(batch + (layout.total,))
  return layout.flatten(random_permutation(rng, layout.unflatten(flat)))
