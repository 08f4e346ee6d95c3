"""The shared base net: one subtask CNN trained on all seen classes.

Every corpus net is fine-tuned from it, so the corpus lives in one basin and the generator
learns task-dependent offsets (DESIGN.md, "Shared base").
"""
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from t2w_jax.zoo.cnn import SubtaskCNN, init_params


def train_base(model: SubtaskCNN, images: np.ndarray, labels: np.ndarray,
               class_emb: np.ndarray, class_ids, *, steps: int, batch_size: int,
               learning_rate: float, seed: int, log_every: int = 500):
  """Trains the base net on the classes ``class_ids`` (softmax over all of them).

  Args:
    model: the subtask CNN.
    images: uint8 (N, H, W, 3) training images of the whole dataset.
    labels: (N,) global labels.
    class_emb: (C, d) text embeddings of every class.
    class_ids: the seen classes to train on.
    steps, batch_size, learning_rate: optimisation (Adam, cosine decay).
    seed: initialisation and batch seed.
    log_every: steps between progress log lines.

  Returns:
    The trained params pytree.
  """
  class_ids = np.asarray(class_ids)
  local_of = -np.ones(class_emb.shape[0], np.int64)
  local_of[class_ids] = np.arange(len(class_ids))
  rows = np.flatnonzero(local_of[labels] >= 0)
  x_all = jnp.asarray(images[rows])
  y_all = jnp.asarray(local_of[labels[rows]].astype(np.int32))
  emb = jnp.asarray(class_emb[class_ids])

  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05))
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

  # One jitted step per Python iteration: on XLA:CPU a lax.conv inside lax.scan is far
  # slower than dispatching single steps, and one net's dispatch cost is negligible.
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), steps)
  start, losses = time.time(), []
  for i in range(steps):
    params, opt_state, loss = step(params, opt_state, keys[i])
    losses.append(loss)
    if log_every and ((i + 1) % log_every == 0 or i + 1 == steps):
      rate = (i + 1) / (time.time() - start)
      logging.info("base net: step %d/%d loss %.3f (%.0f steps/s, ETA %.0fs)", i + 1, steps,
                   float(jnp.mean(jnp.stack(losses[-log_every:]))), rate,
                   (steps - i - 1) / rate)
  return params
