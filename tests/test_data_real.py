"""Tests of the real-dataset loaders, all offline on tiny data made here.

CIFAR-100 runs under `tfds.testing.mock_data` with metadata files written by the test
(MockPolicy.USE_FILES), so the loader sees real split and label-name metadata and random
examples. Caltech-256 and TinyImageNet are prepared for real from tiny archives laid out
as their publishers distribute them, with colour-coded JPEGs so every stored image can
be traced back to its file. Fashion-MNIST reads fake IDX files. An autouse fixture makes
any attempt at the network fail at once.
"""

import gzip
import io
import os
import re
import socket
import tarfile
import time
import zipfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from t2w_jax.data import caltech256
from t2w_jax.data import cifar100
from t2w_jax.data import class_names
from t2w_jax.data import fashion_mnist
from t2w_jax.data import registry
from t2w_jax.data import tinyimagenet

tfds.disable_progress_bar()


class NetworkAttempted(RuntimeError):
  pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Any socket connection or tfds download fails immediately instead of hanging."""

  def refuse(*args, **kwargs):
    del args, kwargs
    raise NetworkAttempted("a test tried to reach the network")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket.socket, "connect_ex", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(tfds.download.DownloadManager, "download", refuse)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", refuse)


def test_download_guard_fails_fast(tmp_path):
  start = time.monotonic()
  with pytest.raises(Exception) as info:
    tfds.builder("mnist", data_dir=str(tmp_path)).download_and_prepare()
  # tfds may wrap the error; what matters is that the guard fired, and fast.
  chain, e = [], info.value
  while e is not None:
    chain.append(e)
    e = e.__cause__ or e.__context__
  assert any(isinstance(x, NetworkAttempted) for x in chain), chain
  assert time.monotonic() - start < 20
  with pytest.raises(NetworkAttempted):
    socket.create_connection(("example.org", 80), timeout=1)


# ---------------------------------------------------------------- class names


@pytest.mark.parametrize("raw, expected", [
    ("aquarium_fish", "aquarium fish"),
    ("  maple__tree ", "maple tree"),
    ("sweet pepper", "sweet pepper"),
])
def test_natural_name(raw, expected):
  assert class_names.natural_name(raw) == expected
  assert class_names.natural_name(expected) == expected


def test_natural_name_rejects_empty():
  with pytest.raises(ValueError, match="empty"):
    class_names.natural_name(" __ ")


@pytest.mark.parametrize("folder, expected", [
    ("063.electric-guitar-101", "electric guitar"),
    ("001.ak47", "ak47"),
    ("232.t-shirt", "t-shirt"),
    ("104.homer-simpson", "homer simpson"),
    ("253.faces-easy-101", "face"),
    ("145.motorbikes-101", "motorbike"),
    ("182.self-propelled-lawn-mower", "self-propelled lawn mower"),
])
def test_caltech256_name(folder, expected):
  assert class_names.caltech256_name(folder) == expected
  assert class_names.caltech256_name(expected) == expected  # Idempotent.


@pytest.mark.parametrize("gloss, expected", [
    ("goldfish, Carassius auratus", "goldfish"),
    ("Egyptian cat", "Egyptian cat"),
    ("sea_slug , nudibranch", "sea slug"),
])
def test_wordnet_first_lemma(gloss, expected):
  assert class_names.wordnet_first_lemma(gloss) == expected


def test_fashion_mnist_names():
  assert fashion_mnist.CLASS_NAMES == (
      "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
      "bag", "ankle boot")


def test_unique_names_qualifies_only_collisions():
  names = class_names.unique_names(
      ["crane", "goldfish", "crane"], [["wading bird"], ["carp"], ["n03126707"]])
  assert names == ["crane (wading bird)", "goldfish", "crane (n03126707)"]
  with pytest.raises(ValueError, match="unique"):
    class_names.unique_names(["a", "a"], [[], []])


# ---------------------------------------------------------------- CIFAR-100


def _write_cifar100_metadata(root, fine_names):
  """Writes the metadata files that MockPolicy.USE_FILES reads: splits and names."""
  builder = tfds.builder("cifar100", data_dir=str(root), file_format="array_record")
  builder.info.features["label"].names = fine_names
  builder.info.features["coarse_label"].names = [f"coarse_{i}" for i in range(20)]
  splits = []
  for split, n in (("train", 50_000), ("test", 10_000)):
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name="cifar100", split=split,
        filetype_suffix="array_record")
    splits.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[n], num_bytes=0, filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_dir)


def test_cifar100_under_mock_data(tmp_path):
  fine = ["aquarium_fish", "maple_tree", "sweet_pepper"] + [f"thing_{i}" for i in range(97)]
  _write_cifar100_metadata(tmp_path / "meta", fine)
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(tmp_path / "meta")):
    ds = registry.load_dataset("cifar100", data_dir=str(tmp_path / "ignored"))
    small = cifar100.load_cifar100(data_dir=str(tmp_path / "ignored"), image_size=16)
  assert ds.name == "cifar100"
  assert len(ds.class_names) == 100
  assert ds.class_names[:3] == ("aquarium fish", "maple tree", "sweet pepper")
  assert ds.class_names[3] == "thing 0"
  assert ds.train_images.shape == (6, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (6, 32, 32, 3)
  assert ds.train_labels.dtype == np.int32 and ds.train_labels.shape == (6,)
  assert ds.train_labels.min() >= 0 and ds.train_labels.max() < 100
  assert ds.train_images.std() > 0  # Random pixels, not an empty buffer.
  assert small.train_images.shape == (6, 16, 16, 3)
  np.testing.assert_array_equal(small.train_labels, ds.train_labels)


def test_cifar100_under_code_only_mock(tmp_path):
  """The plain USE_CODE mock (no metadata) also loads; names are then tfds's "0".."99"."""
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = cifar100.load_cifar100(data_dir=str(tmp_path))
  assert ds.train_images.shape == (3, 32, 32, 3)
  assert ds.class_names[:2] == ("0", "1")


