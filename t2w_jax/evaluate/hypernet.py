"""The plain hypernetwork baseline: an MLP from a task's class embeddings to a delta over
the generalist's weights, trained through the task loss alone, with no corpus of weights.

It is what a user with the seen classes' images and no corpus of trained nets would build
instead of a weight generator, and the bar the diffusion generator has to clear:
a generator trained on a corpus of specialists earns its cost only if it beats a
hypernetwork trained directly for the tasks' loss.

Training draws fresh tasks every step: 2..K classes (the corpus's task sizes) out of the
seen tasks' classes, images from their training rows (``task_loss.seen_task_images``: no
held-out class, no validation row). Like every other trained baseline it keeps its
best-validating parameters: the cross-entropy on the validation rows of a fixed set of
seen-class tasks is checked every ``eval_every`` steps, over the whole cosine schedule (or
until ``patience`` checks without improvement, when given).
"""
import logging
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from t2w_jax import task_loss as task_loss_lib
from t2w_jax.evaluate import registry
from t2w_jax.evaluate.baselines import gap_closure_from_means, split_tasks, stats
from t2w_jax.zoo import early_stopping
from t2w_jax.zoo import masstrain
from t2w_jax.zoo.cnn import unit_normalize


class TextHypernet(nn.Module):
  """Class embeddings of a task -> a delta over the generalist's flat weights.

  The task is the mean of its unit class embeddings (the subtask net's head already sees
  each class's embedding; the delta only has to know which classes are in play). The last
  layer starts at zero, so the untrained hypernetwork returns the generalist.

  Attributes:
    out_dim: D, the flat weight count.
    hidden: hidden width.
    depth: hidden layers.
  """
  out_dim: int
  hidden: int = 512
  depth: int = 2

  @nn.compact
  def __call__(self, class_emb, mask):
    """(B, K, d) class embeddings and (B, K) mask -> (B, D) weight deltas."""
    m = mask.astype(jnp.float32)[..., None]
    x = jnp.sum(unit_normalize(class_emb) * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
    for i in range(self.depth):
      x = nn.gelu(nn.Dense(self.hidden, name=f"hidden_{i}")(x))
    return nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros, name="out")(x)


