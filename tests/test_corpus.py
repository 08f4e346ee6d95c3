"""The corpus: splits, en-masse training beats the base, round trip, resume after kill -9."""
import os
import shutil
import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from configs import corpus as corpus_config
from conftest import tiny_corpus_config as tiny_config
from conftest import child_env, wait_for_children
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.weights.layout import ParamLayout
from t2w_jax.zoo import corpus as corpus_lib
from t2w_jax.zoo import make_corpus as make_corpus_lib
from t2w_jax.zoo import masstrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def built(tiny_corpus_run):
  workdir, summary = tiny_corpus_run  # the conftest's: read only
  return workdir, summary, corpus_lib.open_corpus(os.path.join(workdir, "corpus"))


def test_plan_splits():
  plan = tasks_lib.make_plan(100, num_seen=200, num_unseen=30, num_heldout=30, seed=3)
  held = set(plan.heldout_classes)
  assert len(held) == 10
  seen_sets = {frozenset(t.class_ids) for t in plan.split("seen")}
  for t in plan.split("seen") + plan.split("unseen"):
    assert not held & set(t.class_ids)
    assert 8 <= len(t.class_ids) <= 32 and len(set(t.class_ids)) == len(t.class_ids)
  for t in plan.split("unseen"):
    assert frozenset(t.class_ids) not in seen_sets
  for t in plan.split("heldout"):
    assert held & set(t.class_ids)
  again = tasks_lib.make_plan(100, num_seen=200, num_unseen=30, num_heldout=30, seed=3)
  assert again == plan and tasks_lib.TaskPlan.from_json(plan.to_json()) == plan
  with pytest.raises(ValueError, match="unknown split"):
    plan.split("train")


def test_class_lists_pad_to_fixed_slots():
  """One padding for class ids and class embeddings: lists fill the first slots, zeros and a
  False mask after them, and a list longer than the slots widens the batch."""
  emb = [np.full((2, 3), 1.0, np.float32), np.full((1, 3), 2.0, np.float32)]
  padded, mask = tasks_lib.pad_classes(emb, 4)
  assert padded.shape == (2, 4, 3) and padded.dtype == np.float32
  np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(padded[mask], np.concatenate(emb))
  assert not padded[~mask].any()
  wide, wide_mask = tasks_lib.pad_classes(emb + [np.zeros((6, 3), np.float32)], 4)
  assert wide.shape == (3, 6, 3) and wide_mask.sum() == 9
  empty, empty_mask = tasks_lib.pad_classes([], 3)
  assert empty.shape == (0, 3) and empty_mask.shape == (0, 3)
  # Class ids: the padding repeats each task's first class (a valid id to index with).
  ids, mask = tasks_lib.pad_tasks([tasks_lib.Task(0, "seen", (5, 2), 0),
                                   tasks_lib.Task(1, "seen", (7, 1, 3), 0)], 4)
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, [[5, 2, 5, 5], [7, 1, 3, 7]])
  np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [1, 1, 1, 0]])
  assert tasks_lib.pad_tasks([], 4)[0].shape == (0, 4)
  with pytest.raises(ValueError, match="more than max_classes=2"):
    tasks_lib.pad_tasks([tasks_lib.Task(3, "seen", (1, 2, 3), 0)], 2)


def test_specialists_beat_the_generalist_on_their_tasks(built):
  """Early-stopped specialists are better than the generalist they start from, on the test
  images of their own tasks (paired), and each kept step is a check point within its run."""
  _, summary, corpus = built
  assert summary["nets"] == len(corpus) == 16
  gains = np.array([r["trained_acc"] - r["base_acc"] for r in corpus.records])
  assert summary["all"]["gain_points"] > max(1.0, 2 * summary["all"]["gain_se"]), summary
  assert np.sum(gains > 0) >= 2 * np.sum(gains < 0)
  trainer = tiny_config().trainer
  for r in corpus.records:
    assert r["steps"] % trainer.eval_every == 0 and 0 <= r["steps"] <= r["steps_run"]
    assert r["steps_run"] <= trainer.steps
  # The generalist was trained until its validation accuracy stopped improving.
  g = summary["generalist"]
  assert 0 < g["steps"] <= g["steps_run"] <= tiny_config().base.max_steps
  assert g["val_acc"] > 1.5 / 90  # well above chance over the 90 seen classes


