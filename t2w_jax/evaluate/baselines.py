"""Baselines: what a user gets without the generator, measured on the same tasks.

For every task of a split (its corpus row is the per-task ORACLE, never seen by the
generator's training), on the task's test images:

* ``generalist``: the same net trained on all seen classes until its validation accuracy
  stopped improving; every corpus net was fine-tuned from it (the bar to beat);
* ``random``: a fresh ``SubtaskCNN`` initialisation (one seed per task);
* ``mean_weights``: the average of the SEEN corpus nets;
* ``nn_retrieval``: the seen corpus net whose fused text embedding
  (``t2w_jax.text.fuse`` of its class embeddings) has the highest cosine to the query
  task's fused embedding;
* ``ridge``: closed-form ridge regression from the fused text embedding to the flat
  weights, fitted on the seen rows (unregularised intercept); the regulariser is picked by
  exact leave-one-out weight error on the seen rows when several are configured;
* ``oracle``: the specialist, the corpus row of that very task (fine-tuned on it from the
  generalist by the corpus trainer, early-stopped on the task's validation images).

The evaluator ``"baselines"`` returns, per split, each method's per-task accuracies, mean
and std, and the gap closure of every method computed from the split means.
"""
import dataclasses
import logging
from typing import Sequence

import jax
import numpy as np

from t2w_jax import text as text_lib
from t2w_jax.text import prior as text_prior
from t2w_jax.evaluate import registry
from t2w_jax.zoo import cnn as cnn_lib

# Methods in the order the table lists them.
METHODS = ("generalist", "random", "mean_weights", "nn_retrieval", "ridge", "oracle")

# Gap closure (x - base) / (oracle - base) is left out where |oracle - base| is below this.
DEFAULT_MIN_DENOMINATOR = 0.02


# --------------------------------------------------------------------------- text side
def temperature_of(ctx, temperature: float | None = None) -> float:
  """The prior temperature for fusing class embeddings: the given one, else the generator's
  (its config's ``prior_temperature``), else the prior's default
  (``text.prior.DEFAULT_TEMPERATURE``)."""
  if temperature is not None:
    return float(temperature)
  if getattr(ctx, "gen", None) is not None:
    return float(ctx.gen.config["prior_temperature"])
  return float(text_prior.DEFAULT_TEMPERATURE)


def fused_embeddings(ctx, tasks,
                     temperature: float = text_prior.DEFAULT_TEMPERATURE) -> np.ndarray:
  """(n, d) unit fused text embeddings of tasks, from the corpus's class embeddings."""
  emb, mask = ctx.class_text(tasks)
  return np.asarray(_fuse(emb, mask, temperature=float(temperature)), np.float32)


# jitted: op by op, fuse's dozen small ops each compile on first use (seconds on CPU).
_fuse = jax.jit(text_lib.fuse, static_argnames="temperature")


def nn_retrieve(keys: np.ndarray, queries: np.ndarray, count: int | None = None) -> np.ndarray:
  """Index of the key with the highest cosine similarity to each query.

  Args:
    keys: (N, d) embeddings to retrieve from.
    queries: (n, d) query embeddings.
    count: None: the nearest key only; an int: the ``count`` nearest, nearest first.

  Returns:
    (n,) int64 indices into ``keys`` (ties: the lowest index), or (n, count) with
    ``count``.
  """
  keys = np.asarray(keys, np.float64)
  queries = np.asarray(queries, np.float64)
  if keys.ndim != 2 or queries.ndim != 2 or keys.shape[1] != queries.shape[1]:
    raise ValueError(f"need (N, d) keys and (n, d) queries, got {keys.shape}, {queries.shape}")
  if keys.shape[0] == 0:
    raise ValueError("nothing to retrieve from: no keys")
  kn = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
  qn = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
  if count is None:
    return np.argmax(qn @ kn.T, axis=1).astype(np.int64)
  if not 1 <= count <= keys.shape[0]:
    raise ValueError(f"count must be in [1, {keys.shape[0]}] (the keys), got {count}")
  return np.argsort(-(qn @ kn.T), axis=1, kind="stable")[:, :count].astype(np.int64)


