"""Text-guided fusion: the net generated for "A and B" against merging the nets of A and B.

Given two corpus nets trained on tasks A and B (class sets disjoint where the corpus allows),
every candidate is measured on the union of their classes:

* ``generated``: the generator's net for the union's class list (mean over samples, and the
  best of them as ``generated_best``);
* ``average``: plain weight averaging of the two nets;
* ``aligned``: weight matching (Git Re-Basin, Ainsworth et al. 2023), then averaging:
  B's hidden units are permuted to line up with A's, layer by layer, by solving a linear
  assignment on the inner products of the units' weights (their incoming kernel and bias,
  and the next layer's weights that read them), iterated until no permutation changes;
* ``parent_a`` / ``parent_b``: the two nets themselves (each knows only half the classes);
* ``base``: the shared base net, for reference.

The text-space head is what makes this well posed: any net can be asked about any class
list, so all of them run on the union unchanged.
"""
import dataclasses
import itertools
import logging
import os
from typing import Mapping, Sequence

import jax
import numpy as np
from scipy.optimize import linear_sum_assignment

from t2w_jax import api
from t2w_jax import io as io_lib
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.evaluate import plots
from t2w_jax.evaluate import registry
from t2w_jax.weights import ParamLayout
from t2w_jax.weights import cnn_chain
from t2w_jax.weights import permute_params


# ---------------------------------------------------------------------------------------
# Weight matching.
# ---------------------------------------------------------------------------------------


def _unit_features(params: Mapping, perms: Sequence[np.ndarray], i: int,
                   permute_neighbours: bool) -> np.ndarray:
  """(width_i, F) every weight that touches hidden unit j of conv i, one row per unit.

  With ``permute_neighbours`` the neighbouring layers' permutations (input side
  ``perms[i-1]``, output side of the next layer ``perms[i+1]``) are applied first, so that
  rows of B line up with rows of A everywhere except along unit i itself.
  """
  n = len(perms)
  kernel = np.asarray(params[f"conv_{i}"]["kernel"], np.float64)   # (kh, kw, cin, w)
  if permute_neighbours and i > 0:
    kernel = kernel[:, :, perms[i - 1], :]
  w = kernel.shape[3]
  feats = [kernel.reshape(-1, w).T, np.asarray(params[f"conv_{i}"]["bias"], np.float64)[:, None]]
  if i + 1 < n:
    nxt = np.asarray(params[f"conv_{i + 1}"]["kernel"], np.float64)  # (kh, kw, w, cout)
    if permute_neighbours:
      nxt = nxt[..., perms[i + 1]]
    feats.append(np.moveaxis(nxt, 2, 0).reshape(w, -1))
  else:
    feats.append(np.asarray(params["head"]["kernel"], np.float64))  # (w, d): not permuted
  return np.concatenate(feats, axis=1)


def match_weights(params_a: Mapping, params_b: Mapping, *, max_iter: int = 20
                  ) -> list[np.ndarray]:
  """Permutations of B's hidden units that best line B up with A (weight matching).

  Coordinate ascent on sum_l <W_l^A, P_l W_l^B P_{l-1}^T>: each hidden layer's permutation
  is the linear assignment maximising the inner products between A's and B's unit weight
  vectors (incoming kernel, bias and the next layer's outgoing weights), with the other
  layers' permutations held fixed. Layers are swept in order until a sweep changes none.

  Args:
    params_a / params_b: the inner params dicts of two SubtaskCNNs of one layout.
    max_iter: the most sweeps over the layers.

  Returns:
    One int array per conv layer, in ``permute_params``'s convention:
    ``permute_params(params_b, perms)`` is B aligned to A (same function as B).

  Raises:
    ValueError: the two nets do not have the same SubtaskCNN layout.
  """
  widths = cnn_chain(params_a)
  if cnn_chain(params_b) != widths or (ParamLayout.from_params(params_a).fingerprint()
                                       != ParamLayout.from_params(params_b).fingerprint()):
    raise ValueError("weight matching needs two nets of the same layout")
  perms = [np.arange(w) for w in widths]
  for sweep in range(max(int(max_iter), 1)):
    changed = False
    for i in range(len(widths)):
      fa = _unit_features(params_a, perms, i, permute_neighbours=False)
      fb = _unit_features(params_b, perms, i, permute_neighbours=True)
      _, col = linear_sum_assignment(fa @ fb.T, maximize=True)
      if not np.array_equal(col, perms[i]):
        perms[i], changed = col.astype(np.int32), True
    if not changed:
      logging.debug("weight matching converged after %d sweeps", sweep + 1)
      break
  return [np.asarray(p, np.int32) for p in perms]


