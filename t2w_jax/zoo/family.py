"""Subtask families: which net the corpus stores and the generator writes (a config choice).

Two families, picked by ``model.family`` in the corpus config (docs/design.md, "Subtask
family by config"):

* ``"cnn"`` (default): the small ``SubtaskCNN``; every parameter is generated.
* ``"adapter"``: the T2W paper's own family. A frozen feature trunk (a ``SubtaskCNN`` of
  ``trunk_widths``/``trunk_strides``, trained once on the seen classes only) maps an image
  to pooled conv features; a generated bottleneck adapter (``AdapterNet``) maps those
  features into the text space. Only the adapter's parameters are in the corpus.

For the adapter family the trunk runs once per image, not once per net: its features of the
train and test images are cached in the corpus directory (``features.npz``) and every later
step (task nets, evaluation) trains and measures adapters on them. A user holding images
composes trunk and adapter with ``TrunkedNet`` (what ``api.subtask_net`` returns).

The hidden-unit symmetries in ``weights/permute.py`` (the DiT's permutation augmentation,
off by default) are the CNN's: on an adapter layout they raise a ValueError naming the
layout. The fusion evaluator's weight matching handles both families.

Files this module writes in a corpus directory (atomically, like ``zoo/corpus.py``)::

  trunk.npz     the trunk's parameters, one array per parameter path ("conv_0/kernel", ...)
  features.npz  train/test features (N, d_f) float32, labels, class names, dataset name
"""
import dataclasses
import logging
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from t2w_jax import io as io_lib
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.zoo import base as base_lib
from t2w_jax.zoo.cnn import SubtaskCNN, check_class_emb, cosine_logits

FAMILIES = ("cnn", "adapter")
TRUNK_FILE = "trunk.npz"
FEATURES_FILE = "features.npz"


class AdapterNet(nn.Module):
  """The generated part of the adapter family: features -> bottleneck -> text space.

  Same interface as ``SubtaskCNN`` with features in place of images: ``embed(x)`` gives unit
  vectors, ``__call__(x, class_emb)`` gives ``logit_scale * cos`` logits, and a wrong class
  list raises the same errors.

  Attributes:
    feature_dim: d_f, the trunk's feature dimension (its last conv width).
    bottleneck: hidden width of the adapter.
    embed_dim: text-embedding dimension.
    logit_scale: multiplies the cosine similarities to give logits.

  Parameters are ``down/{kernel,bias}`` (d_f -> bottleneck) and ``up/{kernel,bias}``
  (bottleneck -> embed_dim).
  """
  feature_dim: int
  bottleneck: int = 16
  embed_dim: int = 384
  logit_scale: float = 10.0

  def setup(self):
    self.down = nn.Dense(self.bottleneck, name="down")
    self.up = nn.Dense(self.embed_dim, name="up")

  def embed(self, features):
    """Features (B, feature_dim) -> unit vectors (B, embed_dim)."""
    z = self.up(nn.relu(self.down(features.astype(jnp.float32))))
    # A narrow ReLU bottleneck can be all zero for an input, and then (bias zero at init)
    # so is z: the gradient of a plain norm at 0 is NaN, which killed training. The
    # smoothed norm has a finite gradient there and is the same elsewhere.
    return z * jax.lax.rsqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)

  def __call__(self, features, class_emb):
    """Logits (B, K) of feature vectors against K class embeddings (K, embed_dim)."""
    check_class_emb(class_emb, self.embed_dim)
    return cosine_logits(self.embed(features), class_emb, self.logit_scale)


def family_of(model_cfg: Mapping) -> str:
  """The family a model config names ("cnn" when it names none, as older corpora do)."""
  family = model_cfg.get("family", "cnn") or "cnn"
  if family not in FAMILIES:
    raise ValueError(f"unknown subtask family {family!r}; use one of {FAMILIES}")
  return family