def nearest_seen_weights(ctx, tasks, count: int = 1,
                         temperature: float | None = None) -> np.ndarray:
  """(n, count, D) the seen corpus nets whose fused class texts are nearest each task's
  (nearest first): what a user with the corpus but no generator would start from."""
  temperature = temperature_of(ctx, temperature)
  seen_rows = ctx.rows("seen")
  if len(seen_rows) == 0:
    raise ValueError(f"corpus at {ctx.corpus.path} has no seen rows to retrieve from")
  keys = fused_embeddings(ctx, ctx.tasks(seen_rows), temperature)
  idx = nn_retrieve(keys, fused_embeddings(ctx, tasks, temperature), count=int(count))
  return seen_weights(ctx)[idx]


# --------------------------------------------------------------------------- ridge
@dataclasses.dataclass(frozen=True)
class Ridge:
  """A fitted ridge map ``y = x @ coef + intercept``.

  Attributes:
    coef: (d, D) float64.
    intercept: (D,) float64 (not regularised).
    lam: the regulariser it was fitted with.
  """
  coef: np.ndarray
  intercept: np.ndarray
  lam: float

  def predict(self, x: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, D) float64."""
    return np.asarray(x, np.float64) @ self.coef + self.intercept


def _centered_svd(x: np.ndarray):
  x = np.asarray(x, np.float64)
  x_mean = x.mean(0)
  u, s, vt = np.linalg.svd(x - x_mean, full_matrices=False)
  return x_mean, u, s, vt


def _shrink(s: np.ndarray, lam: float) -> np.ndarray:
  """s / (s^2 + lam), with directions of zero variance dropped (the pseudo-inverse at 0)."""
  tol = s.max(initial=0.0) * max(s.shape[0], 1) * np.finfo(np.float64).eps
  keep = s > tol
  return np.where(keep, s / np.where(keep, s * s + lam, 1.0), 0.0)


class _Problem:
  """The centred problem once: thin SVD of Xc (float64, small) and A = U^T Yc.

  The products with the (N, D) targets, D being every weight of a net, run in float32:
  they dominate the cost and float32 is ample for regression targets.
  """

  def __init__(self, x, y):
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or np.ndim(y) != 2 or x.shape[0] != np.shape(y)[0]:
      raise ValueError(f"need (N, d) inputs and (N, D) targets, got {x.shape}, {np.shape(y)}")
    if x.shape[0] < 1:
      raise ValueError("cannot fit ridge regression on zero rows")
    self.x_mean, self.u, self.s, self.vt = _centered_svd(x)
    y = np.asarray(y, np.float32)
    self.y_mean = y.mean(0, dtype=np.float64)
    self.yc = y - self.y_mean.astype(np.float32)
    self.a = self.u.T.astype(np.float32) @ self.yc  # (r, D)

  def fit(self, lam: float) -> "Ridge":
    if not lam >= 0:
      raise ValueError(f"ridge regulariser must be >= 0, got {lam}")
    coef = self.vt.T @ (_shrink(self.s, lam)[:, None] * self.a.astype(np.float64))
    return Ridge(coef, self.y_mean - self.x_mean @ coef, float(lam))

  def loo_mse(self, lams: Sequence[float]) -> dict[float, float]:
    # resid_i = yc_i - (g*u_i)^T A, so |resid_i|^2 = |yc_i|^2 - 2 (g*u_i).B_i
    # + (g*u_i)^T M (g*u_i) with B = A Yc^T (r, N) and M = A A^T (r, r), both computed
    # once: no (N, D) residual per regulariser.
    n = self.u.shape[0]
    yy = np.einsum("nd,nd->n", self.yc, self.yc, dtype=np.float64)
    b = (self.a @ self.yc.T).astype(np.float64)
    m = (self.a @ self.a.T).astype(np.float64)
    out = {}
    for lam in lams:
      g = self.s * _shrink(self.s, float(lam))  # s^2 / (s^2 + lam)
      gu = self.u * g[None]  # (N, r): row i is g*u_i
      h = 1.0 / n + np.einsum("ir,ir->i", gu, self.u)
      denom = 1.0 - h
      if np.any(denom < 1e-9):
        out[float(lam)] = float("inf")  # the fit interpolates a row: no LOO estimate
        continue
      r2 = yy - 2.0 * np.einsum("ir,ri->i", gu, b) + np.einsum("ir,rs,is->i", gu, m, gu)
      out[float(lam)] = float(np.sum(np.maximum(r2, 0.0) / denom ** 2)
                              / (n * self.yc.shape[1]))
    return out


def fit_ridge(x: np.ndarray, y: np.ndarray, lam: float) -> Ridge:
  """Closed-form ridge regression with an unregularised intercept.

  Solves min ||Xc W - Yc||^2 + lam ||W||^2 on centred X, Y (centring is exactly an
  unpenalised bias column) through the thin SVD of Xc, which is the primal solution
  ``(Xc^T Xc + lam I)^-1 Xc^T Yc`` and stays defined at ``lam = 0`` (minimum-norm least
  squares) whether N > d or N < d.

  Args:
    x: (N, d) inputs.
    y: (N, D) targets.
    lam: regulariser, >= 0.

  Returns:
    The fitted ``Ridge``.
  """
  return _Problem(x, y).fit(lam)


def ridge_loo_mse(x: np.ndarray, y: np.ndarray, lams: Sequence[float]) -> dict[float, float]:
  """Exact leave-one-out mean squared error of ridge (with intercept) for each regulariser.

  Uses the hat matrix H = 11^T/N + U diag(s^2/(s^2+lam)) U^T of the centred problem and
  e_loo = e / (1 - H_ii). A regulariser whose fit interpolates a row (H_ii = 1) gets inf.
  """
  return _Problem(x, y).loo_mse(lams)


def select_ridge(x: np.ndarray, y: np.ndarray, lams: Sequence[float]) -> tuple[Ridge, dict]:
  """Fits ridge with the single given regulariser, or the LOO-best of several."""
  lams = [float(l) for l in lams]
  if not lams:
    raise ValueError("ridge_lambdas is empty: give at least one regulariser")
  prob = _Problem(x, y)
  if len(lams) == 1:
    return prob.fit(lams[0]), {}
  loo = prob.loo_mse(lams)
  best = min(lams, key=lambda l: (loo[l], l))
  return prob.fit(best), loo


# --------------------------------------------------------------------------- weight baselines
def random_init(ctx, n: int, seed: int) -> np.ndarray:
  """(n, D) fresh SubtaskCNN initialisations, seeds ``seed .. seed+n-1``."""
  size = int(ctx.corpus.meta["image_size"])
  layout = ctx.corpus.layout

  # One jitted init, called per seed. The key is an "rbg" key: XLA:CPU compiles flax's
  # init with threefry keys several times slower, and the bits of a random init do not
  # matter, only that they are seeded.
  one = jax.jit(lambda key: layout.flatten(cnn_lib.init_params(ctx.model, key, size)))
  return np.stack([np.asarray(one(jax.random.key(seed + i, impl="rbg")), np.float32)
                   for i in range(n)])


def seen_weights(ctx) -> np.ndarray:
  """(N_seen, D) float32 weights of the seen corpus rows (the generator's training set)."""
  return np.asarray(ctx.corpus.weights[ctx.rows("seen")], np.float32)


def stats(acc: np.ndarray) -> dict:
  """Mean, std (population) and per-task values of a (n,) accuracy vector."""
  acc = np.asarray(acc, np.float64)
  return {"mean": float(acc.mean()) if acc.size else float("nan"),
          "std": float(acc.std()) if acc.size else float("nan"),
          "per_task": [float(a) for a in acc]}


def gap_closure_from_means(x: float, base: float, oracle: float,
                           min_den: float = DEFAULT_MIN_DENOMINATOR):
  """(x - base) / (oracle - base) of split means; None if |oracle - base| < min_den."""
  den = oracle - base
  return None if abs(den) < min_den else float((x - base) / den)


def split_tasks(ctx, max_tasks: int | None, split: str):
  """Rows and tasks of a split, the first ``max_tasks`` (all if None)."""
  rows = ctx.rows(split, None if max_tasks is None else int(max_tasks))
  if len(rows) == 0:
    raise ValueError(f"corpus at {ctx.corpus.path} has no {split!r} tasks to evaluate")
  return rows, ctx.tasks(rows)


# --------------------------------------------------------------------------- evaluator
@registry.register("baselines")
def evaluate_baselines(ctx, rng, *, splits: Sequence[str] = ("unseen", "heldout"),
                       max_tasks: int | None = None,
                       ridge_lambdas: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0),
                       random_seed: int = 0, temperature: float | None = None,
                       min_denominator: float = DEFAULT_MIN_DENOMINATOR) -> dict:
  """Accuracy of generalist, random, mean-weights, NN retrieval, ridge and specialist
  ("oracle") nets per split.

  Args:
    ctx: the ``EvalContext``.
    rng: unused (everything here is deterministic given the seeds).
    splits: corpus splits to measure.
    max_tasks: the first ``max_tasks`` tasks of each split; None: all.
    ridge_lambdas: one value: used as is; several: the one with the lowest exact
      leave-one-out weight error on the seen rows.
    random_seed: the random-init baseline's first seed (task i gets random_seed + i).
    temperature: prior temperature for fusing class embeddings; None: the generator's
      (1 without a generator).
    min_denominator: gap closure is None where |specialist - generalist| is below it.

  Returns:
    JSON-ready dict: ridge_lambda, ridge_loo_mse, temperature, min_denominator and per
    split each method's statistics and gap closure.
  """
  del rng
  splits = tuple(splits)
  min_den = float(min_denominator)
  temperature = temperature_of(ctx, temperature)
  seen_rows = ctx.rows("seen")
  if len(seen_rows) == 0:
    raise ValueError(f"corpus at {ctx.corpus.path} has no seen rows to fit baselines on")
  seen_w = seen_weights(ctx)
  seen_x = fused_embeddings(ctx, ctx.tasks(seen_rows), temperature)
  mean_w = seen_w.mean(0)
  ridge, loo = select_ridge(seen_x, seen_w, ridge_lambdas)
  logging.info("baselines: ridge lambda %g (leave-one-out MSE %s)", ridge.lam, loo)

  out = {"ridge_lambda": ridge.lam,
         "ridge_loo_mse": {f"{k:g}": v for k, v in loo.items()},
         "temperature": temperature, "min_denominator": min_den, "splits": {}}
  per_split = {split: split_tasks(ctx, max_tasks, split) for split in splits}
  # One random net per task of every split, seeds random_seed, random_seed + 1, ...
  randoms = random_init(ctx, sum(len(t) for _, t in per_split.values()),
                        int(random_seed))
  offset = 0
  for split, (rows, tasks) in per_split.items():
    n = len(tasks)
    q = fused_embeddings(ctx, tasks, temperature)
    nn_idx = nn_retrieve(seen_x, q)
    nets = {
        "random": randoms[offset:offset + n],
        "mean_weights": np.repeat(mean_w[None], n, 0),
        "nn_retrieval": seen_w[nn_idx],
        "ridge": ridge.predict(q).astype(np.float32),
    }
    # One batched call for the text/weight baselines; generalist and specialist are cached.
    acc = ctx.accuracy(np.concatenate(list(nets.values())), list(tasks) * len(nets))
    acc = {m: acc[j * n:(j + 1) * n] for j, m in enumerate(nets)}
    acc["generalist"] = ctx.reference_accuracy("generalist", rows)
    acc["oracle"] = ctx.reference_accuracy("oracle", rows)
    methods = {m: stats(acc[m]) for m in METHODS}
    b, o = methods["generalist"]["mean"], methods["oracle"]["mean"]
    out["splits"][split] = {
        "n_tasks": n,
        "task_ids": [t.task_id for t in tasks],
        "methods": methods,
        "nn_retrieval_task_ids": [int(ctx.corpus.records[seen_rows[i]]["task_id"])
                                  for i in nn_idx],
        "nn_retrieval_cosine": [float(c) for c in np.sum(q * seen_x[nn_idx], axis=1)],
        "gap_closure_from_means": {m: gap_closure_from_means(methods[m]["mean"], b, o, min_den)
                                   for m in METHODS},
    }
    offset += n
  return out
