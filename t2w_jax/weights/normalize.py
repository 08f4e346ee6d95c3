"""Per-layer normalisation of weight tokens.

Layers of a trained net differ in scale by orders of magnitude (a first conv kernel, a
near-zero bias, a wide head), so a diffusion model fed raw weights spends its capacity on the
large layers and drowns the small ones in noise. ``LayerNorms`` holds one mean and one std per
tokenizer layer, fitted on the corpus, and maps tokens to roughly zero-mean, unit-variance
values and back. Pad positions stay exactly 0 both ways.

Fitting streams over row chunks of an (N, D) matrix, so a memory-mapped corpus never has to
fit in memory; chunk statistics are merged with Chan et al.'s parallel variance formula in
float64, which stays accurate when a layer's mean is large compared with its spread.
"""
import dataclasses
import logging
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from t2w_jax.weights.tokenizer import BlockTokenizer

DEFAULT_MIN_STD = 1e-8


def layer_stats(corpus, tokenizer: BlockTokenizer, chunk_rows: int = 1024):
  """Per-layer mean and (population) std of a corpus, streaming over row chunks.

  Args:
    corpus: (N, D) array-like (numpy array or ``np.memmap``); rows are flat weight vectors.
    tokenizer: defines the layers (``tokenizer.flat_layer_ids``).
    chunk_rows: rows read and converted to float64 at a time.

  Returns:
    (mean, std), each a float64 numpy array of shape (num_layers,). A layer with no values
    gets mean 0 and std 1.

  Raises:
    ValueError: on a corpus of the wrong shape, an empty corpus, or non-finite values.
  """
  shape = tuple(corpus.shape) if hasattr(corpus, "shape") else tuple(np.shape(corpus))
  if len(shape) != 2 or shape[1] != tokenizer.total:
    raise ValueError(f"corpus must be (N, {tokenizer.total}), got shape {shape}")
  if shape[0] == 0:
    raise ValueError("corpus has no rows; cannot fit normalisation statistics")
  if chunk_rows < 1:
    raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
  ids = np.asarray(tokenizer.flat_layer_ids)
  nl = tokenizer.num_layers
  layer_sizes = np.bincount(ids, minlength=nl).astype(np.float64)

  count = np.zeros(nl)
  mean = np.zeros(nl)
  m2 = np.zeros(nl)
  for start in range(0, shape[0], chunk_rows):
    x = np.asarray(corpus[start:start + chunk_rows], dtype=np.float64)
    n_b = layer_sizes * x.shape[0]
    safe_n = np.maximum(n_b, 1.0)
    mean_b = np.bincount(ids, weights=x.sum(axis=0), minlength=nl) / safe_n
    dev = x - mean_b[ids]
    m2_b = np.bincount(ids, weights=np.einsum("nd,nd->d", dev, dev), minlength=nl)
    if not (np.all(np.isfinite(mean_b)) and np.all(np.isfinite(m2_b))):
      raise ValueError(f"corpus rows {start}:{start + x.shape[0]} contain non-finite values")
    # Chan et al. merge of (count, mean, m2) with the chunk's.
    n_ab = count + n_b
    safe_ab = np.maximum(n_ab, 1.0)
    delta = mean_b - mean
    mean = mean + delta * n_b / safe_ab
    m2 = m2 + m2_b + delta**2 * count * n_b / safe_ab
    count = n_ab

  std = np.where(count > 0, np.sqrt(m2 / np.maximum(count, 1.0)), 1.0)
  return mean, std


