"""What every evaluator shares: the corpus, the test images on device, and batched accuracy.

``EvalContext.test_predictions(flat_weights, tasks)`` is the one way nets are measured:
the predictions of net i on task i's test images (which images count is
``zoo.masstrain.eval_set``'s, the trainer's own definition). ``accuracy`` (counted by
``zoo.masstrain.accuracy``, the trainer's own count) and the cached
``reference_predictions`` of the generalist and the specialists are built on it.
"""
import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t2w_jax.data import tasks as tasks_lib
from t2w_jax.zoo import corpus as corpus_lib
from t2w_jax.zoo import family as family_lib
from t2w_jax.zoo import masstrain
from t2w_jax.zoo import trainer_shape
from t2w_jax.zoo.cnn import SubtaskCNN


@dataclasses.dataclass(eq=False)
class EvalContext:
  """Corpus + dataset + (optionally) a generator, ready for measuring nets.

  Attributes:
    corpus: the opened corpus (its unseen/heldout rows are the per-task oracles).
    dataset: the ImageDataset at the corpus's image size, or for an adapter-family corpus
      the FeatureDataset of its cached trunk features (the trunk is not run again).
    model: the subtask net the corpus rows parameterise (SubtaskCNN or AdapterNet).
    data: DeviceData for accuracy (test images, class index, class embeddings).
    max_classes: K, the padding of class lists.
    gen: a loaded ``api.Generator`` or None.
    chunk: nets measured per compiled call.
  """
  corpus: corpus_lib.Corpus
  dataset: object
  model: object
  data: masstrain.DeviceData
  max_classes: int
  gen: object = None
  chunk: int = 32
  # Test predictions of the reference nets, keyed by (which, corpus row, class slots).
  # An init field, so ``dataclasses.replace`` (a context with wider class padding) shares
  # it instead of starting empty.
  reference_cache: dict = dataclasses.field(default_factory=dict, repr=False)

  @classmethod
  def create(cls, corpus_dir: str, *, gen=None, eval_per_class: int | None = None,
             chunk: int = 32) -> "EvalContext":
    """Opens the corpus and loads its dataset exactly as the corpus run did.

    An adapter-family corpus is measured on the trunk features its run cached
    (``features.npz``), not on images.
    """
    corpus = corpus_lib.open_corpus(corpus_dir)
    meta = corpus.meta
    dataset = family_lib.load_task_dataset(corpus_dir, meta)
    if tuple(dataset.class_names) != corpus.class_names:
      raise ValueError(f"dataset {meta['dataset']!r} does not have the corpus's classes")
    # The conv the corpus was trained with: fine-tuning replays its trainer exactly.
    model = family_lib.build_subtask_net(meta["model"], int(corpus.class_emb.shape[1]),
                                         trainer_shape.resolve(meta["trainer"]).conv_impl)
    per = eval_per_class or meta["trainer"]["eval_per_class"]
    # The corpus's validation split: fine-tuning draws the same training batches as the
    # corpus trainer did only if the same rows are left out.
    data = masstrain.put_data(dataset, corpus.class_emb, per,
                              val_per_class=int(meta.get("val_per_class", 0)),
                              val_seed=int(meta["seed"]))
    max_classes = max(len(r["class_ids"]) for r in corpus.records)
    return cls(corpus, dataset, model, data, max_classes, gen, chunk)

  # ---------------------------------------------------------------- tasks and text
  @property
  def corpus_trainer_shape(self) -> trainer_shape.TrainerShape:
    """The trainer shape the corpus was built with (fine-tuning replays its trainer)."""
    return trainer_shape.resolve(self.corpus.meta["trainer"])

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
  def _pred_fn(self, split: str = "test"):
    """The compiled predictor of nets on their tasks' ``split`` images (one per split)."""
    fns = self.__dict__.setdefault("_pred_fns", {})
    if split in fns:
      return fns[split]
    layout = self.corpus.layout
    data = self.data
    images = masstrain.split_images(data, split)
    # XLA's own convolution, one net at a time (lax.map): faster on XLA:CPU than the
    # vmapped im2col the trainer needs; same function of the same parameters.
    model = (self.model.clone(conv_impl="lax") if isinstance(self.model, SubtaskCNN)
             else self.model)

    def one(args):
      flat, classes, mask = args  # flat: (D,) one net, or (m, D) an output ensemble
      rows, valid = masstrain.eval_set(data, classes, mask, split)
      x = images[rows.reshape(-1)]
      emb = data.class_emb[classes]

      def logits(f):
        return masstrain.masked_logits(model, layout.unflatten(f), x, emb, mask)

      if flat.ndim == 1:
        score = logits(flat)
      else:  # the members' class probabilities, averaged (padded classes get 0)
        score = jnp.mean(jax.lax.map(lambda f: jax.nn.softmax(logits(f), -1), flat), 0)
      return jnp.where(valid.reshape(-1), jnp.argmax(score, -1), -1).astype(jnp.int32)

    fns[split] = jax.jit(lambda flat, classes, mask: jax.lax.map(one, (flat, classes, mask)))
    return fns[split]

  def _valid_fn(self, split: str = "test"):
    fns = self.__dict__.setdefault("_valid_fns", {})
    if split not in fns:
      data = self.data
      fns[split] = jax.jit(jax.vmap(
          lambda classes, mask: masstrain.eval_set(data, classes, mask, split)[1]))
    return fns[split]

  def test_predictions(self, flat: np.ndarray, tasks: Sequence[tasks_lib.Task],
                       split: str = "test"):
    """Predicted local labels of net i on task i's test images, for n nets and n tasks.

    ``flat`` is (n, D), one net per task, or (n, m, D), an output ensemble of m nets per
    task, which predicts the class of highest mean softmax probability over the task's
    classes (m times the parameters of one net).

    With ``split="val"``: on the task's validation rows (training images held out of
    every net's training; what a hyperparameter is chosen on) instead.

    The test set is K padded class slots x P images per class (``masstrain.eval_set``).
    Tasks are measured in buckets of K rounded up to a multiple of 8 (one compile per
    bucket and chunk size), so a task of 8 classes does not pay for 32 slots; each
    compiled call runs up to 8 nets one after another with XLA convolutions.

    Returns:
      (pred, label): (n, K*P) int32 over K = ``max_classes`` slots of P images; both are
      -1 where a slot holds no test image, so ``accuracy == (pred == label)[label >= 0]
      .mean()`` per row (``accuracy_from_predictions``).
    """
    flat = np.asarray(flat, np.float32)
    if flat.ndim not in (2, 3) or flat.shape[0] != len(tasks):
      raise ValueError(f"need one (D,) net or (m, D) ensemble per task: weights {flat.shape}, "
                       f"{len(tasks)} tasks")
    ids, mask = self.padded(tasks)
    per = int((self.data.test_index if split == "test" else self.data.val_index).shape[1])
    kmax = ids.shape[1]
    pred = np.full((len(tasks), kmax * per), -1, np.int32)
    buckets = np.minimum(kmax, -(-mask.sum(1) // 8) * 8)
    # Nets run one after another inside a call, so a big chunk buys nothing and its
    # padding costs whole nets: at most 8 per call.
    chunk = min(self.chunk, 8)
    for kb in np.unique(buckets):
      sel = np.flatnonzero(buckets == kb)
      for s in range(0, len(sel), chunk):
        part = sel[s:s + chunk]
        pad = np.concatenate([part, np.repeat(part[-1:], chunk - len(part))])
        out = self._pred_fn(split)(flat[pad], ids[pad, :kb], mask[pad, :kb])
        pred[part, :kb * per] = np.asarray(out)[:len(part)]
    valid = np.asarray(self._valid_fn(split)(jnp.asarray(ids), jnp.asarray(mask)))  # (n, K, P)
    label = np.where(valid, np.arange(kmax)[None, :, None], -1).reshape(len(tasks), -1)
    return pred, label.astype(np.int32)

  def accuracy(self, flat: np.ndarray, tasks: Sequence[tasks_lib.Task],
               split: str = "test") -> np.ndarray:
    """(n,) test (or, with ``split="val"``, validation) accuracy of net i on task i, for
    (n, D) flat weights (or (n, m, D) output ensembles, as ``test_predictions``) and n
    tasks."""
    return accuracy_from_predictions(*self.test_predictions(flat, tasks, split))

  def reference_predictions(self, which: str, rows) -> tuple[np.ndarray, np.ndarray]:
    """Test predictions of the generalist ("generalist") or the task's specialist ("oracle").

    Every evaluator compares against them and measuring a net is the dominant cost, so
    each (net, row) is measured once per context (and the contexts ``dataclasses.replace``
    derives from it) and then served from ``reference_cache``.

    Args:
      which: "generalist" or "oracle".
      rows: corpus rows of the tasks.

    Returns:
      (pred, label), (n, K*P) as ``test_predictions``.
    """
    if which not in ("generalist", "oracle"):
      raise ValueError(f"reference net must be 'generalist' or 'oracle', got {which!r}")
    cache = self.reference_cache
    rows = [int(r) for r in rows]
    key = lambda r: (which, r, self.max_classes)  # noqa: E731
    todo = sorted({r for r in rows if key(r) not in cache})
    if todo:
      if which == "generalist":
        nets = np.repeat(np.asarray(self.corpus.base, np.float32)[None], len(todo), 0)
      else:
        nets = np.asarray(self.corpus.weights[todo], np.float32)
      pred, label = self.test_predictions(nets, self.tasks(todo))
      for i, r in enumerate(todo):
        cache[key(r)] = (pred[i], label[i])
    return (np.stack([cache[key(r)][0] for r in rows]),
            np.stack([cache[key(r)][1] for r in rows]))

  def reference_accuracy(self, which: str, rows) -> np.ndarray:
    """(n,) test accuracy of the generalist or of each task's specialist (cached)."""
    return accuracy_from_predictions(*self.reference_predictions(which, rows))


def accuracy_from_predictions(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
  """(n,) accuracies from ``EvalContext.test_predictions`` output (-1 labels: no image)."""
  return masstrain.accuracy(pred, label, label >= 0)
