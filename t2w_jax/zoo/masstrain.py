"""Train many subtask nets at once: vmap over nets, lax.scan over steps, lax.map over chunks.

Every net starts from the shared base net and has its own classes, batches, optimizer state
and seed. The image data stays on the device; a net's batches are gathered inside the
compiled loop, so one call trains a whole shard of nets with no host round trips.

How the nets are spread (``TrainerSpec``):

* ``nets_per_chunk``: nets trained side by side under ``vmap``, and the subtask CNN's
  ``conv_impl``. The fastest pair depends on the machine (on GPU/TPU hundreds of nets per
  chunk; on XLA:CPU a vmapped ``lax.conv`` can become a slow grouped convolution, im2col a
  batched matmul, and wide chunks can stop the second core from adding anything), so the
  corpus run chooses it by a short timed calibration (``zoo/trainer_shape.py``, which
  times ``make_step_runner``) unless the config forces it.
* the nets axis is sharded over all local devices (a 1-D mesh named ``nets``): on a GPU box
  or a TPU host each chip trains its own slice of nets; on a 2-core CPU, running with
  ``--xla_force_host_platform_device_count=2`` puts one single-threaded device per core.
"""
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from t2w_jax.data import tasks as tasks_lib
from t2w_jax.zoo import early_stopping
from t2w_jax.zoo.cnn import SubtaskCNN, cosine_logits


@dataclasses.dataclass(frozen=True)
class TrainerSpec:
  """How to train one net and how to batch nets. Hashable: used as a jit static.

  Its defaults of the recipe (batch size, learning rate, patience) are the one home of those
  of the corpus config (``configs/corpus.py``) and of ``api.few_shot``.

  Attributes:
    steps: the step cap (with early stopping) or the fixed number of steps (without).
    batch_size, learning_rate: Adam with a cosine decay over ``steps``.
    nets_per_chunk: nets trained side by side under ``vmap``.
    eval_per_class: test images per class for the reported accuracies.
    eval_every: steps between validation checks; 0 trains exactly ``steps`` steps.
    patience: validation checks without improvement before a net stops; the net kept is
      the one with the best validation accuracy seen (the start counts as a check).
  """
  steps: int = 200
  batch_size: int = 64
  learning_rate: float = 3e-3
  nets_per_chunk: int = 8
  eval_per_class: int = 100
  eval_every: int = 0
  patience: int = 5

  def __post_init__(self):
    if self.eval_every and self.steps % self.eval_every:
      raise ValueError(f"trainer steps ({self.steps}) must be a multiple of eval_every "
                       f"({self.eval_every})")
    if self.eval_every and self.patience < 1:
      raise ValueError(f"trainer patience must be >= 1, got {self.patience}")


class TaskBatch(NamedTuple):
  """A batch of n tasks, padded to K classes.

  classes: (n, K) int32 global class ids (padding entries are any valid id).
  mask: (n, K) bool, True for the task's real classes.
  seeds: (n,) uint32, one per net.
  """
  classes: Any
  mask: Any
  seeds: Any


class DeviceData(NamedTuple):
  """Dataset arrays placed on the device once (replicated over the nets mesh).

  images / test_images: uint8 (N, H, W, 3).
  class_index / test_index: (C, max_per_class) int32 row ids of each class's examples;
    ``class_index`` holds the training rows only (the validation rows are left out).
  class_count / test_count: (C,) int32 number of valid entries per row.
  class_emb: (C, d) float32 text embedding of every class.
  val_index / val_count: the validation rows (training images held out of training), per
    class, like ``class_index``; width 1 and count 0 when there is no validation split.
  """
  images: Any
  class_index: Any
  class_count: Any
  test_images: Any
  test_index: Any
  test_count: Any
  class_emb: Any
  val_index: Any
  val_count: Any