@dataclasses.dataclass(frozen=True, eq=False)
class LayerNorms:
  """Per-layer affine normalisation of tokens: ``(t - mean) / std`` on real positions.

  ``std`` is the floored std actually used, ``max(raw_std, min_std)``: a layer that is
  constant over the corpus (e.g. biases that never moved from 0) would otherwise divide by
  zero. With the default floor of 1e-8 such a layer is normalised to ~0 and any model error
  on it is multiplied by ~1e-8 on the way back, which is the behaviour we want for a layer
  that carries no information; raise ``min_std`` if small real spreads must not be blown up.

  With ``center`` (a (D,) vector, the elementwise mean net of the corpus), tokens are
  centred per element instead of per layer and ``std`` is the per-layer spread of the
  residuals: a zero model output then decodes to the mean net (a working net) rather than
  to a net whose every weight in a layer equals one scalar, and the model learns only the
  task-dependent residuals, which is what a corpus fine-tuned from one base net varies in.

  Attributes:
    tokenizer: the tokenizer whose layers the statistics belong to.
    mean: per-layer mean, (num_layers,) tuple of floats (zeros when ``center`` is set).
    std: per-layer floored std, (num_layers,) tuple of floats.
    min_std: the floor that was applied to the std.
    mean_tokens: (L, block_size) float32, each token's layer mean, 0 at pad positions.
    std_tokens: (L, block_size) float32, each token's layer std, 1 at pad positions.
  """
  tokenizer: BlockTokenizer
  mean: tuple[float, ...]
  std: tuple[float, ...]
  min_std: float = DEFAULT_MIN_STD
  center: np.ndarray | None = dataclasses.field(default=None, repr=False)
  mean_tokens: np.ndarray = dataclasses.field(init=False, repr=False)
  std_tokens: np.ndarray = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    nl = self.tokenizer.num_layers
    mean = np.asarray(self.mean, np.float64).reshape(-1)
    std = np.asarray(self.std, np.float64).reshape(-1)
    if mean.shape != (nl,) or std.shape != (nl,):
      raise ValueError(f"need {nl} per-layer means and stds, got {mean.shape[0]} and "
                       f"{std.shape[0]}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
      raise ValueError("mean and std must be finite")
    if not self.min_std > 0:
      raise ValueError(f"min_std must be > 0, got {self.min_std}")
    std = np.maximum(std, self.min_std)
    object.__setattr__(self, "mean", tuple(float(v) for v in mean))
    object.__setattr__(self, "std", tuple(float(v) for v in std))
    mask = self.tokenizer.mask
    lid = self.tokenizer.layer_ids
    mean_t = np.where(mask, mean[lid][:, None], 0.0).astype(np.float32)
    if self.center is not None:
      center = np.asarray(self.center, np.float32).reshape(-1)
      if center.shape != (self.tokenizer.total,):
        raise ValueError(f"center must have {self.tokenizer.total} values, got {center.shape}")
      object.__setattr__(self, "center", center)
      mean_t = mean_t + np.asarray(self.tokenizer.tokenize(center), np.float32)
    std_t = np.where(mask, std[lid][:, None], 1.0).astype(np.float32)
    mean_t.flags.writeable = False
    std_t.flags.writeable = False
    object.__setattr__(self, "mean_tokens", mean_t)
    object.__setattr__(self, "std_tokens", std_t)

  @classmethod
  def fit(cls, corpus, tokenizer: BlockTokenizer, chunk_rows: int = 1024,
          min_std: float = DEFAULT_MIN_STD, center: str = "layer") -> "LayerNorms":
    """Fits per-layer statistics on an (N, D) corpus (see ``layer_stats``).

    Args:
      corpus: (N, D) numpy array or memmap of flat weight vectors.
      tokenizer: defines the layers.
      chunk_rows: rows processed at a time.
      min_std: floor on the std (see the class docstring).
      center: "layer" (one mean per layer) or "element" (the mean net; see the class
        docstring).

    Returns:
      The fitted ``LayerNorms``.
    """
    if center not in ("layer", "element"):
      raise ValueError(f"center must be 'layer' or 'element', got {center!r}")
    if center == "element":
      elem = _elementwise_mean(corpus, chunk_rows)
      _, std = layer_stats(_Centered(corpus, elem), tokenizer, chunk_rows)
      return cls(tokenizer, (0.0,) * tokenizer.num_layers, tuple(std), min_std, center=elem)
    mean, std = layer_stats(corpus, tokenizer, chunk_rows)
    floored = [n for n, s in zip(tokenizer.layer_names, std) if s < min_std]
    if floored:
      logging.warning("LayerNorms: std floored to %g for constant layers %s", min_std, floored)
    return cls(tokenizer, tuple(mean), tuple(std), min_std)

  def _check(self, tokens):
    tokens = jnp.asarray(tokens)
    if tokens.ndim < 2 or tuple(tokens.shape[-2:]) != self.tokenizer.token_shape:
      raise ValueError(f"tokens must be (..., {self.tokenizer.num_tokens}, "
                       f"{self.tokenizer.block_size}), got shape {tuple(tokens.shape)}")
    return tokens

  def normalize(self, tokens) -> jax.Array:
    """(..., L, block) raw tokens -> normalised tokens; pad positions set to 0."""
    tokens = self._check(tokens)
    dt = tokens.dtype if jnp.issubdtype(tokens.dtype, jnp.floating) else jnp.float32
    out = (tokens.astype(dt) - jnp.asarray(self.mean_tokens, dt)) / jnp.asarray(
        self.std_tokens, dt)
    return jnp.where(self.tokenizer.mask, out, jnp.zeros((), dt))

  def denormalize(self, tokens) -> jax.Array:
    """Inverse of ``normalize``: (..., L, block) -> raw-scale tokens; pad positions 0."""
    tokens = self._check(tokens)
    dt = tokens.dtype if jnp.issubdtype(tokens.dtype, jnp.floating) else jnp.float32
    out = tokens.astype(dt) * jnp.asarray(self.std_tokens, dt) + jnp.asarray(
        self.mean_tokens, dt)
    return jnp.where(self.tokenizer.mask, out, jnp.zeros((), dt))

  def to_json(self) -> dict:
    """JSON-ready dict (floats are written at full float64 precision)."""
    return {"tokenizer": self.tokenizer.to_json(),
            "layer_names": list(self.tokenizer.layer_names),
            "mean": list(self.mean), "std": list(self.std), "min_std": self.min_std,
            "center": None if self.center is None else [float(v) for v in self.center]}

  @classmethod
  def from_json(cls, d: Mapping[str, Any],
                tokenizer: BlockTokenizer | None = None) -> "LayerNorms":
    """Inverse of ``to_json``.

    Args:
      d: the dict written by ``to_json``.
      tokenizer: if given, it must equal the stored one (guards against applying
        statistics to another architecture or block size); else the stored one is rebuilt.

    Returns:
      The ``LayerNorms``.
    """
    for key in ("tokenizer", "mean", "std"):
      if key not in d:
        raise KeyError(f"LayerNorms json lacks {key!r}; has {sorted(d)}")
    stored = BlockTokenizer.from_json(d["tokenizer"])
    if tokenizer is not None and tokenizer != stored:
      raise ValueError(f"LayerNorms were fitted for {stored!r}, not {tokenizer!r}")
    names = d.get("layer_names")
    if names is not None and tuple(names) != stored.layer_names:
      raise ValueError(f"LayerNorms json layer names {names} do not match the tokenizer's "
                       f"{list(stored.layer_names)}")
    center = d.get("center")
    return cls(stored, tuple(d["mean"]), tuple(d["std"]),
               float(d.get("min_std", DEFAULT_MIN_STD)),
               center=None if center is None else np.asarray(center, np.float32))


def _elementwise_mean(corpus, chunk_rows: int) -> np.ndarray:
  """(D,) float64 mean over the rows of an (N, D) array-like, streaming."""
  n, d = corpus.shape
  if n == 0:
    raise ValueError("corpus has no rows; cannot fit normalisation statistics")
  total = np.zeros(d)
  for start in range(0, n, chunk_rows):
    total += np.asarray(corpus[start:start + chunk_rows], np.float64).sum(axis=0)
  return total / n


class _Centered:
  """Rows of ``corpus`` minus ``center``, read lazily (keeps fitting streaming)."""

  def __init__(self, corpus, center):
    self.corpus, self.center = corpus, center
    self.shape = tuple(corpus.shape)

  def __getitem__(self, index):
    return np.asarray(self.corpus[index], np.float64) - self.center