def build_subtask_net(model_cfg: Mapping, embed_dim: int, conv_impl: str | None = None):
  """The generated net a model config describes: a SubtaskCNN or an AdapterNet.

  Args:
    model_cfg: the corpus config's ``model`` (a ConfigDict, or the dict stored in a corpus's
      meta or a generator spec; extra keys such as ``embed_dim`` are ignored).
    embed_dim: the text encoder's dimension.
    conv_impl: "lax" (default) or "im2col" for the CNN family; the adapter has no conv.

  Returns:
    A SubtaskCNN (family "cnn") or an AdapterNet (family "adapter").
  """
  if family_of(model_cfg) == "adapter":
    return AdapterNet(feature_dim=int(tuple(model_cfg["trunk_widths"])[-1]),
                      bottleneck=int(model_cfg["bottleneck"]), embed_dim=int(embed_dim),
                      logit_scale=float(model_cfg["logit_scale"]))
  return SubtaskCNN(widths=tuple(model_cfg["widths"]), strides=tuple(model_cfg["strides"]),
                    embed_dim=int(embed_dim), logit_scale=float(model_cfg["logit_scale"]),
                    conv_impl=conv_impl or "lax")


def build_trunk(model_cfg: Mapping, embed_dim: int, conv_impl: str | None = None) -> SubtaskCNN:
  """The adapter family's trunk: a SubtaskCNN of ``trunk_widths``/``trunk_strides``.

  Its head (into the text space) exists only to train it; the adapter replaces it.
  """
  return SubtaskCNN(widths=tuple(model_cfg["trunk_widths"]),
                    strides=tuple(model_cfg["trunk_strides"]), embed_dim=int(embed_dim),
                    logit_scale=float(model_cfg["logit_scale"]), conv_impl=conv_impl or "lax")


# ------------------------------------------------------------------ the trunk
def train_trunk(trunk: SubtaskCNN, images: np.ndarray, labels: np.ndarray,
                class_emb: np.ndarray, seen_classes, train_cfg: Mapping, seed: int,
                val_per_class: int):
  """Trains the frozen trunk on the seen classes only: the one place trunk training lives.

  Held-out classes' images are dropped here, before training sees anything, so no trainer
  can touch them whatever it does with its inputs. The trunk is a generalist of its own
  (``base.train_generalist``, early-stopped on the corpus's validation split, so it never
  trains on the images the adapters validate on).

  Args:
    trunk: from ``build_trunk``.
    images: uint8 (N, H, W, 3) training images of the whole dataset.
    labels: (N,) global labels.
    class_emb: (C, d) text embeddings of every class.
    seen_classes: the classes the trunk may learn from.
    train_cfg: the corpus config's ``trunk_train`` (the keys of its ``base``).
    seed: initialisation, batch and validation-split seed.
    val_per_class: the corpus's validation images per class.

  Returns:
    The trunk's params pytree.
  """
  seen_classes = np.asarray(sorted(seen_classes))
  rows = np.flatnonzero(np.isin(labels, seen_classes))
  logging.info("trunk: training on %d images of %d seen classes", len(rows), len(seen_classes))
  is_val = tasks_lib.validation_mask(labels, val_per_class, seed)
  params, info = base_lib.train_generalist(
      trunk, images[rows], labels[rows], class_emb, seen_classes,
      max_steps=int(train_cfg["max_steps"]), batch_size=int(train_cfg["batch_size"]),
      learning_rate=float(train_cfg["learning_rate"]), seed=seed,
      val_per_class=val_per_class, eval_every=int(train_cfg["eval_every"]),
      patience=int(train_cfg["patience"]), lr_drops=int(train_cfg["lr_drops"]),
      val_mask=is_val[rows])
  logging.info("trunk: kept step %d (val acc %.3f)", info.steps, info.val_acc)
  return params


