"""What every evaluator shares: the corpus, the test images on device, and batched accuracy.

``EvalContext.accuracy(flat_weights, tasks)`` measures n nets on n tasks (net i on task i)
on each task's test images, in fixed-size jitted chunks (one compile per chunk size).
"""
import dataclasses
import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t2w_jax.data import tasks as tasks_lib
from t2w_jax.zoo import corpus as corpus_lib
from t2w_jax.zoo import masstrain
from t2w_jax.zoo.cnn import SubtaskCNN


@dataclasses.dataclass(eq=False)
class EvalContext:
  """Corpus + dataset + (optionally) a generator, ready for measuring nets.

  Attributes:
    corpus: the opened corpus (its unseen/heldout rows are the per-task oracles).
    dataset: the ImageDataset at the corpus's image size.
    model: the SubtaskCNN the corpus rows parameterise.
    data: DeviceData for accuracy (test images, class index, class embeddings).
    max_classes: K, the padding of class lists.
    gen: a loaded ``api.Generator`` or None.
    chunk: nets measured per compiled call.
  """
  corpus: corpus_lib.Corpus
  dataset: object
  model: SubtaskCNN
  data: masstrain.DeviceData
  max_classes: int
  gen: object = None
  chunk: int = 32

  @classmethod
  def create(cls, corpus_dir: str, *, gen=None, eval_per_class: int | None = None,
             chunk: int = 32) -> "EvalContext":
    """Opens the corpus and loads its dataset exactly as the corpus run did."""
    from t2w_jax import data as data_lib  # local: keeps the module import light
    corpus = corpus_lib.open_corpus(corpus_dir)
    meta = corpus.meta
    dataset = data_lib.load_dataset(meta["dataset"], image_size=meta["image_size"],
                                    **meta.get("dataset_kwargs", {}))
    if tuple(dataset.class_names) != corpus.class_names:
      raise ValueError(f"dataset {meta['dataset']!r} does not have the corpus's classes")
    m = meta["model"]
    model = SubtaskCNN(widths=tuple(m["widths"]), strides=tuple(m["strides"]),
                       embed_dim=int(corpus.class_emb.shape[1]),
                       logit_scale=float(m["logit_scale"]), conv_impl="im2col")
    per = eval_per_class or meta["trainer"]["eval_per_class"]
    data = masstrain.put_data(dataset, corpus.class_emb, per)
    max_classes = max(len(r["class_ids"]) for r in corpus.records)
    return cls(corpus, dataset, model, data, max_classes, gen, chunk)

  # ---------------------------------------------------------------- tasks and text
  def rows(self, split: str, limit: int | None = None) -> np.ndarray:
    """Corpus row indices of a split (first ``limit``)."""
    idx = self.corpus.indices(split)
    return idx if limit is None else idx[:limit]

  def tasks(self, rows: Sequence[int]) -> list[tasks_lib.Task]:
    return [tasks_lib.Task(int(self.corpus.records[i]["task_id"]), self.corpus.records[i]["split"],
                           tuple(self.corpus.records[i]["class_ids"]),
                           int(self.corpus.records[i]["seed"])) for i in rows]

  def padded(self, tasks: Sequence[tasks_lib.Task]):
    """(n, K) class ids and mask."""
    return tasks_lib.pad_tasks(tasks, self.max_classes)

  def class_text(self, tasks: Sequence[tasks_lib.Task]):
    """(n, K, d) class embeddings and (n, K) mask for the tasks' class lists."""
    ids, mask = self.padded(tasks)
    emb = np.asarray(self.corpus.class_emb)[ids] * mask[..., None]
    return emb.astype(np.float32), mask

  # ---------------------------------------------------------------- measuring nets
  @functools.cached_property
  def _acc_fn(self):
    spec = masstrain.TrainerSpec()
    layout = self.corpus.layout

    def one(flat, classes, mask):
      params = layout.unflatten(flat)
      return masstrain.task_accuracy(self.model, spec, self.data, params, classes, mask)

    return jax.jit(jax.vmap(one))

  def accuracy(self, flat: np.ndarray, tasks: Sequence[tasks_lib.Task]) -> np.ndarray:
    """Test accuracy of net i on task i, for (n, D) flat weights and n tasks."""
    flat = np.asarray(flat, np.float32)
    if flat.ndim != 2 or flat.shape[0] != len(tasks):
      raise ValueError(f"need one (D,) net per task: weights {flat.shape}, {len(tasks)} tasks")
    ids, mask = self.padded(tasks)
    out = []
    for s in range(0, len(tasks), self.chunk):
      e = min(s + self.chunk, len(tasks))
      pad = self.chunk - (e - s)
      f = np.concatenate([flat[s:e], np.repeat(flat[e - 1:e], pad, 0)])
      i = np.concatenate([ids[s:e], np.repeat(ids[e - 1:e], pad, 0)])
      m = np.concatenate([mask[s:e], np.repeat(mask[e - 1:e], pad, 0)])
      out.append(np.asarray(self._acc_fn(f, i, m))[:e - s])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  def predictions(self, flat: np.ndarray, task: tasks_lib.Task) -> np.ndarray:
    """(n, M) predicted local labels of n nets on one task's M test images."""
    ids, mask = self.padded([task])
    rows = np.asarray(self.data.test_index)[ids[0]]
    counts = np.asarray(self.data.test_count)[ids[0]]
    sel = np.concatenate([rows[k, :counts[k]] for k in range(len(task.class_ids))])
    x = jnp.asarray(np.asarray(self.data.test_images)[sel])
    emb = jnp.asarray(self.corpus.class_emb)[ids[0]]

    @jax.jit
    def pred(f):
      logits = masstrain.masked_logits(self.model, self.corpus.layout.unflatten(f), x, emb,
                                       jnp.asarray(mask[0]))
      return jnp.argmax(logits, -1)

    return np.stack([np.asarray(pred(jnp.asarray(f))) for f in np.asarray(flat)])
