"""Fashion-MNIST from the files of Debian's `dataset-fashion-mnist` package.

The package installs the four gzipped IDX files of the original release in
/usr/share/datasets/fashion-mnist/; they are read directly with numpy, so this needs
neither the network nor tfds. Other copies are found through `data_dir` or the
T2W_FASHION_MNIST_DIR environment variable, which are searched first. Images are
28x28 grayscale; they are repeated to three channels (the subtask CNNs take RGB) and
padded or resized to the requested size.
"""

from __future__ import annotations

import gzip
import logging
import os
import pathlib

import numpy as np
from PIL import Image

from t2w_jax.data import class_names as class_names_lib
from t2w_jax.data.registry import register
from t2w_jax.data.types import ImageDataset

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "T2W_FASHION_MNIST_DIR"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = tuple(
    class_names_lib.fashion_mnist_name(n) for n in class_names_lib.FASHION_MNIST_RAW_NAMES)
# IDX magic numbers: two zero bytes, the element type (0x08: unsigned byte), the rank.
_IDX_UBYTE = 0x08


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (gzipped when its name ends in .gz) of unsigned bytes.

  Args:
    path: the file.

  Returns:
    uint8 array with the shape the header declares.

  Raises:
    ValueError: if the header is not an unsigned-byte IDX header or the data is short.
  """
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
    raise ValueError(f"{path} is not an unsigned-byte IDX file (header {data[:4]!r}).")
  rank = data[3]
  header = 4 + 4 * rank
  shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
  count = int(np.prod(shape))
  if len(data) - header != count:
    raise ValueError(
        f"{path} declares shape {shape} ({count} bytes) but holds {len(data) - header}.")
  return np.frombuffer(data, np.uint8, count, header).reshape(shape)


def candidate_dirs(data_dir: str | os.PathLike | None) -> list[pathlib.Path]:
  """Directories searched for the IDX files, in order.

  data_dir and data_dir/fashion-mnist (so one data_dir shared by every dataset
  works), then $T2W_FASHION_MNIST_DIR, then Debian's /usr/share/datasets/fashion-mnist.
  The files are the same wherever they are found.
  """
  dirs = []
  if data_dir:
    dirs += [pathlib.Path(data_dir), pathlib.Path(data_dir) / "fashion-mnist"]
  if os.environ.get(ENV_VAR):
    dirs.append(pathlib.Path(os.environ[ENV_VAR]))
  dirs.append(pathlib.Path(DEBIAN_DIR))
  return dirs


def find_files(data_dir: str | os.PathLike | None) -> dict[str, pathlib.Path]:
  """Finds the four IDX files (gzipped or plain) in the first directory holding them all.

  Args:
    data_dir: the caller's directory, or None.

  Returns:
    {"train_images": path, "train_labels": ..., "test_images": ..., "test_labels": ...}.

  Raises:
    FileNotFoundError: naming the searched directories and how to install the files.
  """
  searched = candidate_dirs(data_dir)
  for directory in searched:
    found = {}
    for key, stem in FILES.items():
      for name in (stem + ".gz", stem):
        if (directory / name).is_file():
          found[key] = directory / name
          break
    if len(found) == len(FILES):
      return found
  raise FileNotFoundError(
      f"Fashion-MNIST files ({', '.join(s + '.gz' for s in FILES.values())}) not found "
      f"in {', '.join(map(str, searched))}. Install Debian's package with "
      f"`apt-get install dataset-fashion-mnist` (it puts them in {DEBIAN_DIR}), or point "
      f"data_dir or ${ENV_VAR} at a directory holding them.")


def fit_grayscale(images: np.ndarray, image_size: int, fit: str | None = None) -> np.ndarray:
  """Turns (N,28,28) grayscale images into (N,S,S,3) RGB ones.

  Args:
    images: uint8 (N, H, W) with H == W.
    image_size: output side in pixels.
    fit: "pad" (center on a black canvas, keeping every pixel as published; the
      classic 28 -> 32) or "resize" (PIL, antialiased). None: pad when growing,
      resize when shrinking.

  Returns:
    uint8 (N, image_size, image_size, 3).

  Raises:
    ValueError: for an unknown fit or padding to a smaller size.
  """
  side = images.shape[1]
  fit = fit or ("pad" if image_size >= side else "resize")
  if fit == "pad":
    if image_size < side:
      raise ValueError(f"Cannot pad {side}x{side} images to {image_size}x{image_size}.")
    before = (image_size - side) // 2
    after = image_size - side - before
    images = np.pad(images, ((0, 0), (before, after), (before, after)))
  elif fit == "resize":
    if image_size != side:
      resample = Image.Resampling.BOX if image_size < side else Image.Resampling.BICUBIC
      images = np.stack([
          np.asarray(Image.fromarray(im).resize((image_size, image_size), resample))
          for im in images])
  else:
    raise ValueError(f"fit must be 'pad' or 'resize', got {fit!r}.")
  return np.repeat(images[..., None], 3, axis=-1)


@register("fashion_mnist")
def load_fashion_mnist(*, data_dir: str | os.PathLike | None = None,
                       image_size: int | None = None, fit: str | None = None) -> ImageDataset:
  """Loads Fashion-MNIST (60,000 train, 10,000 test) from its IDX files.

  Args:
    data_dir: directory with the four IDX files, gzipped or not, directly or in a
      fashion-mnist/ subdirectory; when they are not there (or None):
      $T2W_FASHION_MNIST_DIR, else /usr/share/datasets/fashion-mnist from Debian's
      dataset-fashion-mnist package.
    image_size: output side (None: the native 28).
    fit: how to reach image_size, "pad" or "resize" (see `fit_grayscale`).

  Returns:
    An ImageDataset of RGB images and natural class names ("t-shirt", "ankle boot").

  Raises:
    FileNotFoundError: if a file is missing; the message says how to install it.
    ValueError: if the files disagree with each other or with the class list.
  """
  paths = find_files(data_dir)
  arrays = {key: read_idx(path) for key, path in paths.items()}
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
      raise ValueError(f"{split} images have shape {images.shape}; expected (N, 28, 28).")
    if labels.shape != images.shape[:1]:
      raise ValueError(f"{split}: {len(labels)} labels for {len(images)} images.")
    if labels.size and labels.max() >= len(CLASS_NAMES):
      raise ValueError(f"{split} label {labels.max()} is out of range for 10 classes.")
  size = image_size or arrays["train_images"].shape[1]
  logging.info("Read Fashion-MNIST from %s.", paths["train_images"].parent)
  return ImageDataset(
      name="fashion_mnist",
      class_names=CLASS_NAMES,
      train_images=fit_grayscale(arrays["train_images"], size, fit),
      train_labels=arrays["train_labels"].astype(np.int32),
      test_images=fit_grayscale(arrays["test_images"], size, fit),
      test_labels=arrays["test_labels"].astype(np.int32),
  )
