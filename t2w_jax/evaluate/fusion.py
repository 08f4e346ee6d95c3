"""Text-guided fusion: the net generated for "A and B" against merging or retraining nets.

For pairs of corpus tasks A and B (class sets disjoint where the corpus allows), every
candidate is measured on the test images of the union of their classes (A's, then B's):

* ``generated``: the generator's net for the union's class list (mean over samples, and the
  best of them as ``generated_best``);
* ``specialist``: a net trained on the union from the generalist with the corpus trainer's
  recipe and early stopping: what a user holding the union's data would do;
* ``ensemble``: the two corpus nets' output ensemble (their softmax probabilities over the
  union, averaged): two nets, so twice the parameters of every other candidate;
* ``average``: plain weight averaging of the two corpus nets;
* ``aligned``: weight matching (Git Re-Basin, Ainsworth et al. 2023), then averaging:
  B's hidden units are permuted to line up with A's, layer by layer, by solving a linear
  assignment on the inner products of the units' weights (their incoming kernel and bias,
  and the next layer's weights that read them), iterated until no permutation changes.
  Both corpus nets start from the generalist, so their matching is near the identity;
* ``indep_average`` / ``indep_aligned``: the same two merges of parents trained on A and on
  B from two independent random inits (the corpus recipe with a longer step cap, early-
  stopped), where the matching has real permutations to find (``units_moved``);
* ``parent_a`` / ``parent_b``, ``indep_parent_a`` / ``indep_parent_b``: the parents
  themselves (each knows only its own classes);
* ``generalist``: the corpus's shared base net.

The text-space head is what makes this well posed: any net can be asked about any class
list, so all of them run on the union unchanged.
"""
import dataclasses
import itertools
import logging
import os
import time
from typing import Mapping, Sequence

import jax
import ml_collections
import numpy as np
from scipy.optimize import linear_sum_assignment

from t2w_jax import api
from t2w_jax import io as io_lib
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.evaluate import finetune
from t2w_jax.evaluate import plots
from t2w_jax.evaluate import registry
from t2w_jax.evaluate import report
from t2w_jax.weights import ParamLayout
from t2w_jax.weights import cnn_chain
from t2w_jax.weights import permute_params
from t2w_jax.zoo import make_corpus as make_corpus_lib
from t2w_jax.zoo import masstrain


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


def align(params_a: Mapping, params_b: Mapping, *, max_iter: int = 20
          ) -> tuple[dict, list[np.ndarray]]:
  """B with its hidden units permuted onto A's (weight matching), and the permutations.

  Works for both subtask families: an adapter (``down`` -> relu -> ``up``) has the same
  symmetry as a one-conv SubtaskCNN whose conv is 1x1 on a 1x1 "image" (its bottleneck
  units), so it is matched in that form and converted back.

  Returns:
    (aligned B, the same function as B; one permutation per hidden layer, as
    ``match_weights`` returns).
  """
  if set(params_a) == {"down", "up"}:
    aligned, perms = align(_adapter_as_chain(params_a), _adapter_as_chain(params_b),
                           max_iter=max_iter)
    return _chain_as_adapter(aligned), perms
  perms = match_weights(params_a, params_b, max_iter=max_iter)
  return permute_params(params_b, perms), perms


def aligned_average(params_a: Mapping, params_b: Mapping, *, max_iter: int = 20) -> dict:
  """Average of A and B after permuting B's hidden units onto A's (Git Re-Basin style)."""
  aligned, _ = align(params_a, params_b, max_iter=max_iter)
  return _mean(params_a, aligned)


def _mean(params_a: Mapping, params_b: Mapping) -> dict:
  """The plain weight average of two nets of one layout."""
  return jax.tree.map(lambda a, b: (np.asarray(a) + np.asarray(b)) / 2, dict(params_a),
                      dict(params_b))


