"""Early stopping: keep the best-validating checkpoint, stop after ``patience`` checks without a gain.

The one rule of every trained thing in the project (the generalist and the adapter family's
trunk, the corpus trainer's specialists and every fine-tuning built on its loop, among them
``api.few_shot``, and the hypernetwork baseline): a check counts as
better only if its score is strictly better than the best so far (ties keep the earlier
checkpoint), and training stops once ``patience`` checks in a row have not been better.

``update`` is that rule, written once. Two loops drive it:

* ``while_improving``: a ``lax.while_loop`` over check periods, for compiled trainers (the
  corpus trainer runs it under ``vmap``: a finished net is frozen while the rest of its
  chunk goes on);
* ``host_loop``: a Python loop over check periods, for trainers that dispatch one jitted
  call per step or per period and log as they go.

Both count checks from 1 (the start, if scored, is check 0) and report the kept check's
index, which the caller turns into a step.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class Best(NamedTuple):
  """Where early stopping stands.

  Attributes:
    value: the kept checkpoint (a pytree, e.g. parameters).
    score: its validation score.
    check: the index of the check that kept it (0: the start).
    bad: checks since the last improvement.
  """
  value: Any
  score: Any
  check: Any
  bad: Any


def start(value, score, check=0) -> Best:
  """The state before any check: ``value`` kept with ``score``.

  Pass the start's own validation score to make the start count as the first check (it
  is kept when training never helps); pass a score every check beats (e.g. -1 for an
  accuracy) to keep whatever the first check gives.
  """
  return Best(value, score, check, 0)


def update(best: Best, value, score, check, *, minimize: bool = False) -> Best:
  """``best`` after a check of ``value`` that scored ``score``.

  Works on concrete scores (a host loop: plain selection, ``value`` kept by reference) and
  on traced ones (inside ``jit``/``vmap``: ``jnp.where`` per leaf), with the same rule.

  Args:
    best: the state so far.
    value: the checkpoint just measured.
    score: its validation score.
    check: this check's index.
    minimize: lower scores are better (a loss); default: higher (an accuracy).

  Returns:
    The new state: ``value`` kept and ``bad`` reset if strictly better, else ``bad`` + 1.
  """
  better = score < best.score if minimize else score > best.score
  if isinstance(better, jax.core.Tracer):
    def pick(new, old):
      return jnp.where(better, new, old)
    return Best(jax.tree.map(pick, value, best.value), pick(score, best.score),
                pick(check, best.check), jnp.where(better, 0, best.bad + 1))
  if better:
    return Best(value, score, check, 0)
  return best._replace(bad=best.bad + 1)


def stopped(best: Best, patience: int | None):
  """True once ``patience`` checks in a row were not better (never for None)."""
  if patience is None:
    return False
  return best.bad >= patience


def while_improving(period: Callable, carry, best: Best, num_periods: int, patience: int,
                    *, minimize: bool = False):
  """The compiled loop: check periods in a ``lax.while_loop`` until one of them is the last
  or ``patience`` checks in a row were not better.

  Args:
    period: ``period(carry, i) -> (carry, value, score)``: trains period ``i`` (0-based)
      and measures the result.
    carry: the training state ``period`` carries (parameters, optimiser state, ...).
    best: the state before the first check (``start``).
    num_periods: the most periods run.
    patience: checks without improvement before stopping.
    minimize: as in ``update``.

  Returns:
    (carry, best, periods run) after the loop.

  Raises:
    ValueError: patience < 1.
  """
  _check_patience(patience)

  def cond(c):
    _, b, i = c
    return (i < num_periods) & (b.bad < patience)

  def body(c):
    carry, b, i = c
    carry, value, score = period(carry, i)
    return carry, update(b, value, score, i + 1, minimize=minimize), i + 1

  best = best._replace(check=jnp.asarray(best.check, jnp.int32),
                       bad=jnp.asarray(best.bad, jnp.int32))
  return jax.lax.while_loop(cond, body, (carry, best, jnp.int32(0)))


def host_loop(period: Callable, best: Best, num_periods: int, patience: int | None, *,
              minimize: bool = False, after_check: Callable | None = None):
  """The host loop: check periods one Python iteration each, until one of them is the last
  or ``patience`` checks in a row were not better.

  Args:
    period: ``period(i) -> (value, score)``: trains period ``i`` (0-based; the training
      state lives with the caller) and measures the result.
    best: the state before the first check (``start``).
    num_periods: the most periods run.
    patience: checks without improvement before stopping; None: run every period.
    minimize: as in ``update``.
    after_check: ``after_check(best, i, score) -> Best``, called after each check (1-based
      ``i``) with the updated state, before the stopping test: progress logs, or a plateau
      schedule that restarts from ``best.value`` and returns the state with ``bad`` reset.

  Returns:
    (best, periods run).

  Raises:
    ValueError: patience < 1.
  """
  if patience is not None:
    _check_patience(patience)
  i = 0
  while i < num_periods and not stopped(best, patience):
    value, score = period(i)
    i += 1
    best = update(best, value, score, i, minimize=minimize)
    if after_check is not None:
      best = after_check(best, i, score)
  return best, i


def _check_patience(patience) -> None:
  if patience < 1:
    raise ValueError(f"early stopping needs patience >= 1 (checks without improvement), "
                     f"got {patience}")