def test_cifar100_not_prepared_says_how(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    cifar100.load_cifar100(data_dir=str(tmp_path))
  message = str(info.value)
  assert "not prepared" in message and str(tmp_path) in message
  assert "pip install -e .[tf]" in message
  assert "file_format='array_record'" in message and "download_and_prepare()" in message


def test_cifar100_missing_shards_are_diagnosed(tmp_path):
  _write_cifar100_metadata(tmp_path, [f"thing_{i}" for i in range(100)])  # No shards.
  with pytest.raises(FileNotFoundError, match="prepared as ArrayRecord but could not be"):
    cifar100.load_cifar100(data_dir=str(tmp_path))


def test_cifar100_prepared_as_tfrecord_is_diagnosed(tmp_path):
  builder = tfds.builder("cifar100", data_dir=str(tmp_path))  # TFRecord by default.
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_dir)
  with pytest.raises(FileNotFoundError, match="needs ArrayRecord"):
    cifar100.load_cifar100(data_dir=str(tmp_path))


# ---------------------------------------------------------------- archives


def _jpeg(color, size=(40, 30)):
  """A solid-colour JPEG; solid colours survive JPEG within a few levels."""
  buf = io.BytesIO()
  Image.new("RGB", size, tuple(int(c) for c in color)).save(buf, "JPEG", quality=95)
  return buf.getvalue()


def _color(category, index):
  """Colour code of an image: red tells the category, green the index."""
  return (40 + 60 * category, 30 + 40 * index, 128)


def _decode_code(image):
  """Inverts _color from a stored image's mean colour."""
  r, g, _ = image.reshape(-1, 3).mean(0)
  return int(round((r - 40) / 60)), int(round((g - 30) / 40))


CALTECH_FOLDERS = ["001.ak47", "063.electric-guitar-101", "232.t-shirt"]


def _make_caltech_tar(path, per_class=5):
  with tarfile.open(path, "w") as tar:

    def add(name, data):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))

    for c, folder in enumerate(CALTECH_FOLDERS):
      for i in range(per_class):
        add(f"256_ObjectCategories/{folder}/{folder[:3]}_{i + 1:04d}.jpg",
            _jpeg(_color(c, i)))
    # What the real archive also holds, and must not become data.
    add("256_ObjectCategories/257.clutter/257_0001.jpg", _jpeg((0, 0, 0)))
    add("256_ObjectCategories/001.ak47/RENAME2", b"not an image")
    add("256_ObjectCategories/001.ak47/greg/001_0001.jpg", _jpeg((255, 255, 255)))


