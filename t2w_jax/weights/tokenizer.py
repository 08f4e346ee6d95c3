"""Hierarchical block tokenizer: a flat (D,) weight vector <-> (L, block) weight tokens.

The DiT sees a network as a sequence of tokens, each a block of ``block_size`` consecutive
values of one layer (docs/design.md, "Invariants": round trips). Blocks never cross a layer boundary, so
every token has one layer id and one block index within that layer, and both become token
embeddings. The last block of a layer is zero-padded; ``mask`` marks the real positions.

All index arithmetic is done once, in numpy, when the tokenizer is built. ``tokenize`` and
``detokenize`` are then a single ``jnp.take`` each (no Python loop over tokens), so they are
cheap under ``jit``, keep any leading batch axes and are differentiable.

A "layer" is either one parameter (``group="param"``: a conv's kernel and bias are two
layers, each with its own scale) or one module (``group="module"``: all parameters sharing
the prefix before the last "/" form one layer, concatenated in layout order).
"""
import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from t2w_jax.weights.layout import ParamLayout

_GROUPS = ("param", "module")


@dataclasses.dataclass(frozen=True)
class BlockTokenizer:
  """Cuts a flat weight vector into per-layer blocks of ``block_size`` values.

  Equality and hashing use only ``(layout, block_size, group)``, so a tokenizer can be a
  static argument of ``jax.jit`` or a closure constant; the index maps are derived from them.

  Attributes:
    layout: the parameter layout of the flat vector (length ``layout.total`` = D).
    block_size: values per token.
    group: "param" (one layer per parameter) or "module" (one layer per module prefix).
    num_tokens: L, the number of tokens.
    num_layers: number of layers (some may have zero tokens if a parameter is empty).
    layer_names: name of each layer: the parameter path, or the module prefix.
    layer_paths: for each layer, the parameter paths it holds, in layout order.
    layer_sizes: number of real values in each layer.
    tokens_per_layer: ``ceil(layer_size / block_size)`` for each layer.
    mask: (L, block_size) bool, True at real values and False at padding.
    layer_ids: (L,) int32, layer index of each token.
    block_ids: (L,) int32, index of each token's block within its layer.
    flat_layer_ids: (D,) int32, layer index of each position of the flat vector.
  """
  layout: ParamLayout
  block_size: int
  group: str = "param"

  # Derived in __post_init__; excluded from eq/hash/repr.
  num_tokens: int = dataclasses.field(init=False, compare=False, repr=False)
  num_layers: int = dataclasses.field(init=False, compare=False, repr=False)
  layer_names: tuple[str, ...] = dataclasses.field(init=False, compare=False, repr=False)
  layer_paths: tuple[tuple[str, ...], ...] = dataclasses.field(
      init=False, compare=False, repr=False)
  layer_sizes: tuple[int, ...] = dataclasses.field(init=False, compare=False, repr=False)
  tokens_per_layer: tuple[int, ...] = dataclasses.field(init=False, compare=False, repr=False)
  mask: np.ndarray = dataclasses.field(init=False, compare=False, repr=False)
  layer_ids: np.ndarray = dataclasses.field(init=False, compare=False, repr=False)
  block_ids: np.ndarray = dataclasses.field(init=False, compare=False, repr=False)
  flat_layer_ids: np.ndarray = dataclasses.field(init=False, compare=False, repr=False)
  _gather: np.ndarray = dataclasses.field(init=False, compare=False, repr=False)
  _inverse: np.ndarray = dataclasses.field(init=False, compare=False, repr=False)

  def __post_init__(self):
    if not isinstance(self.layout, ParamLayout):
      raise TypeError(f"layout must be a ParamLayout, got {type(self.layout).__name__}")
    if (isinstance(self.block_size, bool) or not isinstance(self.block_size, (int, np.integer))
        or self.block_size < 1):
      raise ValueError(f"block_size must be a positive int, got {self.block_size!r}")
    object.__setattr__(self, "block_size", int(self.block_size))
    if self.group not in _GROUPS:
      raise ValueError(f"group must be one of {_GROUPS}, got {self.group!r}")
    if self.layout.total == 0:
      raise ValueError("layout has no parameters (D == 0); nothing to tokenize")

    names, members = _group_layers(self.layout, self.group)
    total, bs = self.layout.total, self.block_size
    offsets, sizes = self.layout.offsets, self.layout.sizes

    gather_rows, layer_ids, block_ids, layer_sizes, per_layer = [], [], [], [], []
    flat_layer_ids = np.empty(total, np.int64)
    for lid, idxs in enumerate(members):
      positions = np.concatenate(
          [np.arange(offsets[i], offsets[i] + sizes[i], dtype=np.int64) for i in idxs])
      flat_layer_ids[positions] = lid
      n = positions.size
      nb = -(-n // bs)
      # Pad positions point one past the end; tokenize's take(mode="fill") yields 0 there.
      padded = np.full(nb * bs, total, np.int64)
      padded[:n] = positions
      gather_rows.append(padded.reshape(nb, bs))
      layer_ids.append(np.full(nb, lid, np.int64))
      block_ids.append(np.arange(nb, dtype=np.int64))
      layer_sizes.append(n)
      per_layer.append(nb)

    gather = np.concatenate(gather_rows, axis=0)
    num_tokens = gather.shape[0]
    if num_tokens * bs >= np.iinfo(np.int32).max:
      raise ValueError(f"{num_tokens} tokens of {bs} values overflow int32 gather indices")
    mask = gather < total
    # Inverse map: flat position d -> its index in the (L * block_size,) token buffer.
    inverse = np.empty(total, np.int64)
    inverse[gather[mask]] = np.flatnonzero(mask.ravel())

    def frozen(a, dtype):
      a = np.ascontiguousarray(a, dtype=dtype)
      a.flags.writeable = False
      return a

    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("num_tokens", int(num_tokens))
    set_("num_layers", len(names))
    set_("layer_names", tuple(names))
    set_("layer_paths", tuple(tuple(self.layout.paths[i] for i in m) for m in members))
    set_("layer_sizes", tuple(int(s) for s in layer_sizes))
    set_("tokens_per_layer", tuple(int(s) for s in per_layer))
    set_("mask", frozen(mask, bool))
    set_("layer_ids", frozen(np.concatenate(layer_ids), np.int32))
    set_("block_ids", frozen(np.concatenate(block_ids), np.int32))
    set_("flat_layer_ids", frozen(flat_layer_ids, np.int32))
    set_("_gather", frozen(gather, np.int32))
    set_("_inverse", frozen(inverse, np.int32))

  @property
  def total(self) -> int:
    """D, the length of the flat vector."""
    return self.layout.total

  @property
  def token_shape(self) -> tuple[int, int]:
    """(L, block_size)."""
    return (self.num_tokens, self.block_size)

  def tokenize(self, flat) -> jax.Array:
    """Flat weights -> tokens; pad positions are exactly 0.

    Args:
      flat: (..., D) array; leading axes are batch axes.

    Returns:
      (..., L, block_size) array of the same dtype.
    """
    flat = jnp.asarray(flat)
    if flat.ndim < 1 or flat.shape[-1] != self.total:
      raise ValueError(f"tokenize expects (..., {self.total}) for layout "
                       f"{self.layout.fingerprint()}, got shape {tuple(flat.shape)}")
    return jnp.take(flat, self._gather, axis=-1, mode="fill", fill_value=0)

  def detokenize(self, tokens) -> jax.Array:
    """Tokens -> flat weights; values at pad positions are ignored.

    Args:
      tokens: (..., L, block_size) array; leading axes are batch axes.

    Returns:
      (..., D) array of the same dtype.
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim < 2 or tuple(tokens.shape[-2:]) != self.token_shape:
      raise ValueError(f"detokenize expects (..., {self.num_tokens}, {self.block_size}), "
                       f"got shape {tuple(tokens.shape)}")
    buf = tokens.reshape(tokens.shape[:-2] + (self.num_tokens * self.block_size,))
    return jnp.take(buf, self._inverse, axis=-1, mode="clip", unique_indices=True)

  def tokens_of_layer(self, name: str) -> slice:
    """Token range of one layer: ``tokens[..., tokenizer.tokens_of_layer(name), :]``."""
    try:
      lid = self.layer_names.index(name)
    except ValueError:
      raise KeyError(f"no layer {name!r}; layers are {list(self.layer_names)}") from None
    start = int(sum(self.tokens_per_layer[:lid]))
    return slice(start, start + self.tokens_per_layer[lid])

  def to_json(self) -> dict:
    """JSON-ready dict that ``from_json`` turns back into an equal tokenizer."""
    return {"layout": self.layout.to_json(), "block_size": self.block_size,
            "group": self.group, "num_tokens": self.num_tokens}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "BlockTokenizer":
    """Inverse of ``to_json``; checks the stored token count if present."""
    for key in ("layout", "block_size"):
      if key not in d:
        raise KeyError(f"tokenizer json lacks {key!r}; has {sorted(d)}")
    tok = cls(ParamLayout.from_json(d["layout"]), int(d["block_size"]), d.get("group", "param"))
    fp = d["layout"].get("fingerprint") if isinstance(d["layout"], Mapping) else None
    if fp is not None and fp != tok.layout.fingerprint():
      raise ValueError(f"tokenizer json layout fingerprint {fp} does not match its paths/shapes "
                       f"({tok.layout.fingerprint()})")
    if "num_tokens" in d and int(d["num_tokens"]) != tok.num_tokens:
      raise ValueError(f"tokenizer json says {d['num_tokens']} tokens, rebuilt one has "
                       f"{tok.num_tokens}")
    return tok


def _group_layers(layout: ParamLayout, group: str):
  """Layer names and, per layer, the indices of its parameters in layout order."""
  if group == "param":
    return list(layout.paths), [[i] for i in range(len(layout.paths))]
  names: list[str] = []
  members: dict[str, list[int]] = {}
  for i, path in enumerate(layout.paths):
    prefix = path.rsplit("/", 1)[0] if "/" in path else path
    if prefix not in members:
      names.append(prefix)
      members[prefix] = []
    members[prefix].append(i)
  return names, [members[n] for n in names]