def units_moved(perms: Sequence[np.ndarray]) -> float:
  """Fraction of hidden units a matching moves: 0 for the identity (nets already aligned)."""
  total = sum(len(p) for p in perms)
  moved = sum(int(np.sum(np.asarray(p) != np.arange(len(p)))) for p in perms)
  return moved / max(total, 1)


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

  First disjoint class sets, then (if short) overlapping ones whose union is a new task;
  never a union of more than ``max_union`` classes; each row used at most once.

  Args:
    records: the corpus records.
    rows: candidate rows, in order of preference.
    num_pairs: pairs wanted.
    max_union: largest union allowed (the generator's ``max_classes``: it makes no net for
      a longer class list).

  Returns:
    Up to ``num_pairs`` (row_a, row_b) tuples.
  """
  sets = {r: set(records[r]["class_ids"]) for r in rows}
  pairs, used = [], set()
  for disjoint in (True, False):
    for a, b in itertools.combinations(rows, 2):
      if len(pairs) >= num_pairs:
        return pairs
      if a in used or b in used or (disjoint and sets[a] & sets[b]):
        continue
      union = sets[a] | sets[b]
      if union == sets[a] or union == sets[b] or len(union) > max_union:
        continue
      pairs.append((a, b))
      used.update((a, b))
  return pairs


def union_task(ta: tasks_lib.Task, tb: tasks_lib.Task, task_id: int) -> tasks_lib.Task:
  """A's classes, then B's classes that A lacks (``tasks.ordered_union``); A's seed."""
  return tasks_lib.Task(task_id, "fusion",
                        tuple(tasks_lib.ordered_union(ta.class_ids, tb.class_ids)),
                        int(ta.seed))


# ---------------------------------------------------------------------------------------
# The evaluator.
# ---------------------------------------------------------------------------------------

# Methods in table order, with what each is. "size": nets' worth of parameters it runs.
METHODS = {
    "generated": ("the generator's net for the union's class list (mean of K samples)", 1),
    "generated_best": ("the best of those K samples", 1),
    "specialist": ("a net trained on A ∪ B from the generalist with the corpus recipe, "
                   "early-stopped (needs the union's data)", 1),
    "ensemble": ("output ensemble of the two corpus parents (mean softmax over the union; "
                 "two nets: twice the parameters)", 2),
    "aligned": ("weight-matched average of the two corpus parents (both start from the "
                "generalist, so the matching is near the identity)", 1),
    "average": ("plain weight average of the two corpus parents", 1),
    "parent_a": ("corpus net of A (knows half the classes)", 1),
    "parent_b": ("corpus net of B", 1),
    "indep_aligned": ("weight-matched average (Git Re-Basin) of two parents trained on A "
                      "and B from independent random inits", 1),
    "indep_average": ("plain weight average of those independent parents", 1),
    "indep_parent_a": ("independent parent of A", 1),
    "indep_parent_b": ("independent parent of B", 1),
    "generalist": ("the corpus's generalist (all seen classes)", 1),
}


# The methods of the by-split table (the strongest baselines).
BY_SPLIT = ("specialist", "ensemble", "generalist", "aligned", "indep_aligned")


