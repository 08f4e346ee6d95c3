"""Generated nets: accuracy, best-of-K, gap closure, novelty, sampler ablation, free text.

Evaluators registered here (all need a trained generator in ``ctx.gen``):

* ``"generated"``: K nets per task of each split (one batched ``api.sample_flat`` call per
  split), their mean ± std and best-of-K accuracy, the gap closure
  (generated − base) / (oracle − base), and novelty (distance of each generated net to its
  nearest SEEN corpus net, relative to the corpus's own nearest-neighbour distances, and
  how often the two nets predict the same label on the task's test images).
* ``"sampler_ablation"``: the same measurement on a few tasks for DDIM at several step
  counts, DDPM over the full chain, and several classifier-free guidance scales.
* ``"freeform"``: the same tasks described the way a user would type them (see
  ``describe``, parsed by ``text.parse_description``) instead of as a clean class list.

All sampling uses keys derived from the evaluator's rng, so reruns give identical numbers;
variants of one evaluator share their keys (paired comparisons).
"""
import logging
import time
from typing import Sequence
import zlib

import jax
import numpy as np

from t2w_jax import api
from t2w_jax import generator as generator_lib
from t2w_jax import text as text_lib
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.evaluate import baselines
from t2w_jax.evaluate import registry


# --------------------------------------------------------------------------- sampling
def sample_nets(ctx, emb: np.ndarray, mask: np.ndarray, rng, *, num_samples: int,
                sampler: str, steps: int, guidance: float,
                temperature: float | None = None) -> np.ndarray:
  """Generates ``num_samples`` nets per task in ONE batched sampler call.

  Args:
    ctx: EvalContext with a generator.
    emb: (n, K, d) class embeddings; mask: (n, K) real classes.
    rng: PRNG key.
    num_samples: nets per task.
    sampler, steps, guidance: the reverse process.
    temperature: scale of the starting noise (None: the generator config's).

  Returns:
    (n, num_samples, D) float32 flat weights.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  kmax = int(ctx.gen.config["max_classes"])
  if int(mask.sum(1).max()) > kmax:
    raise ValueError(f"a task has {int(mask.sum(1).max())} classes; the generator takes at "
                     f"most max_classes={kmax}")
  # Each task's slots, mask included, widened to the generator's class slots.
  emb, _ = tasks_lib.pad_classes(np.asarray(emb, np.float32), kmax)
  mask, _ = tasks_lib.pad_classes(np.asarray(mask, bool), kmax)
  n = emb.shape[0]
  flat = api.sample_flat(ctx.gen, np.repeat(emb, num_samples, 0),
                         np.repeat(mask, num_samples, 0), rng=rng, steps=steps,
                         guidance=guidance, sampler=sampler, temperature=temperature)
  return np.asarray(flat, np.float32).reshape(n, num_samples, -1)


def accuracy_samples(ctx, nets: np.ndarray, tasks) -> np.ndarray:
  """(n, S, D) nets, S per task -> (n, S) test accuracies."""
  n, s, d = nets.shape
  rep = [t for t in tasks for _ in range(s)]
  return ctx.accuracy(nets.reshape(n * s, d), rep).reshape(n, s)


def sample_stats(acc: np.ndarray) -> dict:
  """Summary of (n, S) accuracies of S samples on n tasks.

  ``mean``/``std``: over tasks of the per-task mean; ``sample_std``: the within-task std
  over samples, averaged over tasks; ``best_of_k``: over tasks of the per-task maximum.
  """
  acc = np.asarray(acc, np.float64)
  per_task = acc.mean(1)
  best = acc.max(1)
  return {"mean": float(per_task.mean()), "std": float(per_task.std()),
          "sample_std": float(acc.std(1).mean()),
          "best_of_k": {"mean": float(best.mean()), "std": float(best.std()),
                        "per_task": [float(a) for a in best]},
          "per_task": [float(a) for a in per_task],
          "per_sample": [[float(a) for a in row] for row in acc]}


def gap_closure(gen: np.ndarray, base: np.ndarray, oracle: np.ndarray,
                min_den: float = baselines.DEFAULT_MIN_DENOMINATOR) -> dict:
  """Gap closure (gen − base) / (oracle − base), two ways.

  Args:
    gen, base, oracle: (n,) per-task accuracies.
    min_den: tasks with |oracle − base| below this are left out of the per-task average
      (their ratio is noise); the from-means ratio is None if its denominator is.

  Returns:
    ``per_task_mean`` (average of per-task ratios over the kept tasks), ``per_task_median``,
    ``from_means`` ((mean gen − mean base) / (mean oracle − mean base) over all tasks),
    ``tasks_used``, ``tasks``.
  """
  gen, base, oracle = (np.asarray(a, np.float64) for a in (gen, base, oracle))
  den = oracle - base
  keep = np.abs(den) >= min_den
  ratios = (gen[keep] - base[keep]) / den[keep]
  return {"per_task_mean": float(ratios.mean()) if keep.any() else None,
          "per_task_median": float(np.median(ratios)) if keep.any() else None,
          "from_means": baselines.gap_closure_from_means(gen.mean(), base.mean(), oracle.mean(),
                                                         min_den),
          "tasks_used": int(keep.sum()), "tasks": int(gen.size), "min_denominator": min_den}


# --------------------------------------------------------------------------- novelty
def nearest_rows(queries: np.ndarray, keys: np.ndarray, *, center: np.ndarray | None = None,
                 exclude_self: bool = False, chunk: int = 256):
  """Nearest key (L2) of each query.

  Distances are computed as |q|^2 + |k|^2 - 2 q.k in float64 after subtracting ``center``
  (e.g. the base net all corpus nets were fine-tuned from) so that nets close to each other
  but far from the origin do not lose their difference to cancellation.

  Args:
    queries: (n, D); keys: (N, D).
    center: (D,) subtracted from both, or None.
    exclude_self: queries ARE keys[:n] in order; a query may not match itself.
    chunk: keys per block.

  Returns:
    (idx (n,) int64, dist (n,) float64).
  """
  q = np.asarray(queries, np.float64)
  c = np.zeros(q.shape[1]) if center is None else np.asarray(center, np.float64)
  q = q - c
  qq = np.einsum("nd,nd->n", q, q)
  best = np.full(q.shape[0], np.inf)
  idx = np.zeros(q.shape[0], np.int64)
  for s in range(0, keys.shape[0], chunk):
    k = np.asarray(keys[s:s + chunk], np.float64) - c
    d2 = qq[:, None] + np.einsum("nd,nd->n", k, k)[None] - 2.0 * q @ k.T
    if exclude_self:
      rows = np.arange(q.shape[0])
      cols = rows - s
      ok = (cols >= 0) & (cols < k.shape[0])
      d2[rows[ok], cols[ok]] = np.inf
    j = np.argmin(d2, 1)
    v = d2[np.arange(q.shape[0]), j]
    better = v < best
    best[better], idx[better] = v[better], j[better] + s
  return idx, np.sqrt(np.maximum(best, 0.0))


def measure_novelty(ctx, nets: np.ndarray, rows, tasks, seen_w: np.ndarray, *, ref_rows: int = 256,
            samples: int = 1) -> dict:
  """How far generated nets are from the training corpus, and whether they act alike.

  Args:
    ctx: EvalContext.
    nets: (n, S, D) generated nets.
    rows, tasks: the n tasks' corpus rows (their oracles) and tasks.
    seen_w: (N, D) the seen corpus nets (the generator's training set).
    ref_rows: seen nets (evenly spaced) whose leave-one-out nearest-neighbour distance
      gives the corpus's typical spacing.
    samples: generated nets per task (the first ones) whose test predictions are compared
      with their nearest seen net's and the oracle's; distances use all S.

  Returns:
    Distances (mean/median, relative to the typical spacing), the oracle's for reference,
    the accuracy of the nearest seen nets on the tasks, and prediction agreements.
  """
  n, s, d = nets.shape
  ns = max(1, min(int(samples), s))
  center = np.asarray(ctx.corpus.base, np.float64)
  idx, dist = nearest_rows(nets.reshape(n * s, d), seen_w, center=center)
  # Typical spacing of the corpus: each reference seen net's distance to its nearest other.
  ref = np.unique(np.linspace(0, len(seen_w) - 1, min(ref_rows, len(seen_w))).astype(int))
  order = np.concatenate([ref, np.setdiff1d(np.arange(len(seen_w)), ref)])
  if len(seen_w) > 1:
    _, ref_d = nearest_rows(seen_w[ref], seen_w[order], center=center, exclude_self=True)
    typical = float(np.median(ref_d))
  else:
    typical = float("nan")
  oracle_w = np.asarray(ctx.corpus.weights[rows], np.float32)
  oracle_idx, oracle_d = nearest_rows(oracle_w, seen_w, center=center)
  # One batched call: the compared generated nets, their nearest seen nets, and (the
  # reference) each oracle's nearest seen net; the oracles' own predictions are cached.
  pick = (np.arange(n)[:, None] * s + np.arange(ns)[None]).reshape(-1)
  rep = [t for t in tasks for _ in range(ns)]
  pred, label = ctx.test_predictions(
      np.concatenate([nets.reshape(n * s, d)[pick], seen_w[idx[pick]], seen_w[oracle_idx]]),
      rep + rep + list(tasks))
  m = n * ns
  p_gen, p_nn, p_or_nn = pred[:m], pred[m:2 * m], pred[2 * m:]
  p_or, l_or = ctx.reference_predictions("oracle", rows)
  valid = label[:m] >= 0

  def frac(a, b, v):
    return ((a == b) & v).sum(1) / np.maximum(v.sum(1), 1)

  seen_rows = ctx.rows("seen")
  rel = dist / typical if typical > 0 else np.full_like(dist, np.nan)
  return {
      "nn_distance_mean": float(dist.mean()), "nn_distance_median": float(np.median(dist)),
      "corpus_nn_distance_median": typical, "corpus_ref_rows": int(len(ref)),
      "relative_mean": float(rel.mean()), "relative_min": float(rel.min()),
      "oracle_nn_distance_mean": float(oracle_d.mean()),
      "oracle_relative_mean": float((oracle_d / typical).mean()) if typical > 0 else None,
      "compared_samples_per_task": ns,
      "nearest_seen_acc_mean": float(np.mean(frac(p_nn, label[:m], valid))),
      "agreement_with_nearest_mean": float(np.mean(frac(p_gen, p_nn, valid))),
      "agreement_with_oracle_mean": float(np.mean(frac(p_gen, np.repeat(p_or, ns, 0), valid))),
      "oracle_agreement_with_nearest_mean": float(np.mean(frac(p_or, p_or_nn, l_or >= 0))),
      "per_sample_distance": [float(x) for x in dist],
      "nearest_seen_task_ids": [int(ctx.corpus.records[seen_rows[j]]["task_id"]) for j in idx],
  }


# --------------------------------------------------------------------------- evaluators
def _reference(ctx, rows):
  """(n,) accuracies of the base net and of the oracles on the tasks of ``rows`` (cached)."""
  return (ctx.reference_accuracy("generalist", rows),
          ctx.reference_accuracy("oracle", rows))


@registry.register("generated", needs_generator=True)
def evaluate_generated(ctx, rng, *, splits: Sequence[str] = ("unseen", "heldout"),
                       max_tasks: int | None = None, num_samples: int = 4,
                       sampler: str | None = None, steps: int | None = None,
                       guidance: float | None = None, temperature: float | None = None,
                       min_denominator: float = baselines.DEFAULT_MIN_DENOMINATOR,
                       novelty: bool = True, novelty_ref_rows: int = 256,
                       novelty_samples: int = 1) -> dict:
  """K generated nets per task: accuracy, best-of-K, gap closure and novelty per split.

  Args:
    ctx: the ``EvalContext`` (with a generator).
    rng: PRNG key; each split's nets use a key folded from it and the split's name.
    splits: corpus splits to measure.
    max_tasks: the first ``max_tasks`` tasks of each split; None: all.
    num_samples: K, generated nets per task.
    sampler, steps, guidance, temperature: sampling; None: the generator's defaults
      (``generator.resolve_sampling``).
    min_denominator: gap closure leaves out tasks with |specialist - generalist| below it.
    novelty: measure novelty (distance to the seen corpus, prediction agreement).
    novelty_ref_rows: seen nets giving the corpus's typical nearest-neighbour spacing.
    novelty_samples: generated nets per task whose test predictions are compared.

  Returns:
    JSON-ready dict: num_samples, sampler, steps, guidance, temperature and per split the
    accuracy statistics, the generalist's and specialist's, gap closures, the weight
    average's and novelty.
  """
  k = int(num_samples)
  setting = generator_lib.resolve_sampling(ctx.gen.config, sampler=sampler, steps=steps,
                                           guidance=guidance, temperature=temperature)
  sampler, steps, guidance, temperature = setting
  min_den = float(min_denominator)
  seen_w = baselines.seen_weights(ctx) if novelty else None
  out = {"num_samples": k, "sampler": sampler, "steps": steps, "guidance": guidance,
         "temperature": temperature, "splits": {}}
  for split in splits:
    rows, tasks = baselines.split_tasks(ctx, max_tasks, split)
    emb, mask = ctx.class_text(tasks)
    t0 = time.time()
    # Keyed by the split's name, so a split's nets do not depend on which others run.
    key = jax.random.fold_in(rng, zlib.crc32(split.encode()) & 0x7FFFFFFF)
    nets = sample_nets(ctx, emb, mask, key, num_samples=k, sampler=sampler, steps=steps,
                       guidance=guidance, temperature=temperature)
    logging.info("generated %d nets for %d %s tasks in %.1fs", nets.shape[0] * k, len(tasks),
                 split, time.time() - t0)
    acc = accuracy_samples(ctx, nets, tasks)
    base, oracle = _reference(ctx, rows)
    res = {"n_tasks": len(tasks), "task_ids": [t.task_id for t in tasks], **sample_stats(acc),
           "generalist": baselines.stats(base), "oracle": baselines.stats(oracle),
           "gap_closure": gap_closure(acc.mean(1), base, oracle, min_den),
           "gap_closure_best_of_k": gap_closure(acc.max(1), base, oracle, min_den)}
    # One net per task: the weight average of its K samples. The corpus nets share the
    # base net's basin, so averaging cancels part of each sample's SGD-like noise (the mean
    # of all corpus weights beats the base net for the same reason).
    avg = ctx.accuracy(nets.mean(1), tasks)
    res["weight_average"] = {**baselines.stats(avg),
                             "gap_closure": gap_closure(avg, base, oracle, min_den)}
    if seen_w is not None:
      res["novelty"] = measure_novelty(ctx, nets, rows, tasks, seen_w,
                                       ref_rows=int(novelty_ref_rows),
                                       samples=int(novelty_samples))
    out["splits"][split] = res
  return out


def parse_setting(setting: str, num_timesteps: int) -> tuple[str, int]:
  """"ddim:50" -> ("ddim", 50); "ddpm" (or "ddpm:T") -> ("ddpm", num_timesteps)."""
  name, _, steps = str(setting).partition(":")
  name = name.strip().lower()
  if name == "ddpm":
    if steps and int(steps) != num_timesteps:
      logging.info("ddpm walks the full chain of %d steps; %r ignored", num_timesteps, setting)
    return "ddpm", int(num_timesteps)
  if name != "ddim" or not steps.strip().isdigit() or int(steps) < 1:
    raise ValueError(f"sampler setting {setting!r}: use 'ddim:STEPS' (STEPS >= 1) or 'ddpm'")
  return "ddim", int(steps)


ABLATION_SAMPLERS = ("ddim:1", "ddim:2", "ddim:5", "ddim:10", "ddim:25", "ddim:50", "ddim:100",
                     "ddpm")


@registry.register("sampler_ablation", needs_generator=True)
def evaluate_sampler_ablation(ctx, rng, *, split: str = "unseen", num_tasks: int = 6,
                              num_samples: int = 2,
                              samplers: Sequence[str] = ABLATION_SAMPLERS,
                              guidances: Sequence[float] = (1.0, 2.0, 4.0),
                              temperatures: Sequence[float] = (1.0, 0.5, 0.0),
                              cross: bool = False, guidance_sampler: str = "ddim:50",
                              num_timesteps: int | None = None) -> dict:
  """Generated-net accuracy per sampler/steps/guidance setting on a few tasks.

  Args:
    ctx: the ``EvalContext`` (with a generator).
    rng: PRNG key, the same for every setting (paired comparison).
    split: the corpus split; num_tasks: its first tasks; num_samples: nets per task.
    samplers: "ddim:STEPS" or "ddpm" settings. DDIM settings with more steps than the
      generator's chain are skipped and listed.
    guidances: classifier-free guidance scales.
    temperatures: starting-noise scales; the first goes with every setting, the others
      run at ``guidance_sampler`` and ``guidances[0]``.
    cross: False: samplers at ``guidances[0]`` plus guidances at ``guidance_sampler``;
      True: every pair.
    guidance_sampler: the sampler the guidance scales are measured with.
    num_timesteps: the chain length settings are checked against; None: the generator's.

  Returns:
    JSON-ready dict: split, n_tasks, num_samples, task_ids, base_mean, oracle_mean, rows
    (one per setting) and skipped.
  """
  num_t = int(num_timesteps or ctx.gen.config["num_timesteps"])
  k = int(num_samples)
  rows, tasks = baselines.split_tasks(ctx, num_tasks, split)
  samplers = [str(x) for x in samplers]
  guidances = [float(g) for g in guidances]
  if not samplers or not guidances:
    raise ValueError("sampler_ablation needs at least one sampler and one guidance scale")
  temps = [float(x) for x in temperatures]
  if not temps or min(temps) < 0:
    raise ValueError(f"sampler_ablation temperatures must be >= 0 and not empty: {temps}")
  gs = str(guidance_sampler)
  if cross:
    grid = [(s, g, temps[0]) for s in samplers for g in guidances]
  else:
    grid = ([(s, guidances[0], temps[0]) for s in samplers]
            + [(gs, g, temps[0]) for g in guidances[1:]])
  grid += [(gs, guidances[0], tau) for tau in temps[1:]]
  emb, mask = ctx.class_text(tasks)
  base, oracle = _reference(ctx, rows)
  out_rows, skipped, seen = [], [], set()
  for setting, g, tau in grid:
    name, steps = parse_setting(setting, num_t)
    if (name, steps, g, tau) in seen:
      continue
    seen.add((name, steps, g, tau))
    if name == "ddim" and steps > num_t:
      skipped.append(f"{setting} (chain has {num_t} steps)")
      continue
    t0 = time.time()
    # Same key for every setting: differences come from the sampler, not the noise.
    nets = sample_nets(ctx, emb, mask, rng, num_samples=k, sampler=name, steps=steps,
                       guidance=g, temperature=tau)
    seconds = time.time() - t0
    st = sample_stats(accuracy_samples(ctx, nets, tasks))
    out_rows.append({"sampler": name, "steps": steps, "guidance": g, "temperature": tau,
                     "mean": st["mean"], "std": st["std"], "sample_std": st["sample_std"],
                     "best_of_k": st["best_of_k"]["mean"],
                     "gap_closure_from_means": baselines.gap_closure_from_means(
                         st["mean"], float(base.mean()), float(oracle.mean())),
                     "seconds": seconds})
  if not out_rows:
    raise ValueError(f"sampler_ablation: no setting could run ({'; '.join(skipped)})")
  return {"split": split, "n_tasks": len(tasks), "num_samples": k,
          "task_ids": [t.task_id for t in tasks], "base_mean": float(base.mean()),
          "oracle_mean": float(oracle.mean()), "rows": out_rows, "skipped": skipped}


# --------------------------------------------------------------------------- free-form text
def pluralize(name: str) -> str:
  """Plural of a class name's last word ("red cross" -> "red crosses")."""
  head, _, last = name.rpartition(" ")
  low = last.lower()
  if low.endswith(("s", "x", "z", "ch", "sh")):
    last += "es"
  elif low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
    last = last[:-1] + "ies"
  else:
    last += "s"
  return f"{head} {last}" if head else last


def _join(items: Sequence[str], last: str = "and") -> str:
  items = list(items)
  return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


# Sentence styles a user might type; task i uses style i mod len.
SENTENCE_STYLES = (
    lambda n: f"a classifier that tells apart {_join([pluralize(x) for x in n])}",
    lambda n: f"pictures of: {', '.join(n)}",
    lambda n: f"Sort my photos into {_join([pluralize(x) for x in n], 'or')}.",
    lambda n: f"I need a model that recognises {_join([f'a {x}' for x in n])}",
)


def describe(names: Sequence[str], i: int) -> str:
  """The i-th style of free-form description of a task's classes."""
  return SENTENCE_STYLES[i % len(SENTENCE_STYLES)]([text_lib.clean_class_name(x) for x in names])


FREEFORM_VARIANTS = ("class_list", "sentence", "sentence_no_singular", "other_prompt",
                     "whole_sentence")


def freeform_condition(ctx, names_per_task: Sequence[Sequence[str]], variant: str,
                       prompt: str = "an image showing a {}"):
  """Texts and class-token embeddings of one free-form variant.

  Returns:
    (texts: the description of each task, parsed: the class names the model was given per
    task (None for ``whole_sentence``), emb (n, K, d), mask (n, K)).
  """
  enc, template = ctx.gen.encoder, ctx.gen.spec.template
  if variant == "class_list":
    texts = [_join(n) for n in names_per_task]
    parsed = [text_lib.split_description(t) for t in texts]
    prompts = [text_lib.apply_template(p, template) for p in parsed]
  elif variant in ("sentence", "sentence_no_singular"):
    texts = [describe(n, i) for i, n in enumerate(names_per_task)]
    parsed = [text_lib.parse_description(t, singular=variant == "sentence") for t in texts]
    prompts = [text_lib.apply_template(p, template) for p in parsed]
  elif variant == "other_prompt":
    texts = [_join(n) for n in names_per_task]
    parsed = [list(n) for n in names_per_task]
    prompts = [text_lib.apply_template(p, prompt) for p in parsed]
  elif variant == "whole_sentence":
    texts = [describe(n, i) for i, n in enumerate(names_per_task)]
    parsed = None
    prompts = [[t] for t in texts]
  else:
    raise ValueError(f"unknown free-form variant {variant!r}; known: {FREEFORM_VARIANTS}")
  flat = [p for ps in prompts for p in ps]
  vecs = np.asarray(enc.encode(flat), np.float32)
  per_task = np.split(vecs, np.cumsum([len(p) for p in prompts])[:-1])
  emb, mask = tasks_lib.pad_classes(per_task, int(ctx.gen.config["max_classes"]))
  return texts, parsed, emb, mask


@registry.register("freeform", needs_generator=True)
def evaluate_freeform(ctx, rng, *, split: str = "unseen", num_tasks: int = 12,
                      num_samples: int = 2, variants: Sequence[str] = FREEFORM_VARIANTS,
                      prompt: str = "an image showing a {}", sampler: str | None = None,
                      steps: int | None = None, guidance: float | None = None) -> dict:
  """Generated-net accuracy when tasks are described in sentences rather than class lists.

  Variants: ``class_list`` ("red circle, blue star and green heart", split and templated:
  the reference), ``sentence`` (a user-style sentence, parsed by ``text.parse_description``),
  ``sentence_no_singular`` (same, plurals kept), ``other_prompt`` (class names in a prompt
  other than the training template, ``prompt``), ``whole_sentence`` (the sentence embedded
  as ONE text token). Accuracy is always measured against the task's true classes.

  Args:
    ctx: the ``EvalContext`` (with a generator).
    rng: PRNG key, the same for every variant (paired comparison).
    split: the corpus split; num_tasks: its first tasks; num_samples: nets per task.
    variants: which of ``FREEFORM_VARIANTS``.
    prompt: the template of ``other_prompt``.
    sampler, steps, guidance: sampling; None: the generator's defaults.

  Returns:
    JSON-ready dict: split, n_tasks, num_samples, sampler, steps, guidance, base_mean,
    oracle_mean and per variant its accuracy, best-of-K, parse rate and examples.
  """
  k = int(num_samples)
  sampler, steps, guidance, _ = generator_lib.resolve_sampling(
      ctx.gen.config, sampler=sampler, steps=steps, guidance=guidance)
  rows, tasks = baselines.split_tasks(ctx, num_tasks, split)
  names = [list(ctx.corpus.records[r]["classes"]) for r in rows]
  variants = [str(v) for v in variants]
  base, oracle = _reference(ctx, rows)
  out = {"split": split, "n_tasks": len(tasks), "num_samples": k, "sampler": sampler,
         "steps": steps, "guidance": guidance, "base_mean": float(base.mean()),
         "oracle_mean": float(oracle.mean()), "variants": {}}
  for v in variants:
    texts, parsed, emb, mask = freeform_condition(ctx, names, v, prompt)
    # Same key for every variant: a paired comparison of the descriptions.
    nets = sample_nets(ctx, emb, mask, rng, num_samples=k, sampler=sampler, steps=steps,
                       guidance=guidance)
    st = sample_stats(accuracy_samples(ctx, nets, tasks))
    exact = None if parsed is None else float(np.mean(
        [[text_lib.clean_class_name(x) for x in p] == [text_lib.clean_class_name(x) for x in n]
         for p, n in zip(parsed, names)]))
    out["variants"][v] = {"mean": st["mean"], "std": st["std"],
                          "best_of_k": st["best_of_k"]["mean"], "parsed_exactly": exact,
                          "examples": [{"text": t, "classes": p}
                                       for t, p in zip(texts[:4], (parsed or [None] * 4)[:4])]}
  return out
