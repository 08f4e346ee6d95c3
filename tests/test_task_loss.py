"""The functional (task) loss: what it may see, that it equals a direct computation, that it
lowers the task loss of the generator's decoded nets, and the plain hypernetwork baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import dit as dit_config
from conftest import binomial_tail
from t2w_jax import api
from t2w_jax import task_loss as task_loss_lib
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.evaluate import context as context_lib
from t2w_jax.evaluate import hypernet as hypernet_lib
from t2w_jax.evaluate import registry
from t2w_jax.train import loop
from t2w_jax.zoo import corpus as corpus_lib
from t2w_jax.zoo import family as family_lib


# The learning test's tasks (the corpus's seen tasks, then fresh tasks of their classes) and
# images per task: enough for a binomial margin and a per-task loss well above its noise.
NUM_TASKS = 64
TASK_IMAGES = 256
# The chance, were the task loss to do nothing, of as many tasks being won.
FALSE_PASS = 0.01


@pytest.fixture(scope="module")
def corpus_dir(tiny_corpus_dir):
  return tiny_corpus_dir


def test_pool_holds_only_seen_training_rows(corpus_dir):
  """The task loss's images are exactly the seen tasks' classes' training rows minus the
  validation rows: no held-out class, no validation row, nothing else."""
  corpus = corpus_lib.open_corpus(corpus_dir)
  dataset = family_lib.load_task_dataset(corpus_dir, corpus.meta)
  data = task_loss_lib.seen_task_images(corpus, corpus_dir, dataset=dataset)
  seen = task_loss_lib.seen_classes(corpus)
  held = {c for i in corpus.indices("heldout") for c in corpus.records[i]["class_ids"]
          if c not in seen}
  assert held and not held & set(seen)
  count = np.asarray(data.class_count)
  assert all(count[c] == 0 for c in held)
  assert all(count[c] > 0 for c in seen)
  is_val = tasks_lib.validation_mask(dataset.train_labels, corpus.meta["val_per_class"],
                                     corpus.meta["seed"])
  want = np.flatnonzero(np.isin(dataset.train_labels, seen) & ~is_val)
  assert len(data.images) == len(want) == count.sum()
  np.testing.assert_array_equal(np.sort(np.asarray(data.images).reshape(len(want), -1), 0),
                                np.sort(dataset.train_images[want].reshape(len(want), -1), 0))
  val = task_loss_lib.seen_task_images(corpus, corpus_dir, "val", dataset=dataset)
  assert len(val.images) == int(np.isin(dataset.train_labels, seen)[is_val].sum())


def test_task_loss_is_the_cross_entropy_of_each_net_on_its_task(corpus_dir):
  """Net i's value is the mean cross-entropy of net i on images of task i's classes,
  labelled by class slot; vmapped over nets and invariant to the other nets."""
  corpus = corpus_lib.open_corpus(corpus_dir)
  data = jax.tree.map(jnp.asarray, task_loss_lib.seen_task_images(corpus, corpus_dir))
  model = task_loss_lib.subtask_model(corpus.meta["model"], corpus.class_emb.shape[1])
  loss = jax.jit(task_loss_lib.make_task_loss(model, corpus.layout, 16))
  rows = corpus.indices("seen")[:3]
  tasks = [tasks_lib.Task(0, "seen", tuple(corpus.records[i]["class_ids"]), 0) for i in rows]
  ids, mask = tasks_lib.pad_tasks(tasks, 4)
  emb = np.asarray(corpus.class_emb)[ids]
  nets = np.asarray(corpus.weights[rows], np.float32)
  key = jax.random.PRNGKey(3)
  got = np.asarray(loss(nets, ids, mask, emb, data, key))
  chex_shape = got.shape
  assert chex_shape == (3,) and np.all(got > 0)
  # The same value by hand for net 1, with the keys the loss derives.
  k1 = jax.random.split(key, 3)[1]
  k_cls, k_img = jax.random.split(k1)
  local = jax.random.randint(k_cls, (16,), 0, mask[1].sum())
  cls = ids[1][np.asarray(local)]
  j = jax.random.randint(k_img, (16,), 0, np.asarray(data.class_count)[cls])
  x = np.asarray(data.images)[np.asarray(data.class_index)[cls, np.asarray(j)]]
  logits = model.apply({"params": corpus.layout.unflatten(nets[1])}, x, emb[1])
  logits = jnp.where(mask[1][None], logits, -jnp.inf)
  want = optax.softmax_cross_entropy_with_integer_labels(logits, local).mean()
  np.testing.assert_allclose(got[1], want, rtol=1e-5)
  # Another net in slot 0 does not change slot 1's value.
  other = nets.copy()
  other[0] = corpus.base
  np.testing.assert_allclose(np.asarray(loss(other, ids, mask, emb, data, key))[1:], got[1:],
                             rtol=1e-6)


def _train(corpus_dir, workdir, **overrides):
  c = dit_config.get_config("tiny")
  c.corpus_dir = corpus_dir
  c.mesh.data = 2
  c.update(num_steps=80, adv_weight=0.0, learning_rate=1e-2, checkpoint_every=80,
           log_every=80, ema_decay=0.9, **overrides)
  loop.train(c, workdir)
  return api.load(workdir)


@pytest.mark.slow
def test_task_loss_lowers_the_task_loss_of_generated_nets(corpus_dir, tmp_path):
  """Same seed, same steps: the generator trained with the task loss generates nets (one
  DDIM step, the default sampler) whose cross-entropy on their tasks' training images is
  lower than the diffusion-only generator's, on the tasks the task loss trains on (the
  corpus's seen tasks and fresh tasks of their classes).

  Judged per task, paired (the same noise and the same images for both generators), by a
  binomial margin over many tasks: the difference of two means over the corpus's few seen
  tasks is within the noise of the float rounding at this size, while a task loss that
  did nothing would win each task with probability at most 1/2.
  """
  corpus = corpus_lib.open_corpus(corpus_dir)
  data = jax.tree.map(jnp.asarray, task_loss_lib.seen_task_images(corpus, corpus_dir))
  model = task_loss_lib.subtask_model(corpus.meta["model"], corpus.class_emb.shape[1])
  loss = jax.jit(task_loss_lib.make_task_loss(model, corpus.layout, TASK_IMAGES))
  rows = corpus.indices("seen")
  tasks = [tasks_lib.Task(0, "seen", tuple(corpus.records[i]["class_ids"]), 0) for i in rows]
  max_classes = dit_config.get_config("tiny").max_classes
  ids, mask = tasks_lib.pad_tasks(tasks, max_classes)
  emb = np.asarray(corpus.class_emb)[ids] * mask[..., None]
  f_ids, f_mask, f_emb = task_loss_lib.sample_tasks(jax.random.PRNGKey(11), data,
                                                    NUM_TASKS - len(rows), max_classes)
  ids, mask, emb = (np.concatenate([a, np.asarray(b)]) for a, b in
                    ((ids, f_ids), (mask, f_mask), (emb, f_emb)))

  def task_loss_of(gen):
    nets = api.sample_flat(gen, emb, mask, rng=jax.random.PRNGKey(0), steps=1)
    return np.asarray(loss(nets, ids, mask, emb, data, jax.random.PRNGKey(7)))

  plain = task_loss_of(_train(corpus_dir, str(tmp_path / "plain"), task_loss_weight=0.0))
  functional = task_loss_of(_train(corpus_dir, str(tmp_path / "task"), task_loss_weight=20.0))
  wins, losses = int((functional < plain).sum()), int((functional > plain).sum())
  p_value = binomial_tail(wins + losses, wins)
  assert p_value <= FALSE_PASS, (wins, losses, plain.mean(), functional.mean())
  assert functional.mean() < plain.mean(), (plain.mean(), functional.mean())


def test_hypernet_starts_at_the_generalist_and_samples_tasks_of_seen_classes(corpus_dir):
  corpus = corpus_lib.open_corpus(corpus_dir)
  model = hypernet_lib.TextHypernet(out_dim=corpus.layout.total, hidden=8)
  emb = jnp.asarray(np.asarray(corpus.class_emb)[None, :3])
  params = model.init(jax.random.PRNGKey(0), emb, jnp.ones((1, 3), bool))["params"]
  np.testing.assert_array_equal(model.apply({"params": params}, emb, jnp.ones((1, 3), bool)),
                                0.0)
  data = task_loss_lib.seen_task_images(corpus, corpus_dir)
  pool = set(np.asarray(data.pool).tolist())
  assert pool == set(task_loss_lib.seen_classes(corpus))
  classes, mask, emb = task_loss_lib.sample_tasks(jax.random.PRNGKey(1), data, 64, 6)
  assert classes.shape == (64, 6) and set(np.asarray(mask.sum(1)).tolist()) == {2, 3, 4}
  for c, m, e in zip(np.asarray(classes), np.asarray(mask), np.asarray(emb)):
    assert len(set(c[m].tolist())) == m.sum() and set(c.tolist()) <= pool
    np.testing.assert_array_equal(e[m], np.asarray(corpus.class_emb)[c[m]])
    assert not e[~m].any()
  # More class slots than allowed classes (Fashion-MNIST's 8 seen classes, 32 slots).
  few = data._replace(pool=data.pool[:5])
  classes, mask, _ = task_loss_lib.sample_tasks(jax.random.PRNGKey(2), few, 16, 32)
  assert classes.shape == (16, 32) and int(mask.sum(1).max()) <= 4
  assert set(np.asarray(classes).ravel().tolist()) <= set(np.asarray(few.pool).tolist())


@pytest.mark.slow
def test_hypernet_evaluator_runs_and_lowers_its_validation_loss(corpus_dir):
  ctx = context_lib.EvalContext.create(corpus_dir)
  out = registry.get("hypernet")(ctx, jax.random.PRNGKey(0), max_steps=20, eval_every=10,
                                 hidden=16, val_tasks=4, batch_size=4, images=8)
  assert out["steps_run"] in (10, 20) and out["val_loss"] <= out["val_loss_at_start"]
  for split in ("unseen", "heldout"):
    acc = out["splits"][split]["methods"]["hypernet"]["per_task"]
    assert len(acc) == len(ctx.rows(split)) and all(0 <= a <= 1 for a in acc)