def test_round_trip_reproduces_recorded_accuracy(built):
  """A stored row, unflattened, is a working net with exactly the recorded accuracy.

  The base net's recorded accuracy comes from its embeddings computed once per trainer call
  (``accuracy_from_class_embeddings``); it must equal a direct ``task_accuracy``.
  """
  workdir, _, corpus = built
  config = tiny_config()
  dataset = make_corpus_lib.load_data(config)
  model = make_corpus_lib.build_model(config, corpus.class_emb.shape[1])
  spec = masstrain.TrainerSpec(eval_per_class=config.trainer.eval_per_class)
  data = masstrain.put_data(dataset, corpus.class_emb, spec.eval_per_class)
  assert corpus.class_names == dataset.class_names
  for i in (0, 9, 15):
    rec = corpus.records[i]
    ids, mask = tasks_lib.pad_tasks([tasks_lib.Task(0, "x", tuple(rec["class_ids"]), 0)],
                                    config.max_classes)
    params = corpus.layout.unflatten(jnp.asarray(corpus.weights[i]))
    acc = masstrain.task_accuracy(model, data, params, ids[0], mask[0])
    assert abs(float(acc) - rec["trained_acc"]) < 1e-6
    base = corpus.layout.unflatten(jnp.asarray(corpus.base))
    base_acc = masstrain.task_accuracy(model, data, base, ids[0], mask[0])
    assert abs(float(base_acc) - rec["base_acc"]) < 1e-6
    assert rec["classes"] == [corpus.class_names[c] for c in rec["class_ids"]]
  assert set(corpus.indices("unseen")) == {i for i, r in enumerate(corpus.records)
                                            if r["split"] == "unseen"}


def test_refuses_other_layout_and_encoder(built):
  workdir, _, corpus = built
  path = os.path.join(workdir, "corpus")
  other = ParamLayout(corpus.layout.paths, ((7,),) + corpus.layout.shapes[1:])
  with pytest.raises(ValueError, match="another parameter layout"):
    corpus_lib.open_corpus(path, layout=other)
  with pytest.raises(ValueError, match="text encoder"):
    corpus_lib.open_corpus(path, encoder_name="clip:nowhere")
  corpus_lib.open_corpus(path, layout=corpus.layout, encoder_name=corpus.meta["encoder"])
  with pytest.raises(FileNotFoundError, match="no corpus"):
    corpus_lib.open_corpus(os.path.join(workdir, "nothing"))


def test_reopening_with_other_settings_is_refused(built, tmp_path):
  workdir = str(tmp_path / "copy")  # make_corpus takes the workdir's lock: not the shared one
  shutil.copytree(built[0], workdir)
  config = tiny_config()
  config.trainer.steps = 50
  with pytest.raises(ValueError, match="other settings.*trainer"):
    make_corpus_lib.make_corpus(config, workdir)


def test_unknown_dataset(tmp_path):
  config = tiny_config()
  config.dataset = "no_such_data"
  with pytest.raises(ValueError, match="no_such_data"):
    make_corpus_lib.make_corpus(config, str(tmp_path))


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted(built, tmp_path, slowness):
  """kill -9 after the first shard lands; the resumed corpus equals the uninterrupted one."""
  _, _, reference = built
  workdir = str(tmp_path)
  env = child_env()
  cmd = [sys.executable, os.path.join(ROOT, "launch", "make_corpus.py"),
         f"--config={os.path.join(ROOT, 'configs', 'corpus.py')}:tiny",
         f"--workdir={workdir}", "--config.num_devices=2"]
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = os.path.join(workdir, "corpus", "shards", "00000.jsonl")
  problem = wait_for_children([proc], quiet=240, cpu_budget=600 * slowness,
                              wall_cap=2400 * slowness, until=lambda: os.path.exists(first))
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.exists(first), f"the child never wrote its first shard: {problem}"
  assert not os.path.exists(os.path.join(workdir, "corpus", "weights.npy"))
  make_corpus_lib.make_corpus(tiny_config(), workdir)
  resumed = corpus_lib.open_corpus(os.path.join(workdir, "corpus"))
  np.testing.assert_array_equal(resumed.weights, reference.weights)
  assert resumed.records == reference.records
  np.testing.assert_array_equal(resumed.base, reference.base)
  leftovers = [f for f in os.listdir(os.path.join(workdir, "corpus")) if ".tmp" in f]
  assert not leftovers


def test_full_config_is_the_default_with_more_seen_nets_drawn_after_its_own():
  """":full" changes only the number of seen nets, and the plan draws the default's seen
  tasks first: the scaling curve's smaller corpora (``seen_limit``) are prefixes of it."""
  base, full = corpus_config.get_config(""), corpus_config.get_config("full")
  assert full.num_seen == corpus_config.FULL_NUM_SEEN > base.num_seen
  assert dict(full.to_dict(), num_seen=base.num_seen) == base.to_dict()

  def plan(c):
    return make_corpus_lib._plan(c, 100)  # pylint: disable=protected-access

  small, big = plan(base), plan(full)
  assert big.heldout_classes == small.heldout_classes
  assert big.split("seen")[:base.num_seen] == small.split("seen")