def test_caltech256_plan_split():
  members = [f"256_ObjectCategories/{f}/{f[:3]}_{i:04d}.jpg"
             for f in CALTECH_FOLDERS for i in range(10)]
  members += ["256_ObjectCategories/257.clutter/257_0001.jpg",
              "256_ObjectCategories/001.ak47/greg/x.jpg"]
  folders, train, test = caltech256.plan_split(members, 0.2, seed=0)
  assert folders == CALTECH_FOLDERS
  assert len(train) == 24 and len(test) == 6
  assert not set(train) & set(test)
  assert sorted(set(train.values())) == [0, 1, 2]
  assert [list(test.values()).count(c) for c in range(3)] == [2, 2, 2]
  assert caltech256.plan_split(members, 0.2, seed=0)[2] == test  # Deterministic.
  assert caltech256.plan_split(members, 0.2, seed=1)[2] != test  # Seeded.
  # A category's split does not depend on the other categories present.
  only_ak47 = caltech256.plan_split(members[:10], 0.2, seed=0)[2]
  assert set(only_ak47) == {p for p, c in test.items() if c == 0}
  with pytest.raises(ValueError, match="at least 2"):
    caltech256.plan_split(members[:1], 0.2, seed=0)
  with pytest.raises(ValueError, match="test_fraction"):
    caltech256.plan_split(members, 1.0, seed=0)


def test_caltech256_from_archive(tmp_path):
  manual = tmp_path / "downloads" / "manual"
  manual.mkdir(parents=True)
  _make_caltech_tar(manual / caltech256.ARCHIVE_NAME)
  ds = registry.load_dataset("caltech256", data_dir=str(tmp_path))
  assert ds.name == "caltech256"
  assert ds.class_names == ("ak47", "electric guitar", "t-shirt")
  assert ds.train_images.shape == (12, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (3, 32, 32, 3)
  assert ds.train_labels.dtype == np.int32
  codes = {}
  for split, images, labels in (("train", ds.train_images, ds.train_labels),
                                ("test", ds.test_images, ds.test_labels)):
    for image, label in zip(images, labels):
      category, index = _decode_code(image)
      assert category == label  # The label belongs to the image stored with it.
      codes[(category, index)] = split
  # Every file was stored exactly once; one image a category was held out.
  assert sorted(codes) == [(c, i) for c in range(3) for i in range(5)]
  assert sorted(c for (c, _), s in codes.items() if s == "test") == [0, 1, 2]
  # The stored split is the planned one.
  names = [f"256_ObjectCategories/{f}/{f[:3]}_{i + 1:04d}.jpg"
           for f in CALTECH_FOLDERS for i in range(5)]
  planned_test = caltech256.plan_split(names, 0.2, seed=0)[2]
  assert {(c, int(p[-8:-4]) - 1) for p, c in planned_test.items()} == {
      k for k, s in codes.items() if s == "test"}
  # Second load reads the prepared files, even with the archive gone.
  (manual / caltech256.ARCHIVE_NAME).unlink()
  again = caltech256.load_caltech256(data_dir=str(tmp_path))
  np.testing.assert_array_equal(again.train_images, ds.train_images)


def test_caltech256_other_size_and_manual_dir(tmp_path):
  archives = tmp_path / "archives"
  archives.mkdir()
  _make_caltech_tar(archives / caltech256.ARCHIVE_NAME, per_class=3)
  ds = caltech256.load_caltech256(data_dir=str(tmp_path / "tfds"), image_size=16,
                                  manual_dir=str(archives))
  assert ds.train_images.shape == (6, 16, 16, 3) and ds.test_images.shape == (3, 16, 16, 3)
  # A size without a config reads the next larger one, resized.
  odd = caltech256.load_caltech256(data_dir=str(tmp_path / "tfds"), image_size=24,
                                   manual_dir=str(archives))
  assert odd.train_images.shape == (6, 24, 24, 3)
  assert (tmp_path / "tfds" / "caltech256" / "32px").is_dir()
  with pytest.raises(ValueError, match="positive"):
    caltech256.load_caltech256(data_dir=str(tmp_path / "tfds"), image_size=-1)


def test_caltech256_missing_archive(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    caltech256.load_caltech256(data_dir=str(tmp_path))
  message = str(info.value)
  assert "256_ObjectCategories.tar" in message
  assert str(tmp_path / "downloads" / "manual") in message
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "elsewhere"))):
    caltech256.load_caltech256(data_dir=str(tmp_path), manual_dir=tmp_path / "elsewhere")


TINY_WORDS = (
    "n00001740\tentity\n"
    "n01443537\tgoldfish, Carassius auratus\n"
    "n02012849\tcrane, wading bird\n"
    "n03126707\tcrane\n")
TINY_WNIDS = ["n03126707", "n01443537", "n02012849"]  # Unsorted, as the file may be.


