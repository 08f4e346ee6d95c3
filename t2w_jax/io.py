"""Atomic file writes: a reader never sees a half-written file.

Each helper writes to a temporary file beside the target (named after the process id, so two
processes never share one), flushes it, then renames it over the target; on any failure the
temporary file is removed and the target is left as it was. Corpora, checkpoints' side files,
evaluation reports and generated nets all go through these.

``quiet_orbax_logs`` keeps orbax's several INFO lines per checkpoint read or write out of
the log.
"""
import hashlib
import json
import logging
import os
from typing import Any, Callable

import numpy as np

from t2w_jax.errors import ConfigError, MissingError


def check_output_path(path: str, flag: str | None = None) -> None:
  """Refuses an output file path that cannot be written, before any work is done.

  Args:
    path: the file to be written.
    flag: the command-line flag that gave it, for the message (None: the path alone).

  Raises:
    ConfigError: the path is empty, a directory, or in a directory that is not writable.
    MissingError: its directory does not exist.
  """
  label = path if flag is None else f"{flag}={path}"
  if not path:
    raise ConfigError(f"{flag or 'the output path'} is empty; give a file path")
  if os.path.isdir(path):
    raise ConfigError(f"{label} is a directory; give a file path such as "
                      f"{os.path.join(path, 'net.npz')}")
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise MissingError(f"{label}: directory {parent} does not exist; create it first")
  if not os.access(parent, os.W_OK):
    raise ConfigError(f"{label}: directory {parent} is not writable")


def file_digest(path: str) -> dict:
  """{"bytes": size, "sha256": hex digest} of a file, read in 8 MiB pieces (the corpus's
  checksums and the checkpoints' digests)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 23), b""):
      h.update(block)
  return {"bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def _save_then_rename(tmp: str, path: str, save: Callable[[str], None]) -> None:
  """Runs ``save(tmp)`` then renames tmp to path; on any failure no temp file is left."""
  try:
    save(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.lexists(tmp) and not os.path.isdir(tmp):
      os.remove(tmp)
    raise


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically (fsynced before the rename).

  Args:
    path: the target file.
    data: its new contents.
  """
  def save(tmp):
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
  _save_then_rename(f"{path}.tmp.{os.getpid()}", path, save)


def atomic_write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as indented JSON to ``path`` atomically.

  Args:
    path: the target file.
    obj: a JSON-serialisable object.
  """
  atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def atomic_save_npy(path: str, array: np.ndarray) -> None:
  """``np.save(path, array)``, atomically (``path`` should end in .npy).

  Args:
    path: the target file.
    array: the array to write.
  """
  _save_then_rename(f"{path}.tmp.{os.getpid()}.npy", path, lambda t: np.save(t, array))


def atomic_save_npz(path: str, **arrays) -> None:
  """``np.savez(path, **arrays)``, atomically (``path`` should end in .npz).

  Args:
    path: the target file.
    **arrays: name -> array.
  """
  _save_then_rename(f"{path}.tmp.{os.getpid()}.npz", path, lambda t: np.savez(t, **arrays))


class _DropOrbaxInfo(logging.Filter):
  """Drops INFO records from orbax (several lines per checkpoint save or restore)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def quiet_orbax_logs() -> None:
  """Keeps orbax's INFO lines out of the log (its warnings still show); idempotent."""
  for name in ("absl", ""):
    logger = logging.getLogger(name)
    if not any(isinstance(f, _DropOrbaxInfo) for f in logger.filters):
      logger.addFilter(_DropOrbaxInfo())
