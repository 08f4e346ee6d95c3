"""Parameter layout: a params pytree <-> one flat float32 vector, and back, exactly.

The corpus stores each net as one row of an (N, D) matrix; the layout records which slice
of the row is which parameter (path, shape, offset), so that readers can refuse a corpus
written for another architecture by comparing fingerprints.
"""
import dataclasses
import hashlib
import json
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ParamLayout:
  """Ordered (path, shape) list of a parameter pytree of nested dicts.

  Attributes:
    paths: "conv_0/kernel"-style names, in flattening order.
    shapes: shape of each parameter.
  """
  paths: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]

  @classmethod
  def from_params(cls, params: Mapping[str, Any]) -> "ParamLayout":
    """Layout of a nested-dict params pytree (e.g. a Linen ``params`` collection)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = tuple("/".join(_key_name(k) for k in path) for path, _ in leaves)
    shapes = tuple(tuple(int(d) for d in np.shape(x)) for _, x in leaves)
    return cls(paths, shapes)

  @property
  def sizes(self) -> tuple[int, ...]:
    return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

  @property
  def offsets(self) -> tuple[int, ...]:
    return tuple(int(o) for o in np.concatenate([[0], np.cumsum(self.sizes)[:-1]]))

  @property
  def total(self) -> int:
    """D, the length of the flat vector."""
    return int(sum(self.sizes))

  def flatten(self, params: Mapping[str, Any]) -> jax.Array:
    """Params pytree -> (D,) vector; works under jit and vmap (batch with vmap)."""
    got = ParamLayout.from_params(params)
    if got != self:
      raise ValueError(f"params do not match the layout: got {got.describe()}, "
                       f"expected {self.describe()}")
    leaves = jax.tree_util.tree_leaves(params)
    return jnp.concatenate([jnp.ravel(x) for x in leaves])

  def unflatten(self, vec) -> dict:
    """(D,) or (..., D) vector -> nested-dict params; leading axes are kept as batch axes."""
    vec = jnp.asarray(vec)
    if vec.shape[-1] != self.total:
      raise ValueError(f"vector has {vec.shape[-1]} values, layout needs {self.total}")
    batch = vec.shape[:-1]
    out: dict = {}
    for path, shape, off, size in zip(self.paths, self.shapes, self.offsets, self.sizes):
      node = out
      *parents, leaf = path.split("/")
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = vec[..., off:off + size].reshape(batch + shape)
    return out

  def describe(self) -> str:
    return ", ".join(f"{p}{list(s)}" for p, s in zip(self.paths, self.shapes))

  def to_json(self) -> dict:
    return {"paths": list(self.paths), "shapes": [list(s) for s in self.shapes],
            "offsets": list(self.offsets), "total": self.total,
            "fingerprint": self.fingerprint()}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "ParamLayout":
    return cls(tuple(d["paths"]), tuple(tuple(s) for s in d["shapes"]))

  def fingerprint(self) -> str:
    """Short hash of paths and shapes: equal iff the layouts are equal."""
    blob = json.dumps([list(self.paths), [list(s) for s in self.shapes]]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]

  def layer_slices(self) -> Sequence[tuple[str, slice]]:
    """(path, slice into the flat vector) per parameter."""
    return [(p, slice(o, o + n)) for p, o, n in zip(self.paths, self.offsets, self.sizes)]


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)