def index_by_class(labels: np.ndarray, num_classes: int, limit: int | None = None,
                    keep: np.ndarray | None = None):
  """(C, width) row ids of each class's examples (those where ``keep``) and their counts."""
  rows = np.arange(len(labels)) if keep is None else np.flatnonzero(keep)
  labels = np.asarray(labels)[rows]
  order = rows[np.argsort(labels, kind="stable")]
  full = np.bincount(labels, minlength=num_classes)
  counts = full if limit is None else np.minimum(full, limit)
  width = max(int(counts.max(initial=0)), 1)
  index = np.zeros((num_classes, width), np.int32)
  starts = np.concatenate([[0], np.cumsum(full)[:-1]])
  for c in range(num_classes):
    index[c, :counts[c]] = order[starts[c]:starts[c] + counts[c]]
  return index, counts.astype(np.int32)


def put_data(dataset, class_emb: np.ndarray, eval_per_class: int, mesh: Mesh | None = None,
             val_per_class: int = 0, val_seed: int = 0):
  """Place a dataset and its class embeddings on the device(s), replicated.

  Args:
    dataset: an ``ImageDataset`` (images already at the training resolution).
    class_emb: (C, d) text embeddings, one per class of the dataset, in label order.
    eval_per_class: test images used per class when measuring a task's accuracy.
    mesh: the nets mesh (arrays are replicated over it); None for the default device.
    val_per_class, val_seed: the validation split carved from the training images
      (``data.tasks.validation_mask``); its rows are left out of ``class_index``.

  Returns:
    DeviceData.
  """
  c = len(dataset.class_names)
  if class_emb.shape[0] != c:
    raise ValueError(f"{class_emb.shape[0]} class embeddings for {c} classes")
  is_val = tasks_lib.validation_mask(dataset.train_labels, val_per_class, val_seed)
  class_index, class_count = index_by_class(dataset.train_labels, c, keep=~is_val)
  val_index, val_count = index_by_class(dataset.train_labels, c, keep=is_val)
  test_index, test_count = index_by_class(dataset.test_labels, c, eval_per_class)
  arrays = DeviceData(dataset.train_images, class_index, class_count, dataset.test_images,
                      test_index, test_count, class_emb.astype(np.float32), val_index,
                      val_count)
  if mesh is None:
    return DeviceData(*[jnp.asarray(a) for a in arrays])
  rep = NamedSharding(mesh, P())
  return DeviceData(*[jax.device_put(a, rep) for a in arrays])


def mask_classes(logits, mask):
  """(B, K) logits with a task's padded class slots (``mask`` (K,) False) at -inf: never
  predicted, no probability."""
  return jnp.where(mask[None, :], logits, -jnp.inf)


def masked_logits(model: SubtaskCNN, params, images, emb, mask):
  """Logits over a task's K (padded) classes; padded classes get -inf."""
  return mask_classes(model.apply({"params": params}, images, emb), mask)


def adam_cosine(learning_rate: float, steps: int) -> optax.GradientTransformation:
  """The optimiser of every net trained for a task: Adam, its learning rate decayed
  (cosine, to 5 %) over ``steps``.

  The decay makes the last steps small, so a net that runs to the cap settles instead of
  ending on a noisy step; early stopping keeps whichever checkpoint validated best. The
  corpus trainer (and every fine-tuning built on it) and the hypernetwork baseline use it.
  """
  return optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05))


def optimizer(spec: TrainerSpec) -> optax.GradientTransformation:
  """The task nets' optimiser: ``adam_cosine`` over the step cap."""
  return adam_cosine(spec.learning_rate, spec.steps)


def train_step_fn(model, spec, data, classes, mask):
  """One task net's train step: ``step((params, opt_state), key) -> ((params, opt_state),
  loss)``, scannable over per-step keys. The corpus trainer, the fine-tune curves and the
  per-net benchmark loop all run this step, so they draw the same batches from the same keys.
  """
  emb = data.class_emb[classes]
  k = jnp.sum(mask)
  tx = optimizer(spec)

  def loss_fn(params, x, y):
    logits = masked_logits(model, params, x, emb, mask)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(carry, key):
    params, opt_state = carry
    rows, local = draw_batch(spec.batch_size, data, classes, k, key)
    loss, grads = jax.value_and_grad(loss_fn)(params, data.images[rows], local)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return step