def aligned_average(params_a: Mapping, params_b: Mapping, *, max_iter: int = 20) -> dict:
  """Average of A and B after permuting B's hidden units onto A's (Git Re-Basin style).

  Works for both subtask families: an adapter (``down`` -> relu -> ``up``) has the same
  symmetry as a one-conv SubtaskCNN whose conv is 1x1 on a 1x1 "image" (its bottleneck
  units), so it is matched in that form and converted back.
  """
  if set(params_a) == {"down", "up"}:
    merged = aligned_average(_adapter_as_chain(params_a), _adapter_as_chain(params_b),
                             max_iter=max_iter)
    return _chain_as_adapter(merged)
  aligned = permute_params(params_b, match_weights(params_a, params_b, max_iter=max_iter))
  return jax.tree.map(lambda a, b: (np.asarray(a) + np.asarray(b)) / 2, dict(params_a), aligned)


def _adapter_as_chain(params: Mapping) -> dict:
  """Adapter params as the params of a one-conv chain (1x1 kernel), same hidden units."""
  down, up = params["down"], params["up"]
  return {"conv_0": {"kernel": np.asarray(down["kernel"])[None, None], "bias": down["bias"]},
          "head": {"kernel": up["kernel"], "bias": up["bias"]}}


def _chain_as_adapter(params: Mapping) -> dict:
  conv, head = params["conv_0"], params["head"]
  return {"down": {"kernel": np.asarray(conv["kernel"])[0, 0], "bias": conv["bias"]},
          "up": {"kernel": head["kernel"], "bias": head["bias"]}}


# ---------------------------------------------------------------------------------------
# Task pairs.
# ---------------------------------------------------------------------------------------


def choose_pairs(records: Sequence[Mapping], rows: Sequence[int], num_pairs: int,
                 max_union: int) -> list[tuple[int, int]]:
  """Pairs of corpus rows for fusion, best first.

  First disjoint class sets with a union of at most ``max_union`` classes, each row used at
  most once; then (if short) overlapping ones; then (if still short) larger unions.

  Args:
    records: the corpus records.
    rows: candidate rows, in order of preference.
    num_pairs: pairs wanted.
    max_union: largest union wanted (the generator's class-list length).

  Returns:
    Up to ``num_pairs`` (row_a, row_b) tuples.
  """
  sets = {r: set(records[r]["class_ids"]) for r in rows}
  pairs, used = [], set()
  for disjoint, limit in ((True, max_union), (False, max_union), (False, None)):
    for a, b in itertools.combinations(rows, 2):
      if len(pairs) >= num_pairs:
        return pairs
      if a in used or b in used or (disjoint and sets[a] & sets[b]):
        continue
      union = sets[a] | sets[b]
      if union == sets[a] or union == sets[b] or (limit is not None and len(union) > limit):
        continue
      pairs.append((a, b))
      used.update((a, b))
  return pairs


def union_task(ta: tasks_lib.Task, tb: tasks_lib.Task, task_id: int) -> tasks_lib.Task:
  """A's classes, then B's classes that A lacks."""
  extra = tuple(c for c in tb.class_ids if c not in ta.class_ids)
  return tasks_lib.Task(task_id, "fusion", tuple(ta.class_ids) + extra, int(ta.seed))


# ---------------------------------------------------------------------------------------
# The evaluator.
# ---------------------------------------------------------------------------------------


def _markdown(results: dict) -> str:
  lines = [f"### Text-guided fusion ({results['num_pairs']} task pairs, accuracy on A ∪ B)",
           "", "| method | accuracy (mean ± std over pairs) |", "|---|---|"]
  for name, m in results["methods"].items():
    lines.append(f"| {name} | {m['mean']:.3f} ± {m['std']:.3f} |")
  return "\n".join(lines) + "\n"


