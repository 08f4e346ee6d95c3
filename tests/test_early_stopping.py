"""Early stopping: the rule, its two loops, the validation split, the generalist, and the
specialists' trainer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2w_jax.data import tasks as tasks_lib
from t2w_jax.data.types import ImageDataset
from t2w_jax.zoo import base as base_lib
from t2w_jax.zoo import early_stopping
from t2w_jax.zoo import masstrain
from t2w_jax.zoo.cnn import SubtaskCNN, init_params

NUM_CLASSES, PER_CLASS, SIZE, DIM = 6, 40, 8, 16


def _dataset():
  """Learnable toy data: each class is a colour, plus noise."""
  rng = np.random.default_rng(0)
  colours = rng.integers(0, 256, (NUM_CLASSES, 3))

  def images(n_per):
    labels = np.repeat(np.arange(NUM_CLASSES), n_per)
    x = colours[labels][:, None, None, :] + rng.normal(0, 40, (len(labels), SIZE, SIZE, 3))
    return np.clip(x, 0, 255).astype(np.uint8), labels.astype(np.int64)

  train_x, train_y = images(PER_CLASS)
  test_x, test_y = images(10)
  names = tuple(f"class {i}" for i in range(NUM_CLASSES))
  return ImageDataset("toy", names, train_x, train_y.astype(np.int32), test_x,
                      test_y.astype(np.int32))


@pytest.fixture(scope="module")
def setup():
  ds = _dataset()
  emb = np.random.default_rng(1).normal(size=(NUM_CLASSES, DIM)).astype(np.float32)
  model = SubtaskCNN(widths=(4, 4), strides=(1, 2), embed_dim=DIM, conv_impl="im2col")
  return ds, emb, model


def test_validation_mask_is_per_class_seeded_and_keeps_training_rows():
  labels = np.repeat(np.arange(5), [10, 10, 10, 10, 3])
  m = tasks_lib.validation_mask(labels, 4, seed=0)
  assert [int(m[labels == c].sum()) for c in range(5)] == [4, 4, 4, 4, 1]
  np.testing.assert_array_equal(m, tasks_lib.validation_mask(labels, 4, seed=0))
  assert not np.array_equal(m, tasks_lib.validation_mask(labels, 4, seed=1))
  assert not tasks_lib.validation_mask(labels, 0).any()


def test_put_data_leaves_validation_rows_out_of_training(setup):
  ds, emb, _ = setup
  data = masstrain.put_data(ds, emb, eval_per_class=10, val_per_class=8, val_seed=3)
  is_val = tasks_lib.validation_mask(ds.train_labels, 8, 3)
  for c in range(NUM_CLASSES):
    train = set(np.asarray(data.class_index[c, :int(data.class_count[c])]).tolist())
    val = set(np.asarray(data.val_index[c, :int(data.val_count[c])]).tolist())
    assert len(val) == 8 and len(train) == PER_CLASS - 8
    assert not train & val
    assert val == set(np.flatnonzero(is_val & (ds.train_labels == c)).tolist())
    assert all(ds.train_labels[r] == c for r in train | val)


def test_generalist_stops_early_and_keeps_its_best_net(setup):
  ds, emb, model = setup
  seen = [0, 1, 2, 3]
  params, info = base_lib.train_generalist(
      model, ds.train_images, ds.train_labels, emb, seen, max_steps=2000, batch_size=32,
      learning_rate=1e-2, seed=0, val_per_class=8, eval_every=20, patience=2, lr_drops=1)
  assert info.stopped_early and info.steps_run < 2000
  assert 0 < info.steps <= info.steps_run - 2 * 20
  assert info.val_acc > 0.5  # a learnable problem, far above the 1/4 of chance
  # The returned net is the kept one: its validation accuracy is the recorded best.
  is_val = tasks_lib.validation_mask(ds.train_labels, 8, 0)
  rows = np.flatnonzero(is_val & np.isin(ds.train_labels, seen))
  logits = model.apply({"params": params}, ds.train_images[rows], emb[seen])
  local = np.searchsorted(seen, ds.train_labels[rows])
  assert float(np.mean(np.argmax(logits, -1) == local)) == pytest.approx(info.val_acc)


def test_generalist_refuses_no_validation(setup):
  ds, emb, model = setup
  with pytest.raises(ValueError, match="val_per_class"):
    base_lib.train_generalist(model, ds.train_images, ds.train_labels, emb, [0, 1],
                              max_steps=10, batch_size=8, learning_rate=1e-3, seed=0,
                              val_per_class=0, eval_every=5, patience=1, lr_drops=0)


def _run(setup, spec, tasks):
  ds, emb, model = setup
  data = masstrain.put_data(ds, emb, spec.eval_per_class, val_per_class=8)
  base = init_params(model, jax.random.PRNGKey(0), SIZE)
  ids, mask = tasks_lib.pad_tasks(tasks, 3)
  seeds = np.arange(len(tasks), dtype=np.uint32)
  out = masstrain.make_trainer(model, spec)(data, base, masstrain.TaskBatch(ids, mask, seeds))
  return base, out


@pytest.mark.slow
def test_specialists_stop_when_validation_stops_improving(setup):
  tasks = [tasks_lib.Task(i, "seen", c, i) for i, c in enumerate([(0, 1), (2, 3, 4)])]
  # With a zero learning rate nothing ever improves: each net stops after `patience`
  # checks and keeps the start (step 0), bit for bit.
  frozen = masstrain.TrainerSpec(steps=100, batch_size=8, learning_rate=0.0, nets_per_chunk=2,
                                 eval_per_class=10, eval_every=10, patience=3)
  base, out = _run(setup, frozen, tasks)
  np.testing.assert_array_equal(out.steps, [0, 0])
  np.testing.assert_array_equal(out.steps_run, [30, 30])
  for leaf, b in zip(jax.tree.leaves(out.params), jax.tree.leaves(base)):
    np.testing.assert_array_equal(leaf, np.broadcast_to(b, leaf.shape))
  np.testing.assert_allclose(out.trained_acc, out.base_acc)
  # Learning: the kept step is a check point within what ran, and the kept nets beat the
  # random start they were trained from.
  learning = masstrain.TrainerSpec(steps=200, batch_size=16, learning_rate=1e-2,
                                   nets_per_chunk=2, eval_per_class=10, eval_every=10,
                                   patience=3)
  _, out = _run(setup, learning, tasks)
  steps, run = np.asarray(out.steps), np.asarray(out.steps_run)
  assert np.all(steps % 10 == 0) and np.all(steps > 0) and np.all(steps <= run)
  assert np.all(run <= 200) and np.all((run == 200) | (run - steps == 30))
  assert np.all(np.asarray(out.trained_acc) > np.asarray(out.base_acc) + 0.2)


def test_trainer_spec_validates_early_stopping():
  with pytest.raises(ValueError, match="multiple of eval_every"):
    masstrain.TrainerSpec(steps=25, eval_every=10)
  with pytest.raises(ValueError, match="patience"):
    masstrain.TrainerSpec(steps=20, eval_every=10, patience=0)
  masstrain.TrainerSpec(steps=25, eval_every=0)  # no checks: any step count


# ------------------------------------------------------------------ the rule and its loops
def _replay_compiled(curves, patience):
  """The compiled loop (``while_improving``, under vmap as the corpus trainer runs it) on
  recorded curves: (kept check, checks run) per curve."""
  def one(curve):
    def period(carry, i):
      return carry, i + 1, curve[i + 1]
    _, best, ran = early_stopping.while_improving(
        period, jnp.int32(0), early_stopping.start(jnp.int32(0), curve[0]),
        curve.shape[0] - 1, patience)
    return best.check, ran
  kept, ran = jax.jit(jax.vmap(one))(jnp.asarray(curves))
  return np.asarray(kept), np.asarray(ran)


def _replay_host(curves, patience):
  """The host loop on the same curves: (kept check, checks run) per curve."""
  out = [early_stopping.host_loop(lambda j, c=c: (j + 1, c[j + 1]),
                                  early_stopping.start(0, c[0]), len(c) - 1, patience)
         for c in curves]
  return np.array([b.check for b, _ in out]), np.array([r for _, r in out])


def test_host_and_compiled_loops_apply_one_rule():
  """Both loops keep the same check and run the same number of checks, on curves full of
  ties (a tie is no gain) and plateaus; and both agree with the rule written out here."""
  curves = np.random.default_rng(0).integers(0, 5, (200, 12)).astype(np.float32) / 4
  for patience in (1, 2, 3, 20):
    host = _replay_host(curves, patience)
    np.testing.assert_array_equal(_replay_compiled(curves, patience), host)
    for curve, kept, ran in zip(curves, *host):
      best, expect_kept, bad, j = curve[0], 0, 0, 0
      while j < len(curve) - 1 and bad < patience:
        j += 1
        if curve[j] > best:
          best, expect_kept, bad = curve[j], j, 0
        else:
          bad += 1
      assert (kept, ran) == (expect_kept, j)


def test_rule_keeps_the_earlier_net_on_ties_and_minimizes_losses():
  best = early_stopping.start("start", 0.5)
  best = early_stopping.update(best, "tie", 0.5, 1)
  assert (best.value, best.check, best.bad) == ("start", 0, 1)
  best = early_stopping.update(best, "gain", 0.6, 2)
  assert (best.value, best.score, best.check, best.bad) == ("gain", 0.6, 2, 0)
  loss = early_stopping.update(early_stopping.start("start", 1.0), "lower", 0.9, 1,
                               minimize=True)
  assert (loss.value, loss.bad) == ("lower", 0)
  loss = early_stopping.update(loss, "higher", 2.0, 2, minimize=True)
  assert (loss.value, loss.bad) == ("lower", 1)
  assert not early_stopping.stopped(loss, None) and early_stopping.stopped(loss, 1)


def test_host_loop_without_patience_runs_every_period_and_hooks_see_each_check():
  seen = []

  def after(best, i, score):
    seen.append((i, score, best.check))
    return best

  best, ran = early_stopping.host_loop(lambda j: (j, [0.1, 0.3, 0.2, 0.0][j]),
                                       early_stopping.start(None, 0.2), 4, None,
                                       after_check=after)
  assert ran == 4 and best.check == 2 and best.value == 1
  assert seen == [(1, 0.1, 0), (2, 0.3, 2), (3, 0.2, 2), (4, 0.0, 2)]


def test_loops_refuse_patience_below_one():
  with pytest.raises(ValueError, match="patience >= 1"):
    early_stopping.host_loop(lambda j: (j, 0.0), early_stopping.start(0, 0.0), 3, 0)
  with pytest.raises(ValueError, match="patience >= 1"):
    early_stopping.while_improving(lambda c, i: (c, i, 0.0), 0,
                                   early_stopping.start(0, 0.0), 3, 0)