def _make_tiny_zip(path, train_per_class=4, val_per_class=2):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("tiny-imagenet-200/wnids.txt", "\n".join(TINY_WNIDS) + "\n")
    zf.writestr("tiny-imagenet-200/words.txt", TINY_WORDS)
    annotations = []
    for c, wnid in enumerate(sorted(TINY_WNIDS)):
      for i in range(train_per_class):
        zf.writestr(f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{i}.JPEG",
                    _jpeg(_color(c, i), (64, 64)))
      zf.writestr(f"tiny-imagenet-200/train/{wnid}/{wnid}_boxes.txt", "")
      for i in range(val_per_class):
        name = f"val_{c * val_per_class + i}.JPEG"
        zf.writestr(f"tiny-imagenet-200/val/images/{name}",
                    _jpeg(_color(c, train_per_class + i), (64, 64)))
        annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    zf.writestr("tiny-imagenet-200/val/val_annotations.txt", "\n".join(annotations) + "\n")
    zf.writestr("tiny-imagenet-200/test/images/test_0.JPEG", _jpeg((0, 0, 0), (64, 64)))


def test_tinyimagenet_class_names():
  wnids, names = tinyimagenet.read_class_names("\n".join(TINY_WNIDS), TINY_WORDS)
  assert wnids == ["n01443537", "n02012849", "n03126707"]
  assert names == ["goldfish", "crane (wading bird)", "crane (n03126707)"]
  with pytest.raises(ValueError, match="no entry"):
    tinyimagenet.read_class_names("n09999999\n", TINY_WORDS)


def test_tinyimagenet_from_archive(tmp_path):
  manual = tmp_path / "downloads" / "manual"
  manual.mkdir(parents=True)
  _make_tiny_zip(manual / tinyimagenet.ARCHIVE_NAME)
  ds = registry.load_dataset("tinyimagenet", data_dir=str(tmp_path), image_size=16)
  assert ds.name == "tinyimagenet"
  assert ds.class_names == ("goldfish", "crane (wading bird)", "crane (n03126707)")
  assert ds.train_images.shape == (12, 16, 16, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (6, 16, 16, 3)
  train_codes = sorted(_decode_code(im) for im in ds.train_images)
  assert train_codes == [(c, i) for c in range(3) for i in range(4)]
  for image, label in zip(ds.test_images, ds.test_labels):
    category, index = _decode_code(image)
    assert category == label and index in (4, 5)  # The val images, correctly labelled.
  for image, label in zip(ds.train_images, ds.train_labels):
    assert _decode_code(image)[0] == label


def test_tinyimagenet_bad_annotations():
  names = ["tiny-imagenet-200/train/n01443537/images/a.JPEG",
           "tiny-imagenet-200/val/images/val_0.JPEG"]
  train, test = tinyimagenet.plan_split(names, "val_0.JPEG\tn01443537\t0\t0\t1\t1",
                                        ["n01443537"])
  assert train == {names[0]: 0} and test == {names[1]: 0}
  with pytest.raises(ValueError, match="unknown class"):
    tinyimagenet.plan_split(names, "val_0.JPEG\tn02222222\t0", ["n01443537"])
  with pytest.raises(ValueError, match="lacks"):
    tinyimagenet.plan_split(names, "val_9.JPEG\tn01443537\t0", ["n01443537"])


def test_tinyimagenet_missing_archive(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    tinyimagenet.load_tinyimagenet(data_dir=str(tmp_path))
  message = str(info.value)
  assert "tiny-imagenet-200.zip" in message
  assert str(tmp_path / "downloads" / "manual") in message


# ---------------------------------------------------------------- Fashion-MNIST


def _write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion_dir(tmp_path):
  rng = np.random.default_rng(0)
  directory = tmp_path / "fashion-mnist"
  directory.mkdir()
  train = rng.integers(1, 256, (5, 28, 28), dtype=np.uint8)
  test = rng.integers(1, 256, (2, 28, 28), dtype=np.uint8)
  _write_idx(directory / "train-images-idx3-ubyte.gz", train)
  _write_idx(directory / "train-labels-idx1-ubyte.gz", np.array([0, 9, 3, 3, 1]))
  _write_idx(directory / "t10k-images-idx3-ubyte.gz", test)
  _write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.array([8, 0]))
  return directory, train, test


def test_fashion_mnist_from_idx(fake_fashion_dir):
  directory, train, test = fake_fashion_dir
  ds = registry.load_dataset("fashion_mnist", data_dir=str(directory))
  assert ds.name == "fashion_mnist"
  assert ds.class_names[0] == "t-shirt" and ds.class_names[9] == "ankle boot"
  assert ds.train_images.shape == (5, 28, 28, 3) and ds.train_images.dtype == np.uint8
  for c in range(3):  # Grayscale repeated on every channel.
    np.testing.assert_array_equal(ds.train_images[..., c], train)
  np.testing.assert_array_equal(ds.test_images[..., 0], test)
  np.testing.assert_array_equal(ds.train_labels, [0, 9, 3, 3, 1])
  np.testing.assert_array_equal(ds.test_labels, [8, 0])
  assert ds.train_labels.dtype == np.int32


def test_fashion_mnist_pad_and_resize(fake_fashion_dir):
  directory, train, _ = fake_fashion_dir
  padded = fashion_mnist.load_fashion_mnist(data_dir=directory, image_size=32)
  assert padded.train_images.shape == (5, 32, 32, 3)
  np.testing.assert_array_equal(padded.train_images[:, 2:30, 2:30, 0], train)
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert (padded.train_images[:, border] == 0).all()
  resized = fashion_mnist.load_fashion_mnist(data_dir=directory, image_size=32, fit="resize")
  assert resized.train_images.shape == (5, 32, 32, 3)
  assert (resized.train_images[:, 0, 0] > 0).any()  # Content reaches the corners.
  small = fashion_mnist.load_fashion_mnist(data_dir=directory, image_size=14)
  assert small.test_images.shape == (2, 14, 14, 3)
  with pytest.raises(ValueError, match="Cannot pad"):
    fashion_mnist.load_fashion_mnist(data_dir=directory, image_size=14, fit="pad")
  with pytest.raises(ValueError, match="fit must be"):
    fashion_mnist.load_fashion_mnist(data_dir=directory, image_size=32, fit="stretch")


def test_fashion_mnist_search_order(fake_fashion_dir, tmp_path, monkeypatch):
  directory, _, _ = fake_fashion_dir
  monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "no-debian"))
  monkeypatch.setenv(fashion_mnist.ENV_VAR, str(directory))
  assert fashion_mnist.load_fashion_mnist().train_images.shape[0] == 5
  # A data_dir without the files (a shared tfds directory) falls through to the env var.
  (tmp_path / "shared").mkdir()
  assert fashion_mnist.find_files(tmp_path / "shared")["test_labels"].parent == directory
  # data_dir/fashion-mnist is searched before the env var.
  monkeypatch.setenv(fashion_mnist.ENV_VAR, str(tmp_path / "nowhere"))
  assert fashion_mnist.find_files(tmp_path)["train_images"].parent == directory


