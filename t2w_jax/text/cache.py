"""A per-class-name embedding cache for one encoder and one prompt template.

Corpora and evaluators ask for the same class names over and over; the cache encodes each
name once (through the template) and can be saved beside a corpus. A cache file records
the encoder name and the template, and loading it for another encoder or template is
refused: embeddings from two text spaces must never be mixed silently.

File format: one .npz (written to a temporary name, then renamed) holding `names` (unicode
array), `embeddings` (n, dim) float32, `encoder_name`, `template` and `format_version`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from typing import Sequence

import numpy as np

from t2w_jax.text import encoders
from t2w_jax.text import prompts

_FORMAT_VERSION = 1


class EmbeddingCache:
  """Embeddings of class names, keyed by the cleaned name ("maple_tree" -> "maple tree").

  Attributes:
    encoder: the encoder used for missing names (None for a read-only cache).
    encoder_name: name of the encoder the embeddings come from.
    template: prompt template applied to each name before encoding.
    dim: embedding size.
    path: default file for `save`.
  """

  def __init__(self, encoder: encoders.TextEncoder | None,
               template: str = prompts.DEFAULT_TEMPLATE, path: str | os.PathLike | None = None):
    """Creates a cache, filled from `path` when that file exists.

    Args:
      encoder: the text encoder. May be None only when loading from a file (see `load`).
      template: prompt template with one "{}".
      path: default file for `save`; if it exists, its entries are loaded (and refused
        when written by another encoder or template).

    Raises:
      ValueError: a malformed template, no encoder and no file, or a file from another
        encoder or template.
    """
    prompts.check_template(template)
    self.encoder = encoder
    self.template = template
    self.path = os.fspath(path) if path is not None else None
    self._emb: dict[str, np.ndarray] = {}
    if encoder is not None:
      self.encoder_name = encoder.name
      self.dim = int(encoder.dim)
    if self.path is not None and os.path.exists(self.path):
      name, tmpl, names, emb = _read(self.path)
      if encoder is not None:
        _check_match(self.path, name, tmpl, encoder.name, template)
      elif tmpl != template:
        _check_match(self.path, name, tmpl, name, template)
      self.encoder_name = name
      self.dim = emb.shape[1]
      if encoder is not None and emb.shape[1] != encoder.dim:
        raise ValueError(f"cache file {self.path!r} has dim {emb.shape[1]}, but encoder "
                         f"{encoder.name!r} has dim {encoder.dim}")
      self._emb = dict(zip(names, emb))
    elif encoder is None:
      raise ValueError("EmbeddingCache needs an encoder unless it is loaded from an existing file")

  @classmethod
  def load(cls, path: str | os.PathLike, encoder: encoders.TextEncoder | None = None,
           template: str | None = None) -> "EmbeddingCache":
    """Loads a cache file.

    Args:
      path: a file written by `save`.
      encoder: if given, the file must have been written with an encoder of the same
        name; missing names are then encoded with it. Without it the cache is read-only.
      template: if given, the file must have been written with this template.

    Returns:
      The cache.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file was written by another encoder or template, or is malformed.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
      raise FileNotFoundError(f"no embedding cache file at {path!r}")
    if template is None:
      template = _read(path)[1]
    return cls(encoder, template=template, path=path)

  def __len__(self) -> int:
    return len(self._emb)

  def __contains__(self, name: str) -> bool:
    return prompts.clean_class_name(name) in self._emb

  @property
  def names(self) -> list[str]:
    """The cached (cleaned) class names, in insertion order."""
    return list(self._emb)

  def get(self, names: Sequence[str]) -> np.ndarray:
    """Returns the embeddings of class names, encoding only those not cached yet.

    Args:
      names: class names (raw dataset spellings are fine: "maple_tree").

    Returns:
      (len(names), dim) float32 array, one L2-normalised row per name, in order.

    Raises:
      KeyError: a name is missing and the cache has no encoder.
      ValueError: an empty class name.
    """
    if isinstance(names, str):
      raise TypeError(f"names must be a sequence of class names, got the string {names!r}")
    keys = [prompts.clean_class_name(n) for n in names]
    missing = list(dict.fromkeys(k for k in keys if k not in self._emb))
    if missing:
      if self.encoder is None:
        raise KeyError(f"class names {missing} are not in the read-only embedding cache "
                       f"of {self.encoder_name!r}; load it with an encoder to add them")
      emb = np.asarray(self.encoder.encode(prompts.apply_template(missing, self.template)),
                       np.float32)
      if emb.shape != (len(missing), self.dim):
        raise ValueError(f"encoder {self.encoder_name!r} returned shape {emb.shape}, "
                         f"expected {(len(missing), self.dim)}")
      self._emb.update(zip(missing, emb))
      logging.debug("embedding cache: encoded %d new names", len(missing))
    if not keys:
      return np.zeros((0, self.dim), np.float32)
    return np.stack([self._emb[k] for k in keys]).astype(np.float32, copy=False)

  def save(self, path: str | os.PathLike | None = None) -> str:
    """Writes the cache atomically (temporary file, then rename).

    Args:
      path: target file; defaults to the path given at construction.

    Returns:
      The path written.

    Raises:
      ValueError: no path given here or at construction.
    """
    path = os.fspath(path) if path is not None else self.path
    if path is None:
      raise ValueError("EmbeddingCache.save needs a path (none was given at construction)")
    names = list(self._emb)
    emb = (np.stack([self._emb[n] for n in names]).astype(np.float32) if names
           else np.zeros((0, self.dim), np.float32))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, names=np.asarray(names, dtype=str), embeddings=emb,
                 encoder_name=np.asarray(self.encoder_name), template=np.asarray(self.template),
                 format_version=np.asarray(_FORMAT_VERSION))
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
    if self.path is None:
      self.path = path
    return path


def _read(path: str) -> tuple[str, str, list[str], np.ndarray]:
  """Reads a cache file: (encoder name, template, names, embeddings)."""
  try:
    with np.load(path, allow_pickle=False) as z:
      fields = {k: z[k] for k in ("format_version", "encoder_name", "template", "names",
                                  "embeddings")}
  except (KeyError, OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
    # ValueError: numpy refusing a pickle, i.e. not a file that `save` wrote.
    raise ValueError(f"{path!r} is not an embedding cache file: {e}") from e
  version = int(fields["format_version"])
  if version != _FORMAT_VERSION:
    raise ValueError(f"embedding cache {path!r} has format version {version}, "
                     f"expected {_FORMAT_VERSION}")
  names = [str(n) for n in fields["names"]]
  emb = np.asarray(fields["embeddings"], np.float32)
  if emb.ndim != 2 or emb.shape[0] != len(names):
    raise ValueError(f"embedding cache {path!r} is malformed: {len(names)} names, "
                     f"embeddings of shape {emb.shape}")
  return str(fields["encoder_name"]), str(fields["template"]), names, emb


def _check_match(path: str, file_name: str, file_template: str, name: str,
                 template: str) -> None:
  if file_name != name:
    raise ValueError(f"embedding cache {path!r} was written by encoder {file_name!r}, "
                     f"not by {name!r}; embeddings from different encoders cannot be mixed")
  if file_template != template:
    raise ValueError(f"embedding cache {path!r} was written with template {file_template!r}, "
                     f"not {template!r}")
