"""The functional (task) loss: a decoded net's cross-entropy on its own task's images.

The generator's train step (``train/step.py``) adds it to the diffusion loss, and the plain
hypernetwork baseline (``evaluate/hypernet.py``) trains on it alone; both use this module,
so "the task loss of a net" has one definition.

What may be used: the training images of the classes that occur in the corpus's SEEN tasks,
minus the validation rows (``data.tasks.validation_mask``, the split every net early-stops
on). ``seen_task_images`` builds that pool and nothing else: held-out classes' images and the
validation rows are not in the arrays it returns, so no later indexing can reach them. For the
adapter family the pool holds the trunk's cached features (the frozen trunk never runs here).
"""
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from t2w_jax.data import tasks as tasks_lib
from t2w_jax.zoo import family as family_lib
from t2w_jax.zoo import masstrain


class TaskImages(NamedTuple):
  """The images the task loss may draw from, by class, and what fresh tasks are made of.

  images: (N, ...) uint8 images or float32 trunk features: allowed rows only.
  class_index: (C, W) int32 rows of ``images`` of each dataset class.
  class_count: (C,) int32 valid entries per class; 0 for a class training may not use.
  pool: (P,) int32 the allowed classes (``sample_tasks`` draws fresh tasks from them).
  class_emb: (C, d) float32 text embedding of every class.
  task_sizes: (2,) int32 the fewest and most classes of a task.
  """
  images: Any
  class_index: Any
  class_count: Any
  pool: Any
  class_emb: Any
  task_sizes: Any


def task_images(dataset, classes: Sequence[int], class_emb, task_sizes: tuple[int, int], *,
                val_per_class: int, val_seed: int, split: str = "train") -> TaskImages:
  """The training rows of ``classes`` without the validation rows (or, with
  ``split="val"``, the validation rows alone), indexed by class.

  Args:
    dataset: an ImageDataset (or the adapter family's FeatureDataset).
    classes: the dataset classes that may be used.
    val_per_class, val_seed: the corpus's validation split.
    split: "train" (validation rows left out) or "val" (only them).

  Returns:
    TaskImages over all of the dataset's classes (count 0 outside ``classes``).
  """
  if split not in ("train", "val"):
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")
  labels = np.asarray(dataset.train_labels)
  is_val = tasks_lib.validation_mask(labels, val_per_class, val_seed)
  use = is_val if split == "val" else ~is_val
  rows = np.flatnonzero(np.isin(labels, np.asarray(list(classes), np.int64)) & use)
  index, count = masstrain.index_by_class(labels[rows], len(dataset.class_names))
  lo, hi = task_sizes
  if not 1 <= lo <= hi <= len(classes):
    raise ValueError(f"task sizes {lo}..{hi} impossible with {len(classes)} allowed classes")
  return TaskImages(np.asarray(dataset.train_images)[rows], index, count,
                    np.asarray(sorted(classes), np.int32), np.asarray(class_emb, np.float32),
                    np.asarray([lo, hi], np.int32))


def seen_classes(corpus) -> list[int]:
  """The dataset classes that occur in the corpus's seen tasks (no held-out class)."""
  return sorted({c for i in corpus.indices("seen") for c in corpus.records[i]["class_ids"]})


def seen_task_images(corpus, corpus_dir: str, split: str = "train",
                     dataset=None) -> TaskImages:
  """What training may see: the seen tasks' classes' training rows (``split="train"``),
  or their validation rows (``split="val"``, for early stopping).

  Args:
    corpus: an opened ``zoo.corpus.Corpus``.
    corpus_dir: its directory (the adapter family's cached features live there).
    split: "train" or "val".
    dataset: the corpus's data if already loaded (``family.load_task_dataset``).
  """
  meta = corpus.meta
  if dataset is None:
    dataset = family_lib.load_task_dataset(corpus_dir, meta)
  sizes = [len(corpus.records[i]["class_ids"]) for i in corpus.indices("seen")]
  return task_images(dataset, seen_classes(corpus), corpus.class_emb, (min(sizes), max(sizes)),
                     val_per_class=int(meta.get("val_per_class", 0)),
                     val_seed=int(meta["seed"]), split=split)


def sample_tasks(key, data: TaskImages, batch: int, max_classes: int):
  """``batch`` fresh random tasks: (B, K) class ids, (B, K) mask, (B, K, d) embeddings.

  Each task has ``task_sizes[0]..task_sizes[1]`` distinct classes of ``data.pool`` (so a
  class the data does not allow never appears); padding slots repeat the task's first
  class (as ``data.tasks.pad_tasks`` does) and have zero embeddings.
  """
  k_n, k_perm = jax.random.split(key)
  n = jax.random.randint(k_n, (batch,), data.task_sizes[0], data.task_sizes[1] + 1)
  perms = jax.vmap(lambda k: jax.random.permutation(k, data.pool))(
      jax.random.split(k_perm, batch))[:, :max_classes]
  if perms.shape[1] < max_classes:  # fewer allowed classes than slots (e.g. Fashion-MNIST)
    perms = jnp.concatenate(
        [perms, jnp.repeat(perms[:, :1], max_classes - perms.shape[1], axis=1)], axis=1)
  mask = jnp.arange(max_classes)[None, :] < n[:, None]
  classes = jnp.where(mask, perms, perms[:, :1])
  return classes, mask, data.class_emb[classes] * mask[..., None]


def subtask_model(model_cfg, embed_dim: int):
  """The subtask net (a corpus's ``meta["model"]`` or a spec's ``cnn``) in the form that
  survives ``vmap`` over nets (im2col convolutions)."""
  return family_lib.build_subtask_net(model_cfg, embed_dim, conv_impl="im2col")


def make_task_loss(model, layout, per_task: int):
  """``loss(flat, classes, mask, class_emb, data, rng) -> (B,)`` per-net cross-entropy.

  Net i (flat weights ``flat[i]``, any differentiable function of the parameters being
  trained) is measured on ``per_task`` images of its own task, balanced over the task's
  classes as the corpus trainer draws them (pick a class slot, then one of its images).
  Vectorised over the B nets with ``vmap``; no Python loop over tasks.

  Args:
    model: the subtask net (``subtask_model``).
    layout: the corpus's ParamLayout (flat vector <-> params).
    per_task: images per net per call.
  """

  def loss(flat, classes, mask, class_emb, data: TaskImages, rng):
    def one(flat, classes, mask, emb, key):
      k_cls, k_img = jax.random.split(key)
      local = jax.random.randint(k_cls, (per_task,), 0, jnp.sum(mask))
      cls = classes[local]
      j = jax.random.randint(k_img, (per_task,), 0, data.class_count[cls])
      x = data.images[data.class_index[cls, j]]
      logits = masstrain.masked_logits(model, layout.unflatten(flat), x, emb, mask)
      return optax.softmax_cross_entropy_with_integer_labels(logits, local).mean()

    keys = jax.random.split(rng, flat.shape[0])
    return jax.vmap(one)(flat, classes, mask, class_emb, keys)

  return loss
