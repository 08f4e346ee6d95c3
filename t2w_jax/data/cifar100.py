"""CIFAR-100 through TensorFlow Datasets' random-access data source.

The data is read with `tfds.data_source` from ArrayRecord files, which needs no
TensorFlow. Preparing those files does (tfds's CIFAR-100 builder reads the archive with
TensorFlow), and it needs the network, so this module never prepares or downloads:
when the files are missing it says how to make them once.

`read_tfds_splits` is the tfds-to-numpy step shared with the Caltech-256 and
TinyImageNet loaders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import logging
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from t2w_jax.data import class_names as class_names_lib
from t2w_jax.data.registry import register
from t2w_jax.data.types import ImageDataset

TFDS_NAME = "cifar100"

PREPARE_INSTRUCTIONS = (
    "Prepare it once, with TensorFlow and network access:\n"
    "  pip install -e .[tf]\n"
    "  python -c \"import tensorflow_datasets as tfds; "
    "tfds.builder('cifar100'{data_dir_arg}, file_format='array_record')"
    ".download_and_prepare()\"\n"
    "(TensorFlow is needed only for that step; reading uses ArrayRecord without it.)"
)


def read_tfds_splits(
    name: str,
    splits: Sequence[str] = ("train", "test"),
    *,
    data_dir: str | None = None,
    download: bool = False,
    builder_kwargs: Mapping[str, Any] | None = None,
    download_and_prepare_kwargs: Mapping[str, Any] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    not_readable: Callable[[Exception], Exception] | None = None,
) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
  """Reads whole splits of a tfds image dataset into numpy through `tfds.data_source`.

  Args:
    name: tfds name, optionally with config ("caltech256/32px").
    splits: split names to read.
    data_dir: tfds data directory (None: tfds's default, $TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    download: passed to `tfds.data_source`; True prepares a missing dataset (only
      safe for builders that never touch the network, like the manual-archive ones).
    builder_kwargs: passed to `tfds.data_source`.
    download_and_prepare_kwargs: passed to `tfds.data_source`.
    image_key: feature holding the uint8 image.
    label_key: ClassLabel feature holding the label.
    not_readable: if given, maps an error from finding or opening the prepared files
      (tfds's errors for a missing dataset, ArrayRecord's for missing shards) to the
      exception to raise instead.

  Returns:
    (label names as stored in the dataset, {split: (images uint8 (N,H,W,C), labels
    int32 (N,))}).
  """
  try:
    sources = tfds.data_source(
        name,
        split=list(splits),
        data_dir=data_dir,
        download=download,
        builder_kwargs=dict(builder_kwargs or {}),
        download_and_prepare_kwargs=dict(download_and_prepare_kwargs or {}),
    )
    for source in sources:
      if len(source):
        source[0]  # pylint: disable=pointless-statement  # ArrayRecord opens lazily.
  # tfds reports an unprepared dataset as NotImplementedError (a RuntimeError: "file
  # format TFRECORD is not supported"), ArrayRecord a missing shard as RuntimeError.
  except (RuntimeError, FileNotFoundError, AssertionError) as e:
    if not_readable is None:
      raise
    raise not_readable(e) from e
  arrays = {}
  names: list[str] = []
  for split, source in zip(splits, sources):
    names = list(source.dataset_info.features[label_key].names)
    arrays[split] = _source_to_arrays(source, image_key, label_key)
    logging.info("Read %s[%s]: %d examples.", name, split, len(arrays[split][1]))
  return names, arrays


def _source_to_arrays(source, image_key: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
  """Stacks every example of a random-access source into (images, labels)."""
  n = len(source)
  if n == 0:
    raise ValueError(f"tfds data source {source!r} is empty.")
  # Item by item: ArrayRecord reads of one record are cheap next to image decoding, and
  # the mocked sources of tfds.testing.mock_data do not implement batched reads.
  first = source[0]
  image = np.asarray(first[image_key])
  images = np.empty((n,) + image.shape, np.uint8)
  labels = np.empty((n,), np.int32)
  for i in range(n):
    example = first if i == 0 else source[i]
    image = np.asarray(example[image_key])
    if image.shape != images.shape[1:]:
      raise ValueError(
          f"Example {i} of {source!r} has image shape {image.shape}, expected "
          f"{images.shape[1:]}.")
    images[i] = image
    labels[i] = int(example[label_key])
  return images, labels


def _not_prepared_error(data_dir: str | None, cause: Exception) -> FileNotFoundError:
  """Explains what is wrong with the prepared files and how to prepare them once."""
  where = data_dir or "tfds's default data directory ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  data_dir_arg = f", data_dir={data_dir!r}" if data_dir else ""
  problem = f"CIFAR-100 is not prepared as ArrayRecord in {where}."
  try:
    builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
    if builder.is_prepared():
      formats = builder.info.available_file_formats() or {builder.info.file_format}
      if tfds.core.FileFormat.ARRAY_RECORD in formats:
        problem = (f"CIFAR-100 in {builder.data_dir} is prepared as ArrayRecord but could "
                   f"not be read ({cause}); prepare it again.")
      else:
        problem = (f"CIFAR-100 is prepared in {builder.data_dir} as "
                   f"{', '.join(str(f.value) for f in formats)}, but reading without "
                   "TensorFlow needs ArrayRecord.")
  except Exception:  # pylint: disable=broad-except
    # The diagnosis is a courtesy; the instructions below are what matters.
    logging.debug("Could not inspect the CIFAR-100 builder.", exc_info=True)
  return FileNotFoundError(
      problem + "\n" + PREPARE_INSTRUCTIONS.format(data_dir_arg=data_dir_arg))


@register("cifar100")
def load_cifar100(*, data_dir: str | None = None, image_size: int | None = None) -> ImageDataset:
  """Loads CIFAR-100 (fine labels) as numpy arrays; never downloads.

  Args:
    data_dir: tfds data directory holding cifar100 prepared as ArrayRecord (None:
      $TFDS_DATA_DIR or ~/tensorflow_datasets).
    image_size: output side in pixels (None: the native 32).

  Returns:
    An ImageDataset with 50,000 train and 10,000 test images and the 100 fine class
    names in natural language ("aquarium fish").

  Raises:
    FileNotFoundError: if the dataset is not prepared as ArrayRecord in data_dir; the
      message gives the commands that prepare it.
  """
  names, arrays = read_tfds_splits(
      TFDS_NAME, data_dir=data_dir, download=False,
      not_readable=lambda e: _not_prepared_error(data_dir, e))
  (train_images, train_labels), (test_images, test_labels) = arrays["train"], arrays["test"]
  dataset = ImageDataset(
      name="cifar100",
      class_names=tuple(class_names_lib.natural_name(n) for n in names),
      train_images=train_images,
      train_labels=train_labels,
      test_images=test_images,
      test_labels=test_labels,
  )
  return dataset if image_size is None else dataset.resized(image_size)