def test_fashion_mnist_missing_package(tmp_path, monkeypatch):
  monkeypatch.delenv(fashion_mnist.ENV_VAR, raising=False)
  monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "no-debian"))
  (tmp_path / "half").mkdir()
  _write_idx(tmp_path / "half" / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28)))
  with pytest.raises(FileNotFoundError) as info:
    fashion_mnist.load_fashion_mnist(data_dir=tmp_path / "half")
  message = str(info.value)
  assert "apt-get install dataset-fashion-mnist" in message
  assert "t10k-labels-idx1-ubyte.gz" in message and str(tmp_path / "half") in message
  assert str(tmp_path / "no-debian") in message


def test_fashion_mnist_bad_idx(fake_fashion_dir):
  directory, _, _ = fake_fashion_dir
  with gzip.open(directory / "t10k-labels-idx1-ubyte.gz", "wb") as f:
    f.write(bytes([0, 0, 0x0D, 1]) + np.asarray([2], ">u4").tobytes() + b"\0" * 8)
  with pytest.raises(ValueError, match="unsigned-byte IDX"):
    fashion_mnist.load_fashion_mnist(data_dir=directory)
  _write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3]))
  with pytest.raises(ValueError, match="3 labels for 2 images"):
    fashion_mnist.load_fashion_mnist(data_dir=directory)


@pytest.mark.skipif(
    not os.path.exists(os.path.join(fashion_mnist.DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz")),
    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_package(monkeypatch):
  monkeypatch.delenv(fashion_mnist.ENV_VAR, raising=False)
  ds = fashion_mnist.load_fashion_mnist()
  assert ds.train_images.shape == (60_000, 28, 28, 3)
  assert ds.test_images.shape == (10_000, 28, 28, 3)
  assert np.bincount(ds.test_labels).tolist() == [1000] * 10
