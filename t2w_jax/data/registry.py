"""Dataset registry: loaders by name.

A loader is a function `fn(*, data_dir, image_size, **kwargs) -> ImageDataset`
registered with `@register("name")`. To add a dataset, write the loader in its
own module of `t2w_jax.data` and add that module to `LOADER_MODULES` below, so
`load_dataset` finds it without the caller importing it first (loader modules
are imported lazily, on the first lookup, because some pull in tfds).

    @register("my_data")
    def load_my_data(*, data_dir=None, image_size=None) -> ImageDataset: ...

    ds = load_dataset("my_data", image_size=16)
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Callable

from t2w_jax.data.types import ImageDataset

Loader = Callable[..., ImageDataset]

# Modules whose import registers loaders. A module listed here that does not
# exist (yet) is an error, not a silent skip.
LOADER_MODULES: tuple[str, ...] = (
    "t2w_jax.data.shapes_builder",
    "t2w_jax.data.cifar100",
    "t2w_jax.data.caltech256",
    "t2w_jax.data.tinyimagenet",
    "t2w_jax.data.fashion_mnist",
)

# Where loaders that own their cache (the procedural shapes) keep it.
DATA_DIR_ENV = "T2W_DATA_DIR"
_DEFAULT_DATA_DIR = os.path.join("~", ".cache", "t2w_jax", "tfds")

_LOADERS: dict[str, Loader] = {}
_modules_imported = False


def default_data_dir() -> str:
  """Returns $T2W_DATA_DIR, or ~/.cache/t2w_jax/tfds, with ~ expanded."""
  return os.path.expanduser(os.environ.get(DATA_DIR_ENV) or _DEFAULT_DATA_DIR)


def register(name: str) -> Callable[[Loader], Loader]:
  """Registers a dataset loader under `name`.

  Args:
    name: the dataset name used by `load_dataset`.

  Returns:
    A decorator that registers `fn(*, data_dir, image_size, **kwargs)` and
    returns it unchanged.

  Raises:
    ValueError: if `name` is empty or already taken by another function.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"dataset name must be a non-empty string, got {name!r}")

  def decorator(fn: Loader) -> Loader:
    old = _LOADERS.get(name)
    # Re-registering the same function (a module reload) is harmless.
    if old is not None and _qualified_name(old) != _qualified_name(fn):
      raise ValueError(f"dataset {name!r} is already registered by "
                       f"{_qualified_name(old)}; cannot register {_qualified_name(fn)}")
    _LOADERS[name] = fn
    return fn

  return decorator


def _qualified_name(fn: Callable[..., Any]) -> str:
  return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _import_loader_modules() -> None:
  global _modules_imported
  if _modules_imported:
    return
  for module in LOADER_MODULES:
    importlib.import_module(module)
  _modules_imported = True


def known_datasets() -> list[str]:
  """Returns the sorted names of all registered datasets."""
  _import_loader_modules()
  return sorted(_LOADERS)


def load_dataset(name: str, *, data_dir: str | None = None,
                 image_size: int | None = None, **kwargs: Any) -> ImageDataset:
  """Loads a registered dataset.

  Args:
    name: registered dataset name (see `known_datasets()`).
    data_dir: where the loader finds or caches its data; None lets the loader
      choose its default (for "shapes": $T2W_DATA_DIR or ~/.cache/t2w_jax/tfds).
    image_size: if given, images come back (image_size, image_size), resized if
      the loader returns another size.
    **kwargs: loader-specific options (e.g. seed, train_per_class for "shapes").

  Returns:
    The ImageDataset.

  Raises:
    ValueError: unknown dataset name or bad image_size.
  """
  if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
    raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
  _import_loader_modules()
  loader = _LOADERS.get(name)
  if loader is None:
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(_LOADERS))}")
  if data_dir is not None:
    data_dir = os.path.expanduser(os.fspath(data_dir))
  dataset = loader(data_dir=data_dir, image_size=image_size, **kwargs)
  if not isinstance(dataset, ImageDataset):
    raise TypeError(f"loader of dataset {name!r} returned {type(dataset).__name__}, "
                    "not an ImageDataset")
  if image_size is not None and dataset.image_shape[:2] != (image_size, image_size):
    logging.info("Resizing %s from %s to %dx%d.", name, dataset.image_shape[:2],
                 image_size, image_size)
    dataset = dataset.resized(image_size)
  return dataset
