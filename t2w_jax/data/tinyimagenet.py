"""TinyImageNet (200 classes) as a tfds builder over the archive its publishers distribute.

The user puts `tiny-imagenet-200.zip` in the tfds manual directory. Inside it,
tiny-imagenet-200/wnids.txt lists the 200 WordNet ids, words.txt glosses every id
("n01443537<TAB>goldfish, Carassius auratus"), train/<wnid>/images/*.JPEG holds 500
images per class and val/images/*.JPEG with val/val_annotations.txt holds 50 labelled
images per class. The test images there are unlabelled, so the val images serve as our
test split. Images (64x64) are decoded with PIL and resized to the configured size;
neither preparing nor reading needs TensorFlow.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import zipfile

from etils import epath
import tensorflow_datasets as tfds

from t2w_jax.data import class_names as class_names_lib
from t2w_jax.data.caltech256 import config_name
from t2w_jax.data.caltech256 import fit_square
from t2w_jax.data.caltech256 import image_features
from t2w_jax.data.caltech256 import load_from_manual_archive
from t2w_jax.data.caltech256 import missing_archive_error
from t2w_jax.data.registry import register
from t2w_jax.data.types import ImageDataset

ARCHIVE_NAME = "tiny-imagenet-200.zip"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
IMAGE_SIZES = (16, 32, 64)
DEFAULT_IMAGE_SIZE = 32
_ROOT = "tiny-imagenet-200"


@dataclasses.dataclass(eq=False)
class TinyImagenetConfig(tfds.core.BuilderConfig):
  """TinyImageNet at one image size.

  Attributes:
    image_size: side of the stored square images (the originals are 64).
  """

  image_size: int = DEFAULT_IMAGE_SIZE


def read_class_names(wnids_text: str, words_text: str) -> tuple[list[str], list[str]]:
  """The class ids in label order and their natural names.

  Args:
    wnids_text: contents of wnids.txt, one WordNet id a line.
    words_text: contents of words.txt, "<wnid>\\t<lemma>, <lemma>, ..." a line.

  Returns:
    (wnids sorted, names): each name is the synset's first lemma ("goldfish"); names
    shared by two classes are qualified by another lemma or, failing that, the id.

  Raises:
    ValueError: if wnids.txt is empty or names an id that words.txt lacks.
  """
  wnids = sorted({line.strip() for line in wnids_text.splitlines() if line.strip()})
  if not wnids:
    raise ValueError("wnids.txt lists no class.")
  glosses = {}
  for line in words_text.splitlines():
    wnid, sep, gloss = line.partition("\t")
    if sep:
      glosses[wnid.strip()] = gloss
  missing = [w for w in wnids if w not in glosses]
  if missing:
    raise ValueError(f"words.txt has no entry for {len(missing)} id(s), e.g. {missing[:3]}.")
  lemmas = [[class_names_lib.natural_name(l) for l in glosses[w].split(",") if l.strip()]
            for w in wnids]
  empty = [w for w, l in zip(wnids, lemmas) if not l]
  if empty:
    raise ValueError(f"words.txt gives no lemma for {empty[:3]}.")
  names = class_names_lib.unique_names(
      [l[0] for l in lemmas], [l[1:] + [w] for l, w in zip(lemmas, wnids)])
  return wnids, names


def plan_split(archive_names: list[str], val_annotations: str, wnids: list[str]
               ) -> tuple[dict[str, int], dict[str, int]]:
  """Maps the archive's train and val images to labels.

  Args:
    archive_names: member names of the zip.
    val_annotations: contents of val/val_annotations.txt ("val_0.JPEG<TAB>n03444034
      <TAB>0<TAB>32<TAB>44<TAB>62" a line).
    wnids: class ids in label order.

  Returns:
    ({train member: label}, {val member: label}).

  Raises:
    ValueError: if a split comes out empty or val annotations name an unknown class
      or a missing file.
  """
  label_of = {w: i for i, w in enumerate(wnids)}
  train = {}
  for name in archive_names:
    parts = name.split("/")
    # tiny-imagenet-200/train/<wnid>/images/<file>.JPEG
    if (len(parts) == 5 and parts[1] == "train" and parts[3] == "images"
        and parts[4].upper().endswith(".JPEG") and parts[2] in label_of):
      train[name] = label_of[parts[2]]
  present = set(archive_names)
  test = {}
  for line in val_annotations.splitlines():
    fields = line.split("\t")
    if len(fields) < 2:
      continue
    member = posixpath.join(_ROOT, "val", "images", fields[0].strip())
    wnid = fields[1].strip()
    if wnid not in label_of:
      raise ValueError(f"val_annotations.txt labels {fields[0]} with unknown class {wnid}.")
    if member not in present:
      raise ValueError(f"val_annotations.txt names {member}, which the archive lacks.")
    test[member] = label_of[wnid]
  if not train or not test:
    raise ValueError(
        f"{ARCHIVE_NAME} gave {len(train)} train and {len(test)} val images; expected "
        f"{_ROOT}/train/<wnid>/images/*.JPEG and {_ROOT}/val/images/*.JPEG.")
  return train, test


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
  """TinyImageNet-200 from the manual archive; its val images are the test split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: 200 classes, val used as test."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download {ARCHIVE_NAME} (about 240 MB) from {URL} and put it, unextracted, in "
      "the manual directory (default <data_dir>/downloads/manual/).")
  BUILDER_CONFIGS = [
      TinyImagenetConfig(name=config_name(s), image_size=s,
                         description=f"Images resized to {s}x{s}.")
      for s in IMAGE_SIZES
  ]
  DEFAULT_CONFIG_NAME = config_name(DEFAULT_IMAGE_SIZE)

  def __init__(self, *, file_format=None, **kwargs):
    # ArrayRecord by default: tfds's default TFRecord needs TensorFlow to write.
    super().__init__(file_format=file_format or tfds.core.FileFormat.ARRAY_RECORD, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="TinyImageNet: 200 ImageNet classes, 64x64 images, resized.",
        features=image_features(self.builder_config.image_size),
        supervised_keys=("image", "label"),
        homepage="https://www.kaggle.com/c/tiny-imagenet",
    )

  def _split_generators(self, dl_manager):
    archive = dl_manager.manual_dir / ARCHIVE_NAME
    if not archive.exists():
      raise missing_archive_error("TinyImageNet", ARCHIVE_NAME, dl_manager.manual_dir, URL)
    with zipfile.ZipFile(os.fspath(archive)) as zf:
      try:
        wnids_text = zf.read(f"{_ROOT}/wnids.txt").decode("utf-8")
        words_text = zf.read(f"{_ROOT}/words.txt").decode("utf-8")
        val_annotations = zf.read(f"{_ROOT}/val/val_annotations.txt").decode("utf-8")
      except KeyError as e:
        raise ValueError(f"{archive} is not the TinyImageNet archive: {e}") from e
      wnids, names = read_class_names(wnids_text, words_text)
      train, test = plan_split(zf.namelist(), val_annotations, wnids)
    self.info.features["label"].names = names
    logging.info("TinyImageNet: %d classes, %d train and %d test images.",
                 len(names), len(train), len(test))
    return {
        "train": self._generate_examples(archive, train),
        "test": self._generate_examples(archive, test),
    }

  def _generate_examples(self, archive: epath.Path, wanted: dict[str, int]):
    """Yields (member path, example) for the archive members in `wanted`."""
    size = self.builder_config.image_size
    with zipfile.ZipFile(os.fspath(archive)) as zf:
      for member in sorted(wanted):
        try:
          image = fit_square(zf.read(member), size)
        except (OSError, ValueError) as e:  # PIL's errors for a damaged file.
          raise ValueError(f"Cannot decode {member} in {archive}: {e}") from e
        yield member, {"image": image, "label": wanted[member]}