def train_mesh(n: int, nets_per_chunk: int, devices=None):
  """The ``nets`` mesh that ``_train`` spreads ``n`` nets over: every local device (or of
  ``devices``), as the corpus run, where the nets fill a chunk on each; fewer nets take the
  first devices, one chunk each. Each device runs the same one-chunk program either way and
  net i keeps its device and slot, so no net trains differently; only the padding copies
  that would have filled the idle devices are left out."""
  devices = jax.local_devices() if devices is None else list(devices)
  chunks = -(-int(n) // int(nets_per_chunk))
  return masstrain.nets_mesh(devices[:max(1, min(len(devices), chunks))])


def _train(ctx, spec: masstrain.TrainerSpec, starts: np.ndarray,
           tasks: Sequence[tasks_lib.Task], kmax: int) -> tuple[np.ndarray, dict]:
  """Nets trained on ``tasks`` by the corpus trainer (``masstrain``: one call, early stopping
  on the validation rows), spread over the local devices like the corpus run
  (``train_mesh``).

  Args:
    ctx: the ``EvalContext`` (its model and device data).
    spec: the recipe.
    starts: (D,) one start for every net (the generalist), or (n, D) one per task.
    tasks: the n tasks, each net trained with its task's seed.
    kmax: class slots of the padded tasks.

  Returns:
    ((n, D) trained nets, {"test_acc", "steps", "steps_run"}: (n,) arrays).
  """
  layout = ctx.corpus.layout
  tasks = list(tasks)
  n = len(tasks)
  mesh = train_mesh(n, spec.nets_per_chunk)
  tasks += tasks[-1:] * (-n % (spec.nets_per_chunk * mesh.size))  # one fixed shape
  ids, mask = tasks_lib.pad_tasks(tasks, kmax)
  seeds = np.array([t.seed for t in tasks], np.uint32)
  starts = np.asarray(starts, np.float32)
  own = starts.ndim == 2
  if own:
    starts = np.concatenate([starts, np.repeat(starts[-1:], len(tasks) - n, 0)])
    params = jax.jit(jax.vmap(layout.unflatten))(starts)
  else:
    params = layout.unflatten(starts)
  train = masstrain.make_trainer(ctx.model, spec, mesh, own_starts=own)
  out = train(ctx.data, params, masstrain.TaskBatch(ids, mask, seeds))
  flat = np.asarray(jax.jit(jax.vmap(layout.flatten))(out.params))[:n]
  bad = [tasks[i].task_id for i in np.flatnonzero(~np.isfinite(flat).all(1))]
  if bad:  # a diverged net would count as a (chance-level) baseline: refuse instead
    raise FloatingPointError(f"training gave non-finite weights on tasks {bad}")
  info = {"test_acc": np.asarray(out.trained_acc)[:n], "steps": np.asarray(out.steps)[:n],
          "steps_run": np.asarray(out.steps_run)[:n]}
  return flat, info


def _stats(x) -> dict:
  x = np.asarray(x, np.float64)
  return {"mean": float(x.mean()), "std": float(x.std())}


def _by_split(per: Mapping[str, np.ndarray], keys: Sequence[str]) -> dict:
  """Per split pair of (A, B): pairs, generated's mean, and generated − method, paired."""
  out = {}
  for key in dict.fromkeys(keys):
    sel = [i for i, k in enumerate(keys) if k == key]
    g = per["generated"][sel].tolist()
    out[key] = {"n": len(sel), "generated": float(np.mean(g)),
                "paired": {m: report.paired_difference(g, per[m][sel].tolist())
                           for m in BY_SPLIT}}
  return out


def _markdown(results: dict) -> str:
  ind = results["independent_parents"]
  lines = [
      f"### Text-guided fusion ({results['num_pairs']} task pairs, "
      f"{results['num_disjoint']} with disjoint classes; accuracy on A ∪ B)", "",
      "Pairs of corpus tasks (splits of A+B: pairs): "
      + ", ".join(f"{k}: {v}" for k, v in results["pair_split_counts"].items())
      + f". K = {results['num_samples']} generated samples per pair. Every method is "
      "measured on the test images of all the union's classes. "
      "Accuracy: mean ± std over pairs (%); generated − method: paired by pair, mean ± "
      "standard error in points (pairs where generated is higher / pairs).",
      "", "| method | accuracy (%) | generated − method | what it is |", "|---|---|---|---|"]
  for name, m in results["methods"].items():
    paired = report.paired_cell(results["paired"].get(name)) if name in results["paired"] \
        else ""
    size = f" ({m['size']}× the parameters)" if m["size"] > 1 else ""
    lines.append(f"| {name}{size} | {100 * m['mean']:.1f} ± {100 * m['std']:.1f} | {paired} "
                 f"| {METHODS[name][0]} |")
  lines += [
      "", f"Independent parents ({2 * results['num_pairs']} nets from random inits, the "
      f"corpus recipe with a cap of {ind['step_cap']} steps, early-stopped on validation): "
      f"accuracy on their own task {100 * ind['own_acc']['mean']:.1f} ± "
      f"{100 * ind['own_acc']['std']:.1f} % (the corpus parents: "
      f"{100 * ind['corpus_own_acc']['mean']:.1f} ± {100 * ind['corpus_own_acc']['std']:.1f} "
      f"%); kept step {ind['steps']['mean']:.0f} on average; {ind['ran_to_cap']} of "
      f"{2 * results['num_pairs']} ran to the cap.",
      f"Weight matching moved {100 * ind['units_moved']['mean']:.0f} % of the hidden units "
      f"of the independent parents (min {100 * ind['units_moved']['min']:.0f} %, max "
      f"{100 * ind['units_moved']['max']:.0f} %) and "
      f"{100 * results['corpus_units_moved']['mean']:.0f} % of the corpus parents'. The "
      f"specialists on A ∪ B kept step {results['specialist_steps']['mean']:.0f} on "
      "average."]
  by = results["by_split"]
  if len(by) > 1:
    cols = [m for m in BY_SPLIT if m in results["paired"]]
    lines += ["", "Generated − method by the pairs' splits (points, as above):", "",
              "| splits of A+B | pairs | generated (%) | " + " | ".join(cols) + " |",
              "|---" * (3 + len(cols)) + "|"]
    for key, b in by.items():
      lines.append(f"| {key} | {b['n']} | {100 * b['generated']:.1f} | "
                   + " | ".join(report.paired_cell(b["paired"][m]) for m in cols) + " |")
  return "\n".join(lines) + "\n"


@registry.register("fusion", needs_generator=True)
def fusion(ctx, rng, *, pair_splits: Sequence[str] = ("unseen", "heldout", "seen"),
           num_pairs: int = 4, num_samples: int = 2, max_union: int | None = None,
           match_iters: int = 20, indep_cap_factor: int = 4, steps: int | None = None,
           guidance: float | None = None, sampler: str | None = None,
           out_dir: str | None = None) -> dict:
  """Generated net for "A and B" against the generalist, the specialist on A ∪ B, the
  parents' output ensemble, and plain and weight-matched averages of two kinds of parents.

  Args:
    ctx: the ``EvalContext`` (with a generator).
    rng: PRNG key (generation and the independent parents' inits).
    pair_splits: where pairs are drawn from, in order of preference (not ``splits``, which
      run.py fills in from the top level for the evaluators that take it).
    num_pairs: task pairs.
    num_samples: generated nets per pair.
    max_union: most classes in a pair's union, at most the generator's ``max_classes``;
      None: that.
    match_iters: weight-matching sweeps of the aligned averages.
    indep_cap_factor: the independent parents' step cap, in multiples of the corpus
      trainer's (a random start needs more steps than the generalist's; early stopping
      on the validation rows ends each one, and ``ran_to_cap`` says if the cap did).
    steps, guidance, sampler: sampling; None: the generator's defaults.
    out_dir: where fusion.md/.png go; None: no files written.

  Returns:
    JSON-ready dict: num_pairs, num_disjoint, num_samples, pair_splits, pair_split_counts,
    methods {name: {mean, std, size}} (``METHODS``), paired {method: generated − method as
    ``report.paired_difference``}, independent_parents (own-task accuracy, steps,
    ran_to_cap, step_cap, units_moved), corpus_units_moved, specialist_steps, by_split
    {"splitA+splitB": {n, generated, paired}}, pairs (task ids, splits, class names of the
    union, per-method accuracy, the independent parents' own-task accuracy, units moved),
    seconds, png (when written) and markdown.
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
  if int(indep_cap_factor) < 1:
    raise ValueError(f"indep_cap_factor must be >= 1, got {indep_cap_factor}")
  gen_max = int(gen.config["max_classes"])
  max_union = int(max_union or gen_max)
  if max_union > gen_max:
    raise ValueError(f"max_union={max_union} is more than the generator's max_classes "
                     f"({gen_max}): it makes no net for a longer class list")
  pairs = choose_pairs(ctx.corpus.records, rows, num_pairs, max_union)
  if not pairs:
    raise ValueError(f"no pair of corpus tasks in splits {splits} whose union is a new task "
                     f"of at most {max_union} classes")
  records = ctx.corpus.records
  disjoint = sum(not set(records[a]["class_ids"]) & set(records[b]["class_ids"])
                 for a, b in pairs)
  p = len(pairs)
  split_keys = [f"{records[a]['split']}+{records[b]['split']}" for a, b in pairs]
  split_counts = {k: split_keys.count(k) for k in dict.fromkeys(split_keys)}
  logging.info("fusion: %d pairs (%d disjoint) from %s", p, disjoint, split_counts)

  ta = ctx.tasks([a for a, _ in pairs])
  tb = ctx.tasks([b for _, b in pairs])
  unions = [union_task(x, y, -1 - i) for i, (x, y) in enumerate(zip(ta, tb))]
  kmax = max(len(u.class_ids) for u in unions)
  # A context whose class padding fits the unions (shares the corpus and device data).
  uctx = dataclasses.replace(ctx, max_classes=kmax) if kmax > ctx.max_classes else ctx
  layout = ctx.corpus.layout
  max_iter = int(match_iters)
  gen_rng, init_rng = jax.random.split(rng)
  seconds = {}

  # Nets trained here, each kind in one trainer call: the independent parents (A's then
  # B's, from independent random inits) and the union's specialists (from the generalist).
  t0 = time.time()
  spec = make_corpus_lib.trainer_spec(
      ml_collections.ConfigDict({"trainer": ctx.corpus.meta["trainer"]}))
  indep_spec = dataclasses.replace(spec, steps=spec.steps * int(indep_cap_factor))
  inits = finetune.random_inits(ctx.model, layout, int(ctx.corpus.meta["image_size"]),
                                init_rng, 2 * p)
  indep, indep_info = _train(ctx, indep_spec, inits, ta + tb, uctx.max_classes)
  seconds["independent_parents"] = time.time() - t0
  t0 = time.time()
  base = np.asarray(ctx.corpus.base, np.float32)
  specialist, spec_info = _train(ctx, spec, base, unions, uctx.max_classes)
  seconds["specialists"] = time.time() - t0

  fa = np.asarray(ctx.corpus.weights[[a for a, _ in pairs]], np.float32)
  fb = np.asarray(ctx.corpus.weights[[b for _, b in pairs]], np.float32)
  ia, ib = indep[:p], indep[p:]
  nets = {"specialist": specialist, "average": (fa + fb) / 2, "parent_a": fa,
          "parent_b": fb, "indep_average": (ia + ib) / 2, "indep_parent_a": ia,
          "indep_parent_b": ib, "generalist": np.repeat(base[None], p, 0)}
  moved = {"corpus": [], "indep": []}
  for kind, (xa, xb) in (("corpus", (fa, fb)), ("indep", (ia, ib))):
    merged = []
    for a, b in zip(xa, xb):
      pa = layout.unflatten(a)
      aligned_b, perms = align(pa, layout.unflatten(b), max_iter=max_iter)
      merged.append(np.asarray(layout.flatten(_mean(pa, aligned_b))))
      moved[kind].append(units_moved(perms))
    nets["aligned" if kind == "corpus" else "indep_aligned"] = np.stack(merged)

  t0 = time.time()
  emb, mask = uctx.class_text(unions)
  generated = np.asarray(api.sample_flat(
      gen, np.repeat(emb, num_samples, 0), np.repeat(mask, num_samples, 0), rng=gen_rng,
      steps=steps, guidance=guidance, sampler=sampler))
  names = list(nets)
  flat = np.concatenate([generated] + [nets[k] for k in names])
  tasks = [u for u in unions for _ in range(num_samples)] + unions * len(names)
  acc = uctx.accuracy(flat, tasks)
  per = {"generated": acc[:p * num_samples].reshape(p, num_samples).mean(1),
         "generated_best": acc[:p * num_samples].reshape(p, num_samples).max(1)}
  rest = acc[p * num_samples:].reshape(len(names), p)
  per.update({k: rest[i] for i, k in enumerate(names)})
  per["ensemble"] = uctx.accuracy(np.stack([fa, fb], 1), unions)
  per = {k: per[k] for k in METHODS}
  seconds["measure"] = time.time() - t0

  own = indep_info["test_acc"]
  corpus_own = np.array([records[r]["trained_acc"] for pair in pairs for r in pair])
  class_names = ctx.corpus.class_names
  results = {
      "num_pairs": p, "num_disjoint": int(disjoint), "num_samples": num_samples,
      "pair_splits": splits, "pair_split_counts": split_counts,
      "methods": {k: dict(_stats(v), size=METHODS[k][1]) for k, v in per.items()},
      "paired": {k: report.paired_difference(per["generated"].tolist(), v.tolist())
                 for k, v in per.items() if k not in ("generated", "generated_best")},
      "independent_parents": {
          "own_acc": _stats(own),
          "corpus_own_acc": _stats(corpus_own),
          "steps": _stats(indep_info["steps"]),
          "step_cap": indep_spec.steps,
          "ran_to_cap": int(np.sum(indep_info["steps_run"] >= indep_spec.steps)),
          "units_moved": dict(_stats(moved["indep"]), min=float(np.min(moved["indep"])),
                              max=float(np.max(moved["indep"])))},
      "corpus_units_moved": _stats(moved["corpus"]),
      "specialist_steps": _stats(spec_info["steps"]),
      "by_split": _by_split(per, split_keys),
      "pairs": [{"task_a": int(x.task_id), "task_b": int(y.task_id),
                 "split_a": x.split, "split_b": y.split,
                 "union": [class_names[c] for c in u.class_ids],
                 "accuracy": {k: float(v[i]) for k, v in per.items()},
                 "indep_own_acc": [float(own[i]), float(own[p + i])],
                 "units_moved": {k: float(v[i]) for k, v in moved.items()}}
                for i, (x, y, u) in enumerate(zip(ta, tb, unions))],
      "seconds": {k: round(v, 2) for k, v in seconds.items()},
  }
  results["markdown"] = _markdown(results)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    results["png"] = plots.plot_fusion(results, os.path.join(out_dir, "fusion.png"))
    io_lib.atomic_write_bytes(os.path.join(out_dir, "fusion.md"), results["markdown"].encode())
  logging.info("fusion:\n%s", results["markdown"])
  return results
