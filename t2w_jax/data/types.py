"""ImageDataset: a labelled image classification dataset held as numpy arrays.

Every loader in `t2w_jax.data` returns one of these, so task sampling, subtask
training and evaluation never care where the images came from.
"""

from __future__ import annotations

import dataclasses
import difflib

import numpy as np
from PIL import Image


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
  """Resizes a batch of images to (image_size, image_size).

  Integer downsampling factors use exact box (area) averaging, which is fast and
  alias-free; any other size goes through PIL's antialiased bilinear filter. The same rule
  serves uint8 images (the datasets) and float32 ones (a user's [0, 1] images given to a
  generated net), so both are resized alike.

  Args:
    images: uint8 or float32 array (N, H, W, C).
    image_size: the new height and width (> 0).

  Returns:
    An array of the input's dtype, (N, image_size, image_size, C); `images` itself if the
    size already matches.
  """
  if not isinstance(image_size, (int, np.integer)) or image_size <= 0:
    raise ValueError(f"image_size must be a positive int, got {image_size!r}")
  if images.ndim != 4 or images.dtype not in (np.uint8, np.float32):
    raise ValueError("images must be uint8 or float32 (N, H, W, C), got "
                     f"{images.dtype} {images.shape}")
  n, h, w, c = images.shape
  if (h, w) == (image_size, image_size):
    return images
  is_float = images.dtype == np.float32
  if h % image_size == 0 and w % image_size == 0:
    fh, fw = h // image_size, w // image_size
    # Exact area averaging, summing one strided slice per offset in the block:
    # several times faster than a mean over reshaped block axes.
    acc = np.zeros((n, image_size, image_size, c), np.float64 if is_float else np.uint32)
    for i in range(fh):
      for j in range(fw):
        acc += images[:, i::fh, j::fw]
    count = fh * fw
    if is_float:
      return (acc / count).astype(np.float32)
    return ((2 * acc + count) // (2 * count)).astype(np.uint8)  # Round half up.
  out = np.empty((n, image_size, image_size, c), images.dtype)
  for i in range(n):
    # PIL holds float images one channel at a time (mode "F"), uint8 ones as L or RGB.
    planes = ([images[i, ..., k] for k in range(c)] if is_float
              else [images[i].squeeze(-1) if c == 1 else images[i]])
    resized = [np.asarray(Image.fromarray(p).resize((image_size, image_size),
                                                    Image.Resampling.BILINEAR))
               for p in planes]
    out[i] = (np.stack(resized, -1) if is_float else resized[0]).reshape(
        image_size, image_size, c)
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """A classification dataset: named classes, train and test splits.

  Attributes:
    name: dataset name, as registered (e.g. "shapes").
    class_names: natural-language class names, e.g. "red striped circle";
      label `i` is `class_names[i]`.
    train_images: uint8 (N, H, W, 3).
    train_labels: int32 (N,), in [0, num_classes).
    test_images: uint8 (M, H, W, 3).
    test_labels: int32 (M,), in [0, num_classes).
  """
  name: str
  class_names: tuple[str, ...]
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray

  def __post_init__(self):
    # Frozen dataclass: normalise fields through object.__setattr__.
    object.__setattr__(self, "class_names", tuple(self.class_names))
    if len(set(self.class_names)) != len(self.class_names):
      dupes = sorted({n for n in self.class_names if self.class_names.count(n) > 1})
      raise ValueError(f"dataset {self.name!r} has duplicate class names: {dupes[:5]}")
    for split in ("train", "test"):
      images = getattr(self, f"{split}_images")
      labels = getattr(self, f"{split}_labels")
      if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"dataset {self.name!r}: {split}_images must be a uint8 "
                         f"array (N, H, W, C), got {getattr(images, 'dtype', type(images))} "
                         f"{getattr(images, 'shape', '')}")
      labels = np.asarray(labels)
      if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"dataset {self.name!r}: {split}_labels must be a 1-D integer "
                         f"array, got {labels.dtype} {labels.shape}")
      if labels.shape[0] != images.shape[0]:
        raise ValueError(f"dataset {self.name!r}: {labels.shape[0]} {split} labels for "
                         f"{images.shape[0]} {split} images")
      if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
        raise ValueError(f"dataset {self.name!r}: {split} labels span "
                         f"[{labels.min()}, {labels.max()}], outside "
                         f"[0, {len(self.class_names)})")
      object.__setattr__(self, f"{split}_labels", labels.astype(np.int32, copy=False))
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise ValueError(f"dataset {self.name!r}: train images {self.train_images.shape[1:]} "
                       f"and test images {self.test_images.shape[1:]} differ in shape")

  @property
  def num_classes(self) -> int:
    """Number of classes."""
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of every image."""
    return tuple(self.train_images.shape[1:])

  def class_index(self, name: str) -> int:
    """Returns the label of the class called `name`.

    Raises:
      KeyError: naming the unknown class, with close matches and a few known ones.
    """
    try:
      return self.class_names.index(name)
    except ValueError:
      pass
    close = difflib.get_close_matches(name, self.class_names, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    known = ", ".join(map(repr, self.class_names[:5]))
    raise KeyError(f"unknown class {name!r} in dataset {self.name!r}.{hint} Known "
                   f"classes include {known} ({self.num_classes} in all).") from None

  def resized(self, image_size: int) -> ImageDataset:
    """Returns the dataset with images resized to (image_size, image_size)."""
    if self.image_shape[:2] == (image_size, image_size):
      return self
    return dataclasses.replace(
        self,
        train_images=resize_images(self.train_images, image_size),
        test_images=resize_images(self.test_images, image_size))