@register("tinyimagenet")
def load_tinyimagenet(*, data_dir: str | None = None, image_size: int | None = None,
                      manual_dir: str | os.PathLike | None = None) -> ImageDataset:
  """Loads TinyImageNet-200 (train; val as test), preparing it once.

  Args:
    data_dir: tfds data directory for the prepared ArrayRecord files (None: tfds's
      default, $TFDS_DATA_DIR or ~/tensorflow_datasets).
    image_size: side of the square images (None: 32); prepared at the nearest
      size in IMAGE_SIZES not below it, and resized in memory if it is not one.
    manual_dir: directory holding tiny-imagenet-200.zip (None:
      <data_dir>/downloads/manual).

  Returns:
    An ImageDataset with 100,000 train and 10,000 test images and the first WordNet
    lemma of each class as its name ("goldfish").

  Raises:
    FileNotFoundError: if not prepared and the archive is not in manual_dir; the
      message names the file and the directory.
    ValueError: for a non-positive image_size.
  """
  return load_from_manual_archive(
      TinyImagenet,
      dataset_name="tinyimagenet",
      archive_name=ARCHIVE_NAME,
      url=URL,
      image_size=image_size or DEFAULT_IMAGE_SIZE,
      data_dir=data_dir,
      manual_dir=manual_dir,
  )
