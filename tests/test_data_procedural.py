"""Tests of the procedural shapes dataset, its tfds builder and the registry."""

import colorsys
import os
import sys

import numpy as np
import pytest

from t2w_jax import data
from t2w_jax.data import procedural
from t2w_jax.data import registry
from t2w_jax.data import shapes_builder
from t2w_jax.data.types import ImageDataset
from t2w_jax.data.types import resize_images

# Tiny counts keep every tfds round trip to about a second.
_TINY = dict(train_per_class=2, test_per_class=1)


def test_class_names_are_colour_times_shape():
  names = procedural.class_names()
  assert len(names) == 100 == len(set(names))
  assert names[0] == "red circle"
  for label, name in enumerate(names):
    colour, shape = name.split(" ")
    c, s = procedural.split_label(label)
    assert (procedural.COLOUR_NAMES[c], procedural.SHAPE_NAMES[s]) == (colour, shape)
  # Every colour meets every shape: the names compose.
  assert {n.split()[0] for n in names} == set(procedural.COLOUR_NAMES)
  assert {n.split()[1] for n in names} == set(procedural.SHAPE_NAMES)


def test_same_seed_same_bytes_other_seed_other_bytes():
  a_img, a_lab = procedural.generate_split("train", seed=3, per_class=3)
  b_img, b_lab = procedural.generate_split("train", seed=3, per_class=3)
  assert a_img.tobytes() == b_img.tobytes()
  np.testing.assert_array_equal(a_lab, b_lab)
  c_img, _ = procedural.generate_split("train", seed=4, per_class=3)
  assert a_img.tobytes() != c_img.tobytes()
  t_img, _ = procedural.generate_split("test", seed=3, per_class=3)
  assert a_img.tobytes() != t_img.tobytes()


def test_split_shapes_dtypes_and_balance():
  images, labels = procedural.generate_split("train", per_class=4)
  assert images.shape == (400, 32, 32, 3) and images.dtype == np.uint8
  assert labels.shape == (400,) and labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(labels, minlength=100), np.full(100, 4))
  # Shuffled, not sorted by class.
  assert not np.all(np.diff(labels) >= 0)
  # Images differ from one another (not a constant fill).
  assert len({img.tobytes() for img in images}) == 400
  assert images.std() > 20


@pytest.mark.parametrize("shape", procedural.SHAPE_NAMES)
def test_shape_sdfs(shape):
  x, y = np.meshgrid(np.linspace(-1.2, 1.2, 121), np.linspace(-1.2, 1.2, 121))
  inside = procedural.shape_sdf(shape, x, y) < 0
  area = inside.mean() * 2.4 ** 2
  assert 0.5 < area < 2.6, area  # Comparable sizes, none degenerate.
  # Everything fits in the unit disc (up to the anti-aliasing margin).
  assert not inside[np.hypot(x, y) > 1.1].any()
  # Far away is outside, with a distance that grows.
  d = procedural.shape_sdf(shape, np.array([3.0, 5.0]), np.array([0.0, 0.0]))
  assert 0 < d[0] < d[1]
  if shape == "ring":
    assert procedural.shape_sdf(shape, 0.0, 0.0) > 0  # The hole.
  elif shape != "crescent":
    assert procedural.shape_sdf(shape, 0.0, 0.0) < 0


def test_shapes_differ_from_each_other():
  x, y = np.meshgrid(np.linspace(-1, 1, 101), np.linspace(-1, 1, 101))
  masks = [procedural.shape_sdf(s, x, y) < 0 for s in procedural.SHAPE_NAMES]
  for i in range(len(masks)):
    for j in range(i + 1, len(masks)):
      iou = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
      assert iou < 0.9, (procedural.SHAPE_NAMES[i], procedural.SHAPE_NAMES[j], iou)


@pytest.mark.parametrize("name,hue", [("red circle", 0.0), ("orange square", 0.075),
                                      ("yellow circle", 0.15)])
def test_target_has_its_colour(name, hue):
  # Without clutter, noise or shading, the target's colour must show: many
  # pixels more saturated than any background can be (backgrounds stay below
  # 0.72; these colours above 0.75), with the class's hue, and none of blue.
  cfg = procedural.RenderConfig(max_distractors=0, noise_std=0.0, shade_max=0.0)
  label = procedural.class_names().index(name)
  images = procedural.render(np.full(16, label), np.random.default_rng(0), cfg)
  for img in images.astype(np.float32) / 255.0:
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in img.reshape(-1, 3)])
    saturated = hsv[:, 1] > 0.72
    def near(h):
      return np.abs((hsv[:, 0] - h + 0.5) % 1.0 - 0.5) < 0.06
    assert (saturated & near(hue)).sum() >= 40
    assert not (saturated & near(0.64)).any()