def train_hypernet(ctx, rng, *, hidden: int, depth: int, batch_size: int, images: int,
                   learning_rate: float, max_steps: int, eval_every: int,
                   patience: int | None, val_tasks: int):
  """Trains a TextHypernet on fresh seen-class tasks; returns (params, info)."""
  corpus = ctx.corpus
  meta = corpus.meta
  kmax = max(len(r["class_ids"]) for r in corpus.records)
  train_data = jax.tree.map(jnp.asarray, task_loss_lib.seen_task_images(
      corpus, corpus.path, "train", dataset=ctx.dataset))
  val_data = jax.tree.map(jnp.asarray, task_loss_lib.seen_task_images(
      corpus, corpus.path, "val", dataset=ctx.dataset))
  if int(np.asarray(val_data.class_count)[np.asarray(val_data.pool)].min()) == 0:
    raise ValueError("the hypernetwork baseline selects on the corpus's validation rows, "
                     "but this corpus has none (val_per_class = 0)")
  base = jnp.asarray(corpus.base, jnp.float32)
  model = TextHypernet(out_dim=int(base.shape[0]), hidden=hidden, depth=depth)
  loss_fn = task_loss_lib.make_task_loss(
      task_loss_lib.subtask_model(meta["model"], int(corpus.class_emb.shape[1])), corpus.layout,
      images)
  k_init, k_val, k_val_img, k_train = jax.random.split(rng, 4)
  val_set = task_loss_lib.sample_tasks(k_val, val_data, val_tasks, kmax)
  params = model.init(k_init, val_set[2][:1], val_set[1][:1])["params"]
  tx = masstrain.adam_cosine(learning_rate, max_steps)

  def mean_loss(p, tasks, data, key):
    classes, mask, emb = tasks
    nets = base[None] + model.apply({"params": p}, emb, mask)
    return jnp.mean(loss_fn(nets, classes, mask, emb, data, key))

  # The image pools are arguments, not closed-over constants, so they are not baked into
  # the compiled program.
  @jax.jit
  def period(p, opt, step0, train_data, val_data):
    def one(carry, i):
      p, opt = carry
      k_task, k_img = jax.random.split(jax.random.fold_in(k_train, step0 + i))
      tasks = task_loss_lib.sample_tasks(k_task, train_data, batch_size, kmax)
      loss, g = jax.value_and_grad(mean_loss)(p, tasks, train_data, k_img)
      upd, opt = tx.update(g, opt, p)
      return (optax.apply_updates(p, upd), opt), loss
    (p, opt), losses = jax.lax.scan(one, (p, opt), jnp.arange(eval_every))
    val = mean_loss(p, val_set, val_data, k_val_img)
    return p, opt, jnp.mean(losses), val

  val0 = float(jax.jit(mean_loss)(params, val_set, val_data, k_val_img))
  opt, loss = tx.init(params), None
  t0 = time.time()

  def run_period(c):
    nonlocal params, opt, loss
    params, opt, loss, val = period(params, opt, c * eval_every, train_data, val_data)
    return params, float(val)

  def log(best, c, val):
    step = c * eval_every
    logging.info("hypernet: step %d train loss %.4f val loss %.4f (best %.4f at %d; %.1f "
                 "steps/s)", step, float(loss), val, best.score, best.check * eval_every,
                 step / max(time.time() - t0, 1e-9))
    return best

  # The start is the first check: the untrained hypernetwork returns the generalist.
  best, checks = early_stopping.host_loop(
      run_period, early_stopping.start(params, val0), -(-max_steps // eval_every), patience,
      minimize=True, after_check=log)
  info = {"kept_step": best.check * eval_every, "steps_run": checks * eval_every,
          "val_loss": best.score, "val_loss_at_start": val0, "seconds": time.time() - t0}
  return best.value, model, info


@registry.register("hypernet")
def evaluate_hypernet(ctx, rng, *, splits: Sequence[str] = ("unseen", "heldout"),
                      max_tasks: int | None = None, hidden: int = 512, depth: int = 2,
                      batch_size: int = 64, images: int = 16, learning_rate: float = 2e-3,
                      max_steps: int = 8000, eval_every: int = 250,
                      patience: int | None = None,
                      val_tasks: int = 128, min_denominator: float = 0.02) -> dict:
  """The plain hypernetwork baseline (text -> weight delta, task loss only, no corpus).

  Args:
    ctx: the ``EvalContext``.
    rng: training randomness (init, tasks, images).
    splits / max_tasks: the tasks measured, as in the other evaluators.
    hidden / depth: the MLP.
    batch_size: tasks per step; images: images per task per step.
    learning_rate: Adam, cosine-decayed over ``max_steps``.
    max_steps / eval_every / patience: the validation cross-entropy is checked every
      ``eval_every`` steps and the best-validating parameters are kept. By default
      (``patience=None``) the whole cosine schedule runs: stopping after ``patience``
      checks without improvement stopped it in its noisy high-learning-rate phase, a
      weaker baseline than the full schedule gives (docs/results.md, "How long the hypernetwork trains").
      The step cap is the longest the main job's 20 minutes allow.
    val_tasks: fixed seen-class tasks whose validation rows decide the stop.
    min_denominator: gap closure is None where |specialist - generalist| is below it.

  Returns:
    JSON-ready dict: training info and, per split, the method's statistics (``methods.
    hypernet``, with per-task accuracies) and its gap closure from the split means.
  """
  params, model, info = train_hypernet(
      ctx, rng, hidden=hidden, depth=depth, batch_size=batch_size, images=images,
      learning_rate=learning_rate, max_steps=max_steps, eval_every=eval_every,
      patience=patience, val_tasks=val_tasks)
  base = np.asarray(ctx.corpus.base, np.float32)
  apply = jax.jit(lambda p, e, m: model.apply({"params": p}, e, m))
  out = dict(info, hidden=hidden, depth=depth, splits={})
  for split in splits:
    rows, tasks = split_tasks(ctx, max_tasks, split)
    emb, mask = ctx.class_text(tasks)
    nets = base[None] + np.asarray(apply(params, emb, mask), np.float32)
    acc = ctx.accuracy(nets, tasks)
    g = ctx.reference_accuracy("generalist", rows).mean()
    o = ctx.reference_accuracy("oracle", rows).mean()
    out["splits"][split] = {
        "n_tasks": len(tasks), "task_ids": [t.task_id for t in tasks],
        "methods": {"hypernet": stats(acc)},
        "gap_closure_from_means": gap_closure_from_means(float(acc.mean()), g, o,
                                                         float(min_denominator))}
  return out
