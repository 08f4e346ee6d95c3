"""The generalist: one subtask net trained on all seen classes until it stops improving.

It is the bar every generated net is measured against (the first thing a user would try
instead of a generator) and the shared start of every corpus net, so the corpus lives in
one basin and the generator learns task-dependent offsets from a converged net
(docs/design.md, "The generalist").
"""
import dataclasses
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from t2w_jax.data import tasks as tasks_lib
from t2w_jax.zoo import early_stopping
from t2w_jax.zoo import masstrain
from t2w_jax.zoo.cnn import SubtaskCNN, init_params


@dataclasses.dataclass(frozen=True)
class GeneralistInfo:
  """How the generalist was trained.

  Attributes:
    steps: the step of the kept net (best validation accuracy).
    steps_run: steps trained before early stopping (or the cap).
    val_acc: its validation accuracy over all seen classes (softmax over all of them).
    seconds: wall time of the training.
    stopped_early: False when the step cap ended the training.
  """
  steps: int
  steps_run: int
  val_acc: float
  seconds: float
  stopped_early: bool

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def train_generalist(model: SubtaskCNN, images: np.ndarray, labels: np.ndarray,
                     class_emb: np.ndarray, class_ids, *, max_steps: int, batch_size: int,
                     learning_rate: float, seed: int, val_per_class: int, eval_every: int,
                     patience: int, lr_drops: int, val_seed: int = 0,
                     val_mask: np.ndarray | None = None, log_every: int = 500):
  """Trains the generalist on the classes ``class_ids`` (softmax over all of them).

  The validation split is ``val_per_class`` TRAINING images of every class
  (``data.tasks.validation_mask``, the same split the specialists use); those images are
  never trained on, and no test image is used. Every ``eval_every`` steps the validation
  accuracy is measured (``early_stopping.host_loop``; the first check is kept whatever it
  gives). After ``patience`` checks without improvement the learning rate drops tenfold
  and training continues from the best net, up to ``lr_drops`` times; the next plateau (or
  ``max_steps``) ends it, and the best-validating net is returned.

  Args:
    model: the subtask net.
    images: (N, ...) training inputs of the whole dataset (uint8 images or features).
    labels: (N,) global labels.
    class_emb: (C, d) text embeddings of every class.
    class_ids: the seen classes to train on (held-out classes must not be among them).
    max_steps, batch_size, learning_rate: optimisation (Adam; the cap on steps).
    seed: initialisation and batch seed.
    val_per_class, val_seed: the validation split.
    val_mask: (N,) bool, the validation split given directly (when ``images`` is a subset
      of the dataset whose split was drawn on all of it); overrides the two above.
    eval_every, patience, lr_drops: early stopping and the plateau schedule.
    log_every: steps between progress log lines.

  Returns:
    (params, GeneralistInfo).
  """
  if val_per_class <= 0 or eval_every <= 0 or patience <= 0:
    raise ValueError(f"the generalist needs val_per_class, eval_every and patience > 0, got "
                     f"{val_per_class}, {eval_every}, {patience}")
  class_ids = np.asarray(class_ids)
  local_of = -np.ones(class_emb.shape[0], np.int64)
  local_of[class_ids] = np.arange(len(class_ids))
  in_task = local_of[labels] >= 0
  is_val = (tasks_lib.validation_mask(labels, val_per_class, val_seed) if val_mask is None
            else np.asarray(val_mask, bool))
  train_rows, val_rows = np.flatnonzero(in_task & ~is_val), np.flatnonzero(in_task & is_val)
  x_all = jnp.asarray(images[train_rows])
  y_all = jnp.asarray(local_of[labels[train_rows]].astype(np.int32))
  x_val = jnp.asarray(images[val_rows])
  y_val = jnp.asarray(local_of[labels[val_rows]].astype(np.int32))
  emb = jnp.asarray(class_emb[class_ids])

  # Learning rate reduced on plateau: no horizon has to be guessed, and the net is trained
  # until it stops improving at the smallest rate, not until a schedule runs out.
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
  params = init_params(model, jax.random.PRNGKey(seed), images.shape[1])
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key):
    idx = jax.random.randint(key, (batch_size,), 0, x_all.shape[0])

    def loss_fn(p):
      logits = model.apply({"params": p}, x_all[idx], emb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y_all[idx]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def val_accuracy(params):
    def chunk(i):
      x = jax.lax.dynamic_slice_in_dim(x_val_padded, i * val_chunk, val_chunk)
      return jnp.argmax(model.apply({"params": params}, x, emb), -1)
    pred = jax.lax.map(chunk, jnp.arange(num_chunks)).reshape(-1)[:y_val.shape[0]]
    return masstrain.accuracy(pred, y_val, jnp.ones(y_val.shape, bool))

  val_chunk = 512
  num_chunks = -(-int(y_val.shape[0]) // val_chunk)
  pad = num_chunks * val_chunk - int(y_val.shape[0])
  x_val_padded = jnp.concatenate([x_val, jnp.repeat(x_val[:1], pad, 0)]) if pad else x_val

  # One jitted step per Python iteration: on XLA:CPU a lax.conv inside lax.scan is far
  # slower than dispatching single steps, and one net's dispatch cost is negligible.
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), max_steps)
  start, losses, drops = time.time(), [], 0

  def end_of(check):  # the step after which check ``check`` is taken (0: the start)
    return min(check * eval_every, max_steps)

  def period(c):
    nonlocal params, opt_state
    for i in range(end_of(c), end_of(c + 1)):
      params, opt_state, loss = step(params, opt_state, keys[i])
      losses.append(loss)
      done = i + 1
      if log_every and done % log_every == 0 and done != end_of(c + 1):
        logging.info("generalist: step %d/%d", done, max_steps)
    return params, float(val_accuracy(params))

  def after_check(best, c, acc):
    nonlocal drops, params
    if early_stopping.stopped(best, patience) and drops < lr_drops:
      # Plateau: continue from the best net at a tenth of the rate.
      drops, best, params = drops + 1, best._replace(bad=0), best.value
      opt_state.hyperparams["learning_rate"] = jnp.asarray(
          learning_rate * 0.1 ** drops, jnp.float32)
      logging.info("generalist: plateau, learning rate %.2g from step %d",
                   learning_rate * 0.1 ** drops, end_of(best.check))
    done = end_of(c)
    rate = done / (time.time() - start)
    logging.info("generalist: step %d/%d loss %.3f val acc %.4f (best %.4f at %d; "
                 "%.0f steps/s, at most %.0fs to go)", done, max_steps,
                 float(jnp.mean(jnp.stack(losses[-eval_every:]))), acc, best.score,
                 end_of(best.check), rate, (max_steps - done) / rate)
    return best

  # A score of -1 makes the first check kept whatever its accuracy: the random init is no
  # candidate.
  best, checks = early_stopping.host_loop(
      period, early_stopping.start(params, -1.0), -(-max_steps // eval_every), patience,
      after_check=after_check)
  info = GeneralistInfo(steps=end_of(best.check), steps_run=end_of(checks), val_acc=best.score,
                        seconds=time.time() - start,
                        stopped_early=bool(early_stopping.stopped(best, patience)))
  logging.info("generalist: kept step %d of %d (val acc %.4f) in %.0f s", info.steps,
               info.steps_run, info.val_acc, info.seconds)
  return best.value, info