def test_render_rejects_bad_input():
  with pytest.raises(ValueError, match="labels must lie in"):
    procedural.render(np.array([0, 100]), np.random.default_rng(0))
  with pytest.raises(ValueError, match="unknown split"):
    procedural.generate_split("valid", per_class=1)
  with pytest.raises(ValueError, match="per_class"):
    procedural.generate_split("train", per_class=0)
  with pytest.raises(ValueError, match="max_distractors"):
    procedural.RenderConfig(max_distractors=-1)
  with pytest.raises(KeyError, match="unknown shape 'blob'"):
    procedural.shape_sdf("blob", 0.0, 0.0)


def test_render_config_changes_images_and_cache_name():
  labels = np.arange(10)
  plain = procedural.render(labels, np.random.default_rng(0))
  clean = procedural.render(labels, np.random.default_rng(0),
                            procedural.RenderConfig(noise_std=0.0))
  assert plain.tobytes() != clean.tobytes()
  small = procedural.render(labels, np.random.default_rng(0),
                            procedural.RenderConfig(image_size=8))
  assert small.shape == (10, 8, 8, 3)
  default = procedural.RenderConfig()
  assert shapes_builder.config_name(0, 500, 100, default) == "default"
  names = {shapes_builder.config_name(0, 2, 1, default),
           shapes_builder.config_name(1, 2, 1, default),
           shapes_builder.config_name(0, 2, 1, procedural.RenderConfig(noise_std=0.0))}
  assert len(names) == 3 and "default" not in names


def test_tfds_round_trip_and_cache(tmp_path, monkeypatch):
  ds = data.load_dataset("shapes", data_dir=str(tmp_path), **_TINY)
  assert isinstance(ds, ImageDataset)
  assert ds.name == "shapes" and ds.num_classes == 100
  assert ds.class_names == procedural.class_names()
  for split, per_class in (("train", 2), ("test", 1)):
    images, labels = procedural.generate_split(split, per_class=per_class)
    np.testing.assert_array_equal(getattr(ds, f"{split}_images"), images)
    np.testing.assert_array_equal(getattr(ds, f"{split}_labels"), labels)
  assert ds.train_labels.dtype == np.int32 and ds.train_images.dtype == np.uint8
  # Written as ArrayRecord, class names in the ClassLabel, and no TensorFlow.
  builder = shapes_builder.make_builder(data_dir=str(tmp_path), **_TINY)
  files = os.listdir(builder.data_dir)
  assert any(".array_record" in f for f in files), files
  assert builder.info.features["label"].names == list(procedural.class_names())
  assert "tensorflow" not in sys.modules

  # Later loads never regenerate: from the .npz, then from the ArrayRecords.
  def fail(*args, **kwargs):
    raise AssertionError("regenerated")
  monkeypatch.setattr(procedural, "generate_split", fail)
  again = data.load_dataset("shapes", data_dir=str(tmp_path), **_TINY)
  np.testing.assert_array_equal(again.train_images, ds.train_images)
  cache = os.path.join(builder.data_dir, "t2w_arrays.npz")
  os.remove(cache)
  from_records = data.load_dataset("shapes", data_dir=str(tmp_path), **_TINY)
  np.testing.assert_array_equal(from_records.test_images, ds.test_images)
  np.testing.assert_array_equal(from_records.test_labels, ds.test_labels)
  assert os.path.exists(cache)  # Rewritten.
  assert not [f for f in os.listdir(builder.data_dir) if f.endswith(".tmp")]


def test_env_var_sets_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv(registry.DATA_DIR_ENV, str(tmp_path / "env_dir"))
  assert registry.default_data_dir() == str(tmp_path / "env_dir")
  data.load_dataset("shapes", seed=5, cache_arrays=False, **_TINY)
  variant = tmp_path / "env_dir" / "t2w_shapes"
  assert variant.is_dir()
  assert not list(variant.rglob("t2w_arrays.npz"))


