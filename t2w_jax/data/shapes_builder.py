"""The procedural shapes dataset as a tfds builder, and its registered loader.

`T2wShapes` (tfds name "t2w_shapes") renders `procedural.generate_split` into
ArrayRecord files; images are a uint8 `Tensor` feature stored as raw bytes, so neither writing nor
reading needs TensorFlow. `load_shapes` (registered as "shapes") prepares the
builder once in the data dir, reads it back by random access
(`as_data_source`), and keeps the stacked numpy arrays in an .npz beside the
ArrayRecord files so later loads take a fraction of a second.

Any change to the rendering must bump `T2wShapes.VERSION`: the cache is keyed
by config name and version only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from t2w_jax.data import procedural
from t2w_jax.data.registry import default_data_dir
from t2w_jax.data.registry import register
from t2w_jax.data.types import ImageDataset

DATASET_NAME = "shapes"
TRAIN_PER_CLASS = 500
TEST_PER_CLASS = 100
_ARRAYS_FILE = "t2w_arrays.npz"


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """Builder config: seed, images per class and the renderer's knobs."""
  seed: int = 0
  train_per_class: int = TRAIN_PER_CLASS
  test_per_class: int = TEST_PER_CLASS
  render: procedural.RenderConfig = dataclasses.field(
      default_factory=procedural.RenderConfig)


def config_name(seed: int, train_per_class: int, test_per_class: int,
                render: procedural.RenderConfig) -> str:
  """Returns a config name that identifies the rendered contents.

  "default" for the defaults; otherwise the seed, the counts and a digest of
  the render knobs, so different knobs never share a cache.
  """
  if (seed, train_per_class, test_per_class, render) == (
      0, TRAIN_PER_CLASS, TEST_PER_CLASS, procedural.RenderConfig()):
    return "default"
  digest = hashlib.sha256(repr(render).encode()).hexdigest()[:10]
  return f"seed{seed}_train{train_per_class}_test{test_per_class}_r{digest}"


_DEFAULT_CONFIG = ShapesConfig(
    name="default",
    description=(f"{procedural.NUM_CLASSES} colour x shape classes, 32x32, "
                 f"{TRAIN_PER_CLASS} train and {TEST_PER_CLASS} test images per "
                 "class, seed 0."))


class T2wShapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes on cluttered backgrounds; class = '<colour> <shape>'."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [_DEFAULT_CONFIG]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.render.image_size
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # Raw bytes: the default encoding of a uint8 Tensor is one int64
            # varint per value, several times slower to write and read.
            "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(names=procedural.class_names()),
        }),
        supervised_keys=("image", "label"),
        # Keep the generator's (already shuffled) order, so a read-back equals
        # `procedural.generate_split` element for element.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {
        "train": self._generate_examples("train"),
        "test": self._generate_examples("test"),
    }

  def _generate_examples(self, split):
    cfg = self.builder_config
    per_class = cfg.train_per_class if split == "train" else cfg.test_per_class
    images, labels = procedural.generate_split(
        split, seed=cfg.seed, per_class=per_class, config=cfg.render)
    for i in range(labels.size):
      yield i, {"image": images[i], "label": int(labels[i])}


def make_builder(*, data_dir: str | None = None, seed: int = 0,
                 train_per_class: int = TRAIN_PER_CLASS,
                 test_per_class: int = TEST_PER_CLASS,
                 render_config: procedural.RenderConfig | None = None) -> T2wShapes:
  """Returns the (maybe unprepared) ArrayRecord builder for these settings.

  Args:
    data_dir: tfds data dir (None: $T2W_DATA_DIR or ~/.cache/t2w_jax/tfds).
    seed: dataset seed.
    train_per_class: train images per class.
    test_per_class: test images per class.
    render_config: renderer knobs (None: the defaults).

  Returns:
    The builder.
  """
  for arg, value in (("train_per_class", train_per_class),
                     ("test_per_class", test_per_class)):
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"{arg} must be a positive int, got {value!r}")
  render_config = render_config or procedural.RenderConfig()
  name = config_name(seed, train_per_class, test_per_class, render_config)
  # tfds refuses a new config object named like a predefined one.
  config = _DEFAULT_CONFIG if name == "default" else ShapesConfig(
      name=name, seed=seed, train_per_class=train_per_class,
      test_per_class=test_per_class, render=render_config)
  return T2wShapes(config=config, data_dir=data_dir or default_data_dir(),
                   file_format=tfds.core.FileFormat.ARRAY_RECORD)