def save_params(path: str, params) -> None:
  """Writes a params pytree as one .npz array per parameter path (atomically)."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  io_lib.atomic_save_npz(path, **{k: np.asarray(v) for k, v in flat.items()})


def load_params(path: str) -> dict:
  """Reads a params pytree written by ``save_params``."""
  with np.load(path) as z:
    return traverse_util.unflatten_dict({k: jnp.asarray(z[k]) for k in z.files}, sep="/")


def load_trunk(corpus_dir: str) -> dict:
  """The trunk params of an adapter corpus.

  Raises:
    FileNotFoundError: the corpus has no trunk (not an adapter corpus, or unfinished).
  """
  path = os.path.join(corpus_dir, TRUNK_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no trunk at {path}: not an adapter-family corpus, or its "
                            "make_corpus run stopped before training the trunk")
  return load_params(path)


# ------------------------------------------------------------------ features
@dataclasses.dataclass(frozen=True, eq=False)
class FeatureDataset:
  """An ImageDataset whose "images" are the trunk's features: the adapter family's data.

  Same fields as ``t2w_jax.data.types.ImageDataset``, so the task trainer (which gathers
  ``images[rows]``) and the evaluators run on it unchanged.

  Attributes:
    name: the image dataset's name.
    class_names: natural-language class names; label i is class_names[i].
    train_images / test_images: float32 (N, d_f) trunk features.
    train_labels / test_labels: int32 (N,).
  """
  name: str
  class_names: tuple[str, ...]
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray

  def __post_init__(self):
    object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
    for split in ("train", "test"):
      x = np.asarray(getattr(self, f"{split}_images"), np.float32)
      y = np.asarray(getattr(self, f"{split}_labels")).astype(np.int32, copy=False)
      if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features {split}: need (N, d_f) features and (N,) labels, got "
                         f"{x.shape} and {y.shape}")
      object.__setattr__(self, f"{split}_images", x)
      object.__setattr__(self, f"{split}_labels", y)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int]:
    """(d_f,): the shape of one example."""
    return tuple(self.train_images.shape[1:])


def compute_features(trunk: SubtaskCNN, trunk_params, images: np.ndarray,
                     batch_size: int = 256) -> np.ndarray:
  """The trunk's pooled features of every image, in fixed-size jitted batches.

  Args:
    trunk: the trunk module.
    trunk_params: its params.
    images: (N, H, W, 3) images.
    batch_size: images per call (the last batch is padded: one compile).

  Returns:
    float32 (N, d_f).
  """
  fn = jax.jit(lambda p, x: trunk.apply({"params": p}, x, method="features"))
  out = []
  for s in range(0, len(images), batch_size):
    x = images[s:s + batch_size]
    n = len(x)
    if n < batch_size:
      x = np.concatenate([x, np.repeat(x[-1:], batch_size - n, 0)])
    out.append(np.asarray(fn(trunk_params, x), np.float32)[:n])
  width = int(tuple(trunk.widths)[-1])
  return np.concatenate(out) if out else np.zeros((0, width), np.float32)


def feature_dataset(dataset, trunk: SubtaskCNN, trunk_params,
                    batch_size: int = 256) -> FeatureDataset:
  """The dataset with every train and test image replaced by its trunk features."""
  return FeatureDataset(
      dataset.name, dataset.class_names,
      compute_features(trunk, trunk_params, dataset.train_images, batch_size),
      dataset.train_labels,
      compute_features(trunk, trunk_params, dataset.test_images, batch_size),
      dataset.test_labels)


def save_features(path: str, data: FeatureDataset) -> None:
  """Writes a FeatureDataset as one .npz (atomically)."""
  io_lib.atomic_save_npz(
      path, name=np.array(data.name), class_names=np.array(data.class_names),
      train_images=data.train_images, train_labels=data.train_labels,
      test_images=data.test_images, test_labels=data.test_labels)


def load_features(corpus_dir: str) -> FeatureDataset:
  """The cached features of an adapter corpus (no trunk forward pass).

  Raises:
    FileNotFoundError: the corpus has no features.npz.
  """
  path = os.path.join(corpus_dir, FEATURES_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no features at {path}: not an adapter-family corpus, or its "
                            "make_corpus run stopped before computing them")
  with np.load(path) as z:
    return FeatureDataset(str(z["name"]), tuple(z["class_names"]), z["train_images"],
                          z["train_labels"], z["test_images"], z["test_labels"])


def load_task_dataset(corpus_dir: str, meta: Mapping):
  """What a finished corpus's nets run on, loaded as its corpus run loaded it.

  The image dataset at the corpus's image size (family "cnn"), or the cached trunk
  features of an adapter-family corpus (the trunk is not run again). Evaluation and the
  generator's task loss both read their data through this function.

  Args:
    corpus_dir: the corpus directory.
    meta: the corpus's meta.json.
  """
  if family_of(meta["model"]) == "adapter":
    return load_features(corpus_dir)
  from t2w_jax import data as data_lib  # local: keeps this module's import light
  return data_lib.load_dataset(meta["dataset"], image_size=meta["image_size"],
                               **meta.get("dataset_kwargs", {}))


def prepare_data(config, corpus_dir: str, dataset, class_emb: np.ndarray, seen_classes):
  """What the corpus's nets train and are measured on: images, or cached trunk features.

  For the "cnn" family this is ``dataset`` itself. For "adapter", the trunk is read back
  from ``trunk.npz`` or trained (``train_trunk``) and saved; the features are read back
  from ``features.npz`` or computed once and saved. A resumed run reads the features and
  never runs the trunk again.

  Args:
    config: the corpus config (``model``, ``trunk_train``, ``seed``).
    corpus_dir: the corpus directory.
    dataset: the ImageDataset at the training resolution.
    class_emb: (C, d) embeddings of every class.
    seen_classes: the classes the trunk may be trained on (never the held-out ones).

  Returns:
    ``dataset`` or a FeatureDataset.
  """
  if family_of(config.model) != "adapter":
    return dataset
  feat_path = os.path.join(corpus_dir, FEATURES_FILE)
  if os.path.exists(feat_path):
    logging.info("features: read back from %s", feat_path)
    return load_features(corpus_dir)
  trunk = build_trunk(config.model, class_emb.shape[1])
  trunk_path = os.path.join(corpus_dir, TRUNK_FILE)
  if os.path.exists(trunk_path):
    trunk_params = load_params(trunk_path)
    logging.info("trunk: read back from %s", trunk_path)
  else:
    trunk_params = train_trunk(trunk, dataset.train_images, dataset.train_labels, class_emb,
                               seen_classes, config.trunk_train, config.seed,
                               config.val_per_class)
    save_params(trunk_path, trunk_params)
  data = feature_dataset(dataset, trunk, trunk_params)
  save_features(feat_path, data)
  logging.info("features: %d train and %d test images -> d_f=%d, saved to %s",
               len(data.train_labels), len(data.test_labels), data.image_shape[0], feat_path)
  return data


# ------------------------------------------------------------------ trunk + adapter
@dataclasses.dataclass(frozen=True, eq=False)
class TrunkedNet:
  """A generated adapter composed with its frozen trunk: images in, logits out.

  Mirrors a Linen module's ``apply`` so that generated nets of either family are used the
  same way: ``net.apply({"params": adapter_params}, images, class_emb)``. The trunk's
  params are held here (they are fixed), the adapter's are passed in (they are generated).

  Attributes:
    trunk: the trunk SubtaskCNN; trunk_params: its params.
    adapter: the AdapterNet whose params ``apply`` takes.
  """
  trunk: SubtaskCNN
  trunk_params: Any
  adapter: AdapterNet

  @property
  def embed_dim(self) -> int:
    return self.adapter.embed_dim

  @property
  def logit_scale(self) -> float:
    return self.adapter.logit_scale

  def features(self, images):
    """(B, H, W, 3) images -> (B, d_f) trunk features."""
    return self.trunk.apply({"params": self.trunk_params}, images, method="features")

  def apply(self, variables, images, class_emb=None, *, method=None):
    """The adapter's ``apply`` on the images' trunk features.

    Args:
      variables: ``{"params": adapter_params}``.
      images: (B, H, W, 3) images.
      class_emb: (K, embed_dim) class embeddings; omit with ``method="embed"``.
      method: None (logits) or "embed" (unit vectors in the text space).

    Returns:
      (B, K) logits, or (B, embed_dim) embeddings for ``method="embed"``.
    """
    feats = self.features(images)
    if method in ("embed", AdapterNet.embed):
      return self.adapter.apply(variables, feats, method="embed")
    if method is not None:
      raise ValueError(f"TrunkedNet.apply: method must be None or 'embed', got {method!r}")
    return self.adapter.apply(variables, feats, class_emb)