def draw_batch(batch_size: int, data, classes, k, key):
  """One step's batch of a task: (image rows (B,), local labels (B,)), balanced over the
  task's ``k`` real classes (a local class, then one of its training images). The one
  definition of a net's batches (the benchmark's PyTorch peers train on them too)."""
  k_cls, k_img = jax.random.split(key)
  local = jax.random.randint(k_cls, (batch_size,), 0, k)
  cls = classes[local]
  j = jax.random.randint(k_img, (batch_size,), 0, data.class_count[cls])
  return data.class_index[cls, j], local


def step_keys(seed, steps: int):
  """The per-step keys of the net with this seed (shared by every user of the step)."""
  return jax.random.split(jax.random.PRNGKey(seed), steps)


class Fit(NamedTuple):
  """One net's training by ``train_one``."""
  params: Any       # the kept net (best validation accuracy, or the last without checks)
  steps: Any        # () int32: the step at which the kept net was taken (0: the start)
  steps_run: Any    # () int32: steps actually trained
  final_loss: Any   # () mean training loss over the last check period (or last 10 %)


def train_one(model, spec, data, base_params, classes, mask, seed) -> Fit:
  """Train one net from the base on one task, early-stopped on its validation accuracy.

  Without checks (``eval_every == 0``) every net trains ``steps`` steps. With checks, the
  steps run in periods of ``eval_every`` inside ``early_stopping.while_improving`` (a
  ``lax.while_loop``) that stops after ``patience`` checks without improvement, the start
  counting as the first check; under ``vmap`` a finished net stays frozen while the others
  of its chunk go on, and a chunk stops when all its nets have.
  """
  step = train_step_fn(model, spec, data, classes, mask)
  init = (base_params, optimizer(spec).init(base_params))
  keys = step_keys(seed, spec.steps)
  if not spec.eval_every:
    (params, _), losses = jax.lax.scan(step, init, keys)
    tail = max(spec.steps // 10, 1)
    n = jnp.int32(spec.steps)
    return Fit(params, n, n, jnp.mean(losses[-tail:]))

  every, periods = spec.eval_every, spec.steps // spec.eval_every
  keys = keys.reshape((periods, every) + keys.shape[1:])

  def val_acc(params):
    return task_accuracy(model, data, params, classes, mask, split="val")

  def period(carry, i):
    state, losses = jax.lax.scan(step, carry[0], keys[i])
    return (state, jnp.mean(losses)), state[0], val_acc(state[0])

  (_, loss), best, ran = early_stopping.while_improving(
      period, (init, jnp.float32(jnp.nan)),
      early_stopping.start(base_params, val_acc(base_params)), periods, spec.patience)
  return Fit(best.value, best.check * every, ran * every, loss)


def eval_set(data, classes, mask, split: str = "test"):
  """A task's held-out images as (K, per) row ids and validity (padding, missing images).

  The one definition of which (class slot, image) pairs count: the trainer's early
  stopping, the corpus accuracies and every evaluator's accuracy use it.

  Args:
    data: ``DeviceData``.
    classes: (K,) global class ids of the task's slots.
    mask: (K,) True for real classes.
    split: "test" (the test images) or "val" (the validation rows of the training
      images); ``split_images`` gives the array the row ids index.

  Returns:
    (rows (K, per) image row ids, valid (K, per) bool).
  """
  index, count = ((data.test_index, data.test_count) if split == "test"
                  else (data.val_index, data.val_count))
  per = index.shape[1]
  rows = index[classes]                                      # (K, per)
  valid = (jnp.arange(per)[None, :] < count[classes][:, None]) & mask[:, None]
  return rows, valid


def split_images(data, split: str):
  """The image array ``eval_set``'s row ids index for ``split``."""
  if split not in ("test", "val"):
    raise ValueError(f"split must be 'test' or 'val', got {split!r}")
  return data.test_images if split == "test" else data.images


def accuracy(pred, label, valid):
  """The fraction of ``valid`` entries where ``pred == label``, along the last axis.

  The one count behind every accuracy: the generalist's validation, the trainer's task
  accuracy and early stopping, and every evaluator's (``EvalContext.test_predictions``).
  NumPy arrays give a NumPy (float64) result, JAX arrays a JAX (float32) one.

  Args:
    pred, label: (..., N) predicted and true labels.
    valid: (..., N) bool, the entries that count (none valid: accuracy 0).
  """
  hits = (pred == label) & valid
  return hits.sum(-1) / valid.sum(-1).clip(min=1)


def _accuracy_from_embeddings(model, feats, valid, class_emb, mask):
  """Accuracy given image embeddings (K, per, d) of a task's K class rows of test images."""
  kmax, per = valid.shape
  logits = cosine_logits(feats.reshape(kmax * per, -1), class_emb, model.logit_scale)
  pred = jnp.argmax(mask_classes(logits, mask), axis=-1)
  labels = jnp.broadcast_to(jnp.arange(kmax)[:, None], (kmax, per)).reshape(-1)
  return accuracy(pred, labels, valid.reshape(-1))


def _embed_rows(model, params, images, rows):
  """Embeddings (R, per, d) of ``images`` at (R, per) row ids, one row at a time."""
  return jax.lax.map(
      lambda r: model.apply({"params": params}, images[r], method="embed"), rows)


def task_accuracy(model, data, params, classes, mask, split: str = "test"):
  """Accuracy of one net on one task's classes, on its test images (up to eval_per_class
  each) or, with ``split="val"``, on its validation images.

  The images are embedded one class row at a time (``lax.map``), keeping the working set
  small (the trainer measured faster this way than embedding the whole test set at once;
  docs/bench).
  """
  rows, valid = eval_set(data, classes, mask, split)
  feats = _embed_rows(model, params, split_images(data, split), rows)  # (K, per, d)
  return _accuracy_from_embeddings(model, feats, valid, data.class_emb[classes], mask)


def class_embeddings_of(model, params, data):
  """Embeddings (C, per, d) of every class's test images by one net (e.g. the shared base).

  Computed once, a shared net's accuracy on any task is then a cheap lookup
  (``accuracy_from_class_embeddings``) instead of a forward pass per task.
  """
  return _embed_rows(model, params, data.test_images, data.test_index)


def accuracy_from_class_embeddings(model, data, feats, classes, mask):
  """``task_accuracy`` of the net whose ``class_embeddings_of`` are ``feats``."""
  _, valid = eval_set(data, classes, mask)
  return _accuracy_from_embeddings(model, feats[classes], valid, data.class_emb[classes], mask)


class TrainResult(NamedTuple):
  params: Any          # pytree with a leading nets axis
  base_acc: Any        # (n,) test accuracy of the shared start (the generalist)
  trained_acc: Any     # (n,) test accuracy of the kept net (the specialist)
  final_loss: Any      # (n,) mean training loss at the end (see ``Fit``)
  steps: Any           # (n,) step of the kept net (early stopping's choice)
  steps_run: Any       # (n,) steps trained


def make_trainer(model: SubtaskCNN, spec: TrainerSpec, mesh: Mesh | None = None, *,
                 own_starts: bool = False):
  """Compile-ready function ``(data, base_params, tasks) -> TrainResult`` for n tasks.

  n must be a multiple of ``nets_per_chunk * mesh.size``. Inside: the nets axis is sharded
  over the mesh; each device ``lax.map``s over its chunks; each chunk ``vmap``s over nets;
  each net ``lax.scan``s over its steps.

  Args:
    model: the subtask net.
    spec: the recipe (steps, early stopping, chunking).
    mesh: the 1-D ``nets`` mesh; None: one device.
    own_starts: every net starts from its own params: ``base_params`` then has a leading
      nets axis like the tasks, and ``base_acc`` is each start's test accuracy. Default:
      one shared start (the generalist) for every net.
  """

  def per_net(data, start, classes, mask, seed, base_feats=None):
    fit = train_one(model, spec, data, start, classes, mask, seed)
    if base_feats is None:
      base_acc = task_accuracy(model, data, start, classes, mask)
    else:
      base_acc = accuracy_from_class_embeddings(model, data, base_feats, classes, mask)
    acc = task_accuracy(model, data, fit.params, classes, mask)
    return TrainResult(fit.params, base_acc, acc, fit.final_loss, fit.steps, fit.steps_run)

  def run(data, base_params, tasks: TaskBatch):
    if own_starts:
      return _over_chunks(
          lambda s, t: per_net(data, s, t.classes, t.mask, t.seeds), spec.nets_per_chunk,
          base_params, tasks)
    # The shared base net is measured once per call, not once per task.
    base_feats = class_embeddings_of(model, base_params, data)
    return _over_chunks(
        lambda t: per_net(data, base_params, t.classes, t.mask, t.seeds, base_feats),
        spec.nets_per_chunk, tasks)

  return _on_mesh(run, mesh, own_starts)


def _over_chunks(per_net, nets_per_chunk: int, *trees):
  """``per_net`` over the leading (nets) axis of ``trees``: ``vmap`` over the nets of a
  chunk, ``lax.map`` over chunks; the outputs keep the leading nets axis."""
  n = jax.tree.leaves(trees)[0].shape[0]
  c = nets_per_chunk

  def chunked(tree):
    return jax.tree.map(lambda a: a.reshape((n // c, c) + a.shape[1:]), tree)

  chunk_fn = jax.vmap(per_net)
  out = jax.lax.map(lambda a: chunk_fn(*a), tuple(chunked(t) for t in trees))
  return jax.tree.map(lambda a: a.reshape((n,) + a.shape[2:]), out)


def _on_mesh(run, mesh: Mesh | None, own_starts: bool):
  """``run(data, starts, tasks)`` jitted, its nets axis sharded over ``mesh`` (None: one
  device)."""
  if mesh is None:
    return jax.jit(run)
  # shard_map gives each device its own slice of nets and its own lax.map over chunks:
  # no communication at all, so the devices (cores, chips) run independently.
  rep, nets = P(), P("nets")
  sharded = jax.shard_map(run, mesh=mesh, in_specs=(rep, nets if own_starts else rep, nets),
                          out_specs=nets, check_vma=False)
  return jax.jit(sharded)


def make_step_runner(model, spec: TrainerSpec, mesh: Mesh | None = None):
  """``(data, base_params, tasks) -> (n,) last losses``: every net's ``spec.steps`` train
  steps from the shared start, shaped as ``make_trainer`` shapes them (sharded over the mesh,
  chunks of ``nets_per_chunk`` under ``vmap``), without checks or accuracies.

  What the trainer-shape calibration times (``zoo/trainer_shape.py``): the steps are where
  the trainer's time goes, and the candidates differ only in how the steps are laid out.
  """
  def run(data, base_params, tasks: TaskBatch):
    def per_net(t):
      step = train_step_fn(model, spec, data, t.classes, t.mask)
      init = (base_params, optimizer(spec).init(base_params))
      _, losses = jax.lax.scan(step, init, step_keys(t.seeds, spec.steps))
      return losses[-1]

    return _over_chunks(per_net, spec.nets_per_chunk, tasks)

  return _on_mesh(run, mesh, own_starts=False)


def nets_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``nets`` over the given (default: all local) devices."""
  devices = jax.local_devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("nets",))
