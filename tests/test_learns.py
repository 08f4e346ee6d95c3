"""The generator learns the text -> weights map: on a tiny corpus, after a few hundred steps,
the net generated for a seen (training) task's text is nearer, in weight space, to that
task's own specialist than the nets generated, from the same noise, for other tasks' texts;
and the generated nets work about as well as the generalist.

The comparison is paired (same noise, only the text differs) and judged by a binomial
margin over many tasks, so it holds on any CPU (training numerics differ between CPUs),
while a generator that ignores its text (every text gives the same net: no task wins) or
maps texts to nets at random (each task wins with probability at most 1/2) fails it.
"""
import os

import jax
import numpy as np
import pytest

from configs import corpus as corpus_config
from configs import dit as dit_config
from conftest import binomial_tail
from t2w_jax import api
from t2w_jax.evaluate.context import EvalContext
from t2w_jax.train import loop
from t2w_jax.zoo import make_corpus as make_corpus_lib

NUM_SEEN = 24  # tasks to judge on: enough for a binomial margin, few enough for minutes
# The chance, were the text meaningless, of as many tasks preferring their own text.
FALSE_PASS = 0.01
# How far below the generalist the generated nets' mean accuracy may be: they are
# task-specific offsets from it, and a broken net would be near chance (1/K).
ACCURACY_SLACK = 0.05


def test_binomial_tail():
  assert binomial_tail(3, 0) == pytest.approx(1.0)
  assert binomial_tail(3, 3) == pytest.approx(1 / 8)
  assert binomial_tail(4, 3) == pytest.approx(5 / 16)
  assert binomial_tail(5, 6) == 0


def own_text_wins(flat_by_shift: np.ndarray, specialists: np.ndarray) -> np.ndarray:
  """Per task, how many other texts' nets its own text's net beats at its specialist.

  Args:
    flat_by_shift: (n, n, D): [r, i] is the net generated with task i's noise and task
      (i - r) mod n's text; r = 0 is the task's own text.
    specialists: (n, D) each task's specialist.

  Returns:
    (n,) ints in [0, n - 1]: the r > 0 whose net is strictly farther from specialist i
    than the own text's net (a tie is no win).
  """
  dist = np.linalg.norm(flat_by_shift - specialists[None], axis=-1)  # (n shifts, n tasks)
  return (dist[1:] > dist[0][None]).sum(axis=0)


def test_own_text_wins_counts_strict_wins_only():
  spec = np.zeros((3, 2))
  same = np.ones((3, 3, 2))  # every text gives the same net: no task wins
  assert own_text_wins(same, spec).tolist() == [0, 0, 0]
  by_shift = np.ones((3, 3, 2))
  by_shift[0] = 0.5  # own text nearer for every task
  by_shift[1, 2] = 0.1  # one other text nearer for task 2
  assert own_text_wins(by_shift, spec).tolist() == [2, 2, 1]


@pytest.mark.slow
def test_generated_nets_follow_their_text(tmp_path):
  c = corpus_config.get_config("tiny")
  c.num_devices = 2
  c.num_seen = NUM_SEEN
  make_corpus_lib.make_corpus(c, str(tmp_path))
  d = dit_config.get_config("tiny")
  d.mesh.data = 2
  d.num_steps = 300
  d.checkpoint_every = 300
  d.learning_rate = 3e-3
  # What is tested is the text -> weights map the diffusion loss learns. Fresh tasks along
  # the chain (the default) add task-loss examples that pull the predictions toward good
  # nets rather than toward each task's own specialist, so the map is measured without them.
  d.fresh_chain = False
  loop.train(d, str(tmp_path))
  ctx = EvalContext.create(os.path.join(tmp_path, "corpus"), gen=api.load(str(tmp_path)))
  rows = ctx.rows("seen")
  tasks = ctx.tasks(rows)
  emb, mask = ctx.class_text(tasks)
  n = len(rows)
  # Row i always has task i's noise (same key, same batch size); shift r gives it the text
  # of task (i - r) mod n.
  rng = jax.random.PRNGKey(0)
  flat_by_shift = np.stack([
      np.asarray(api.sample_flat(ctx.gen, np.roll(emb, r, axis=0), np.roll(mask, r, axis=0),
                                 rng=rng, steps=1)) for r in range(n)])
  specialists = np.asarray(ctx.corpus.weights[rows])
  # Tasks whose specialist moved away from the generalist (early stopping may keep step 0,
  # and then there is nothing task-specific to find).
  moved = np.array([ctx.corpus.records[r]["steps"] > 0 for r in rows])
  wins = own_text_wins(flat_by_shift, specialists)[moved]
  # A task prefers its own text when its net beats most other texts' nets; with a
  # meaningless text the own text's rank is uniform, so that has probability <= 1/2.
  prefers = int((wins > (n - 1) / 2).sum())
  m = int(moved.sum())
  assert m >= 12, f"only {m} of {n} specialists moved: too few tasks to judge"
  p_value = binomial_tail(m, prefers)
  generated = ctx.accuracy(flat_by_shift[0], tasks)
  base = ctx.accuracy(np.repeat(np.asarray(ctx.corpus.base)[None], n, 0), tasks)
  print(f"{prefers}/{m} tasks prefer their own text (p = {p_value:.2g} were the text "
        f"meaningless; mean win fraction {wins.mean() / (n - 1):.3f}); generated "
        f"{generated.mean():.3f} generalist {base.mean():.3f}")
  assert p_value <= FALSE_PASS, (
      f"only {prefers} of {m} tasks' own text gives the net nearest their specialist")
  assert generated.mean() >= base.mean() - ACCURACY_SLACK