def test_load_dataset_resizes(tmp_path):
  native = data.load_dataset("shapes", data_dir=str(tmp_path), **_TINY)
  small = data.load_dataset("shapes", data_dir=str(tmp_path), image_size=16, **_TINY)
  assert small.train_images.shape == (200, 16, 16, 3)
  assert small.test_images.shape == (100, 16, 16, 3)
  np.testing.assert_array_equal(small.train_images,
                                resize_images(native.train_images, 16))
  np.testing.assert_array_equal(small.train_labels, native.train_labels)
  odd = data.load_dataset("shapes", data_dir=str(tmp_path), image_size=24, **_TINY)
  assert odd.test_images.shape == (100, 24, 24, 3) and odd.test_images.dtype == np.uint8
  with pytest.raises(ValueError, match="image_size"):
    data.load_dataset("shapes", data_dir=str(tmp_path), image_size=0, **_TINY)


def test_resize_images_is_area_average():
  img = np.zeros((1, 4, 4, 3), np.uint8)
  img[0, :2, :2] = 100
  img[0, 0, 0] = 104  # Block mean 101.
  img[0, 2:, 2:] = 255
  out = resize_images(img, 2)
  np.testing.assert_array_equal(out[0, :, :, 0], [[101, 0], [0, 255]])
  const = np.full((2, 10, 10, 3), 77, np.uint8)
  assert (resize_images(const, 4) == 77).all()  # Through PIL.
  assert resize_images(const, 10) is const
  # Float images in [0, 1] follow the same rule (within one uint8 step).
  as_float = resize_images(img.astype(np.float32) / 255, 2)
  assert as_float.dtype == np.float32
  np.testing.assert_allclose(as_float * 255, out, atol=1.0)
  with pytest.raises(ValueError, match="uint8 or float32"):
    resize_images(const.astype(np.float64), 5)


def test_unknown_dataset_name():
  with pytest.raises(ValueError, match=r"unknown dataset 'foo'; known: .*shapes"):
    data.load_dataset("foo")
  assert "shapes" in data.known_datasets()


def test_unknown_class_name():
  ds = _toy_dataset()
  assert ds.class_index("blue star") == 1
  with pytest.raises(KeyError) as e:
    ds.class_index("blue stra")
  message = str(e.value)
  assert "'blue stra'" in message and "Did you mean 'blue star'" in message
  assert "'red circle'" in message


def _toy_dataset(size=8, name="toy"):
  rng = np.random.default_rng(0)
  return ImageDataset(
      name=name, class_names=("red circle", "blue star"),
      train_images=rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8),
      train_labels=np.array([0, 1, 0, 1]),
      test_images=rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8),
      test_labels=np.array([1, 0]))


def test_image_dataset_validates():
  ds = _toy_dataset()
  assert ds.train_labels.dtype == np.int32 and ds.image_shape == (8, 8, 3)
  with pytest.raises(ValueError, match="uint8"):
    ImageDataset("bad", ("a", "b"), np.zeros((2, 4, 4, 3), np.float32),
                 np.zeros(2, np.int32), np.zeros((1, 4, 4, 3), np.uint8),
                 np.zeros(1, np.int32))
  with pytest.raises(ValueError, match="outside"):
    ImageDataset("bad", ("a", "b"), np.zeros((2, 4, 4, 3), np.uint8),
                 np.array([0, 2]), np.zeros((1, 4, 4, 3), np.uint8),
                 np.zeros(1, np.int32))
  with pytest.raises(ValueError, match="duplicate"):
    ImageDataset("bad", ("a", "a"), np.zeros((2, 4, 4, 3), np.uint8),
                 np.zeros(2, np.int32), np.zeros((1, 4, 4, 3), np.uint8),
                 np.zeros(1, np.int32))


def test_register_custom_loader(monkeypatch):
  monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))
  seen = {}

  @data.register("toy")
  def load_toy(*, data_dir, image_size, flavour="plain"):
    seen.update(data_dir=data_dir, image_size=image_size, flavour=flavour)
    return _toy_dataset()

  ds = data.load_dataset("toy", data_dir="~/somewhere", image_size=4, flavour="x")
  assert ds.image_shape == (4, 4, 3)  # Resized by the registry.
  assert seen == dict(data_dir=os.path.expanduser("~/somewhere"), image_size=4,
                      flavour="x")
  assert "toy" in data.known_datasets()
  data.register("toy")(load_toy)  # Same function again: fine.
  with pytest.raises(ValueError, match="already registered"):
    data.register("toy")(lambda **kw: _toy_dataset())

  @data.register("not_a_dataset")
  def load_bad(**kwargs):
    return "nope"
  with pytest.raises(TypeError, match="not an ImageDataset"):
    data.load_dataset("not_a_dataset")
