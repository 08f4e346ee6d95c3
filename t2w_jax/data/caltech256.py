"""Caltech-256 as a tfds builder over the archive its publishers distribute.

The user puts `256_ObjectCategories.tar` (folders such as
"063.electric-guitar-101/063_0001.jpg") in the tfds manual directory; the builder decodes
the JPEGs with PIL, center-crops them square, resizes them to the configured size and
writes ArrayRecord, so neither preparing nor reading needs TensorFlow. The "257.clutter"
background class is dropped, leaving 256 object categories. Caltech-256 has no official
test split: a seeded, per-category fraction of the images (20% by default) is held out.

`load_from_manual_archive` is the prepare-then-read step shared with TinyImageNet.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import tarfile
import zlib

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from t2w_jax.data import class_names as class_names_lib
from t2w_jax.data.cifar100 import read_tfds_splits
from t2w_jax.data.registry import register
from t2w_jax.data.types import ImageDataset

ARCHIVE_NAME = "256_ObjectCategories.tar"
URL = "https://data.caltech.edu/records/nyy15-4j048"
IMAGE_SIZES = (16, 32, 64)
DEFAULT_IMAGE_SIZE = 32
CLUTTER_CATEGORY = "257.clutter"
_CATEGORY_FOLDER = re.compile(r"^\d{3}\.\S+$")


def default_manual_dir(builder: tfds.core.DatasetBuilder) -> epath.Path:
  """Where tfds looks for manual archives by default: <data_dir>/downloads/manual.

  Args:
    builder: a builder constructed with the user's data_dir.

  Returns:
    The manual directory tfds would use without a DownloadConfig.
  """
  # Same rule as DatasetBuilder._make_download_manager.
  return builder.data_dir_root / "downloads" / "manual"


def missing_archive_error(dataset: str, archive_name: str, manual_dir: epath.Path,
                          url: str) -> FileNotFoundError:
  """The error for an archive that is not where the builder reads it from."""
  return FileNotFoundError(
      f"{dataset} needs the archive {archive_name!r} in the directory {manual_dir}, and "
      f"{manual_dir / archive_name} does not exist. Download {archive_name} from {url} "
      "(as distributed, not extracted) and put it there, or pass manual_dir= to the "
      "loader.")


def fit_square(data: bytes, image_size: int) -> np.ndarray:
  """Decodes an image file, center-crops it square and resizes it.

  Args:
    data: the encoded image (JPEG, PNG, ...).
    image_size: output side in pixels.

  Returns:
    uint8 RGB array (image_size, image_size, 3).
  """
  with Image.open(io.BytesIO(data)) as image:
    # JPEG draft mode decodes at a reduced DCT scale no smaller than asked, which
    # makes preparing tens of thousands of large photos several times faster.
    image.draft("RGB", (image_size, image_size))
    image = image.convert("RGB")
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  image = image.crop((left, top, left + side, top + side))
  resample = Image.Resampling.BOX if side > image_size else Image.Resampling.BICUBIC
  return np.asarray(image.resize((image_size, image_size), resample), np.uint8)


def image_features(image_size: int) -> tfds.features.FeaturesDict:
  """Features of the archive builders: a raw uint8 image and a class label."""
  return tfds.features.FeaturesDict({
      # Raw bytes, not PNG: reading needs no codec and small images stay small.
      "image": tfds.features.Tensor(
          shape=(image_size, image_size, 3), dtype=np.uint8,
          encoding=tfds.features.Encoding.BYTES),
      # Names are set from the archive in _split_generators.
      "label": tfds.features.ClassLabel(),
  })


@dataclasses.dataclass(eq=False)
class Caltech256Config(tfds.core.BuilderConfig):
  """Caltech-256 at one image size.

  Attributes:
    image_size: side of the stored square images.
    test_fraction: fraction of each category held out as the test split.
    split_seed: seed of the held-out choice; fixed so every preparation agrees.
  """

  image_size: int = DEFAULT_IMAGE_SIZE
  test_fraction: float = 0.2
  split_seed: int = 0


def config_name(image_size: int) -> str:
  """Name of the builder config for an image size, e.g. "32px"."""
  return f"{image_size}px"


class Caltech256(tfds.core.GeneratorBasedBuilder):
  """Caltech-256 object categories, clutter dropped, from the manual archive."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: 256 categories, seeded 20% test split."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download {ARCHIVE_NAME} (the archive as distributed, about 1.2 GB) from {URL} "
      "and put it in the manual directory (default <data_dir>/downloads/manual/).")
  BUILDER_CONFIGS = [
      Caltech256Config(name=config_name(s), image_size=s,
                       description=f"Images center-cropped and resized to {s}x{s}.")
      for s in IMAGE_SIZES
  ]
  DEFAULT_CONFIG_NAME = config_name(DEFAULT_IMAGE_SIZE)

  def __init__(self, *, file_format=None, **kwargs):
    # ArrayRecord by default: tfds's default TFRecord needs TensorFlow to write.
    super().__init__(file_format=file_format or tfds.core.FileFormat.ARRAY_RECORD, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Caltech-256 object categories without the clutter class.",
        features=image_features(self.builder_config.image_size),
        supervised_keys=("image", "label"),
        homepage=URL,
    )

  def _split_generators(self, dl_manager):
    archive = dl_manager.manual_dir / ARCHIVE_NAME
    if not archive.exists():
      raise missing_archive_error("Caltech-256", ARCHIVE_NAME, dl_manager.manual_dir, URL)
    with tarfile.open(os.fspath(archive)) as tar:
      members = [m.name for m in tar.getmembers() if m.isfile()]
    folders, train, test = plan_split(
        members, self.builder_config.test_fraction, self.builder_config.split_seed)
    self.info.features["label"].names = [
        class_names_lib.caltech256_name(f) for f in folders]
    logging.info("Caltech-256: %d categories, %d train and %d test images.",
                 len(folders), len(train), len(test))
    return {
        "train": self._generate_examples(archive, train),
        "test": self._generate_examples(archive, test),
    }

  def _generate_examples(self, archive: epath.Path, wanted: dict[str, int]):
    """Yields (member path, example) for the archive members in `wanted`."""
    size = self.builder_config.image_size
    # One sequential pass over the tar per split; members are read as they stream by.
    with tarfile.open(os.fspath(archive)) as tar:
      for member in tar:
        label = wanted.get(member.name)
        if label is None:
          continue
        data = tar.extractfile(member).read()
        try:
          image = fit_square(data, size)
        except (OSError, ValueError) as e:  # PIL's errors for a damaged file.
          raise ValueError(f"Cannot decode {member.name} in {archive}: {e}") from e
        yield member.name, {"image": image, "label": label}