@registry.register("fusion", needs_generator=True)
def fusion(ctx, rng, *, pair_splits: Sequence[str] = ("unseen", "seen"), num_pairs: int = 4,
           num_samples: int = 2, max_union: int | None = None, match_iters: int = 20,
           steps: int | None = None, guidance: float | None = None,
           sampler: str | None = None, out_dir: str | None = None) -> dict:
  """Generated net for "A and B" against averaging, aligned averaging and the parents.

  Args:
    ctx: the ``EvalContext`` (with a generator).
    rng: PRNG key for generation.
    pair_splits: where pairs are drawn from, in order of preference (not ``splits``, which
      run.py fills in from the top level for the evaluators that take it).
    num_pairs: task pairs.
    num_samples: generated nets per pair.
    max_union: most classes in a pair's union; None: the generator's ``max_classes``.
    match_iters: weight-matching iterations of the aligned average.
    steps, guidance, sampler: sampling; None: the generator's defaults.
    out_dir: where fusion.md/.png go; None: no files written.

  Returns:
    JSON-ready dict: num_pairs, num_samples, methods {name: {mean, std}} (generated,
    generated_best, average, aligned, parent_a, parent_b, generalist), pairs (task ids,
    class names of the union, per-method accuracy), png (when written) and markdown.
  """
  gen = ctx.gen
  if gen is None:
    raise ValueError("fusion needs a trained generator in the context")
  if gen.layout.fingerprint() != ctx.corpus.layout.fingerprint():
    raise ValueError("the generator was trained for another net layout than the corpus's")
  splits = list(pair_splits)
  rows = [int(r) for s in splits for r in ctx.rows(s)]
  num_pairs, num_samples = int(num_pairs), int(num_samples)
  if num_pairs < 1 or num_samples < 1:
    raise ValueError(f"num_pairs and num_samples must be >= 1, got {num_pairs}, {num_samples}")
  max_union = int(max_union or gen.config["max_classes"])
  pairs = choose_pairs(ctx.corpus.records, rows, num_pairs, max_union)
  if not pairs:
    raise ValueError(f"no pair of corpus tasks in splits {splits} whose union is a new task")
  records = ctx.corpus.records
  disjoint = sum(not set(records[a]["class_ids"]) & set(records[b]["class_ids"])
                 for a, b in pairs)
  logging.info("fusion: %d pairs (%d disjoint) from %s", len(pairs), disjoint, splits)

  ta = ctx.tasks([a for a, _ in pairs])
  tb = ctx.tasks([b for _, b in pairs])
  unions = [union_task(x, y, -1 - i) for i, (x, y) in enumerate(zip(ta, tb))]
  kmax = max(len(u.class_ids) for u in unions)
  # A context whose class padding fits the unions (shares the corpus and device data).
  uctx = dataclasses.replace(ctx, max_classes=kmax) if kmax > ctx.max_classes else ctx

  layout = ctx.corpus.layout
  max_iter = int(match_iters)
  nets = {"average": [], "aligned": [], "parent_a": [], "parent_b": [], "generalist": []}
  base = np.asarray(ctx.corpus.base, np.float32)
  for a, b in pairs:
    fa, fb = np.asarray(ctx.corpus.weights[a], np.float32), np.asarray(ctx.corpus.weights[b],
                                                                       np.float32)
    pa, pb = layout.unflatten(fa), layout.unflatten(fb)
    nets["average"].append((fa + fb) / 2)
    nets["aligned"].append(np.asarray(layout.flatten(aligned_average(pa, pb,
                                                                     max_iter=max_iter))))
    nets["parent_a"].append(fa)
    nets["parent_b"].append(fb)
    nets["generalist"].append(base)
  p = len(pairs)
  emb, mask = uctx.class_text(unions)
  generated = np.asarray(api.sample_flat(
      gen, np.repeat(emb, num_samples, 0), np.repeat(mask, num_samples, 0), rng=rng,
      steps=steps, guidance=guidance, sampler=sampler))
  names = list(nets)
  flat = np.concatenate([generated] + [np.stack(nets[k]) for k in names])
  tasks = [u for u in unions for _ in range(num_samples)] + unions * len(names)
  acc = uctx.accuracy(flat, tasks)
  per = {"generated": acc[:p * num_samples].reshape(p, num_samples).mean(1),
         "generated_best": acc[:p * num_samples].reshape(p, num_samples).max(1)}
  rest = acc[p * num_samples:].reshape(len(names), p)
  per.update({k: rest[i] for i, k in enumerate(names)})

  class_names = ctx.corpus.class_names
  results = {
      "num_pairs": p, "num_disjoint": int(disjoint), "num_samples": num_samples,
      "pair_splits": splits,
      "methods": {k: {"mean": float(v.mean()), "std": float(v.std())} for k, v in per.items()},
      "pairs": [{"task_a": int(x.task_id), "task_b": int(y.task_id),
                 "union": [class_names[c] for c in u.class_ids],
                 "accuracy": {k: float(v[i]) for k, v in per.items()}}
                for i, (x, y, u) in enumerate(zip(ta, tb, unions))],
  }
  results["markdown"] = _markdown(results)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    results["png"] = plots.plot_fusion(results, os.path.join(out_dir, "fusion.png"))
    io_lib.atomic_write_bytes(os.path.join(out_dir, "fusion.md"), results["markdown"].encode())
  logging.info("fusion:\n%s", results["markdown"])
  return results