def _read_arrays_cache(path: str, expected_sizes: dict[str, int]) -> dict | None:
  """Returns the cached arrays, or None if missing or not what we expect."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    logging.warning("Ignoring unreadable cache %s: %s", path, e)
    return None
  ok = (tuple(arrays.get("class_names", ())) == procedural.class_names()
        and all(arrays.get(f"{s}_labels", np.empty(0)).shape == (n,)
                and arrays.get(f"{s}_images", np.empty(0)).shape[:1] == (n,)
                for s, n in expected_sizes.items()))
  if not ok:
    logging.warning("Ignoring stale cache %s.", path)
    return None
  return arrays


def _write_arrays_cache(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes the arrays as an uncompressed .npz, atomically."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npz.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _read_split(builder: T2wShapes, split: str) -> tuple[np.ndarray, np.ndarray]:
  source = builder.as_data_source(split=split)
  examples = source.__getitems__(range(len(source)))
  images = np.stack([e["image"] for e in examples]).astype(np.uint8, copy=False)
  labels = np.fromiter((e["label"] for e in examples), np.int32, len(examples))
  return images, labels


@register(DATASET_NAME)
def load_shapes(*, data_dir: str | None = None, image_size: int | None = None,
                seed: int = 0, train_per_class: int = TRAIN_PER_CLASS,
                test_per_class: int = TEST_PER_CLASS,
                render_config: procedural.RenderConfig | None = None,
                cache_arrays: bool = True) -> ImageDataset:
  """Loads the procedural shapes dataset, generating it on first use.

  Args:
    data_dir: tfds data dir (None: $T2W_DATA_DIR or ~/.cache/t2w_jax/tfds).
    image_size: ignored here; `load_dataset` resizes the native 32x32 images.
    seed: dataset seed; same seed, same bytes.
    train_per_class: train images per class.
    test_per_class: test images per class.
    render_config: renderer knobs (None: the defaults).
    cache_arrays: keep (and use) an .npz of the stacked arrays beside the
      ArrayRecord files.

  Returns:
    An ImageDataset named "shapes" with 100 classes "<colour> <shape>".
  """
  del image_size  # The registry resizes.
  builder = make_builder(data_dir=data_dir, seed=seed,
                         train_per_class=train_per_class,
                         test_per_class=test_per_class,
                         render_config=render_config)
  sizes = {"train": train_per_class * procedural.NUM_CLASSES,
           "test": test_per_class * procedural.NUM_CLASSES}
  cache = os.path.join(os.fspath(builder.data_dir), _ARRAYS_FILE)
  arrays = _read_arrays_cache(cache, sizes) if cache_arrays else None
  if arrays is None:
    # Not builder.is_prepared(): it warns about a missing folder.
    if not os.path.exists(os.path.join(os.fspath(builder.data_dir), "dataset_info.json")):
      logging.info("Generating the shapes dataset in %s.", builder.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    arrays = {"class_names": np.array(builder.info.features["label"].names)}
    for split in sizes:
      arrays[f"{split}_images"], arrays[f"{split}_labels"] = _read_split(builder, split)
    if cache_arrays:
      _write_arrays_cache(cache, arrays)
  return ImageDataset(
      name=DATASET_NAME,
      class_names=tuple(str(n) for n in arrays["class_names"]),
      train_images=arrays["train_images"],
      train_labels=arrays["train_labels"],
      test_images=arrays["test_images"],
      test_labels=arrays["test_labels"],
  )