def plan_split(members: list[str], test_fraction: float, seed: int
               ) -> tuple[list[str], dict[str, int], dict[str, int]]:
  """Assigns the archive's images to categories and to train or test.

  Args:
    members: file paths in the tar, e.g. "256_ObjectCategories/001.ak47/001_0001.jpg".
    test_fraction: fraction of each category held out (rounded, at least one image,
      and at least one image left for training).
    seed: seed of the held-out choice.

  Returns:
    (category folders in label order, {train path: label}, {test path: label}).

  Raises:
    ValueError: if the archive holds no category, or one with fewer than two images,
      or test_fraction is not in (0, 1).
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
  by_folder: dict[str, list[str]] = {}
  for path in members:
    parts = path.split("/")
    # Only "<NNN.name>/<image>.jpg": skips stray files and nested copies (056.dog/greg/).
    if len(parts) < 2 or not parts[-1].lower().endswith(".jpg"):
      continue
    folder = parts[-2]
    if not _CATEGORY_FOLDER.match(folder) or folder == CLUTTER_CATEGORY:
      continue
    by_folder.setdefault(folder, []).append(path)
  if not by_folder:
    raise ValueError(
        f"No category folders (like '001.ak47/001_0001.jpg') found in {ARCHIVE_NAME}.")
  folders = sorted(by_folder)
  train: dict[str, int] = {}
  test: dict[str, int] = {}
  for label, folder in enumerate(folders):
    paths = sorted(by_folder[folder])
    if len(paths) < 2:
      raise ValueError(f"Category {folder} has {len(paths)} image(s); need at least 2.")
    n_test = min(max(1, round(test_fraction * len(paths))), len(paths) - 1)
    # Seeded by the folder's name, not its position, so a category's split does not
    # depend on which other categories the archive holds.
    rng = np.random.default_rng([seed, zlib.crc32(folder.encode())])
    held_out = set(rng.choice(len(paths), size=n_test, replace=False).tolist())
    for i, path in enumerate(paths):
      (test if i in held_out else train)[path] = label
  return folders, train, test


def load_from_manual_archive(
    builder_cls: type[tfds.core.GeneratorBasedBuilder],
    *,
    dataset_name: str,
    archive_name: str,
    url: str,
    image_size: int,
    data_dir: str | None,
    manual_dir: str | os.PathLike | None,
) -> ImageDataset:
  """Prepares (once) and reads an archive-backed builder into an ImageDataset.

  Args:
    builder_cls: the builder; its configs are named by `config_name(size)`.
    dataset_name: the registry name, stored in the ImageDataset.
    archive_name: the file the builder needs in the manual directory.
    url: where users get the archive, for the error message.
    image_size: output side; read from the config of that size, else from the
      smallest larger one (else the largest) and resized in memory.
    data_dir: tfds data directory (None: tfds's default).
    manual_dir: directory holding the archive (None: <data_dir>/downloads/manual).

  Returns:
    The dataset with class names as stored by the builder.

  Raises:
    ValueError: if image_size is not positive.
    FileNotFoundError: if the dataset is not prepared and the archive is missing.
  """
  if image_size <= 0:
    raise ValueError(f"image_size must be positive, got {image_size}.")
  sizes = sorted(c.image_size for c in builder_cls.BUILDER_CONFIGS)
  stored_size = min((s for s in sizes if s >= image_size), default=sizes[-1])
  config = config_name(stored_size)
  builder = builder_cls(config=config, data_dir=data_dir)
  manual = epath.Path(manual_dir) if manual_dir else default_manual_dir(builder)
  if not builder.is_prepared():
    # Checked here, before tfds, whose own message only says the directory is empty.
    if not (manual / archive_name).exists():
      raise missing_archive_error(dataset_name, archive_name, manual, url)
    logging.info("Preparing %s/%s from %s (once).", builder.name, config,
                 manual / archive_name)
  names, arrays = read_tfds_splits(
      f"{builder.name}/{config}",
      data_dir=data_dir,
      # "Download" here only runs the builder over the local archive.
      download=True,
      download_and_prepare_kwargs={
          # No GCS probe: preparing must never reach for the network.
          "download_config": tfds.download.DownloadConfig(
              manual_dir=os.fspath(manual), try_download_gcs=False)},
  )
  (train_images, train_labels), (test_images, test_labels) = arrays["train"], arrays["test"]
  dataset = ImageDataset(
      name=dataset_name,
      class_names=tuple(names),
      train_images=train_images,
      train_labels=train_labels,
      test_images=test_images,
      test_labels=test_labels,
  )
  return dataset.resized(image_size)


@register("caltech256")
def load_caltech256(*, data_dir: str | None = None, image_size: int | None = None,
                    manual_dir: str | os.PathLike | None = None) -> ImageDataset:
  """Loads Caltech-256 (256 categories, seeded 80/20 split), preparing it once.

  Args:
    data_dir: tfds data directory for the prepared ArrayRecord files (None: tfds's
      default, $TFDS_DATA_DIR or ~/tensorflow_datasets).
    image_size: side of the square images (None: 32); prepared at the nearest
      size in IMAGE_SIZES not below it, and resized in memory if it is not one.
    manual_dir: directory holding 256_ObjectCategories.tar (None:
      <data_dir>/downloads/manual).

  Returns:
    An ImageDataset with natural class names ("electric guitar").

  Raises:
    FileNotFoundError: if not prepared and the archive is not in manual_dir; the
      message names the file and the directory.
    ValueError: for a non-positive image_size.
  """
  return load_from_manual_archive(
      Caltech256,
      dataset_name="caltech256",
      archive_name=ARCHIVE_NAME,
      url=URL,
      image_size=image_size or DEFAULT_IMAGE_SIZE,
      data_dir=data_dir,
      manual_dir=manual_dir,
  )
