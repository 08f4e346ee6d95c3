"""Few-shot initialisation: a user has k labelled images per class of an unseen task.

The T2W paper's headline use of a generated net is as an initialisation. It matters most
where data is scarce, so this fine-tunes every task from each start

* ``generated``: the generator's net for the task's class list (one DDIM step by default);
* ``generalist``: the net trained on all seen classes;
* ``nearest``: the seen corpus net whose class text is nearest the task's;
* ``random``: a fresh random init,

with k = 1, 5, 20 shots per class and with all training images, with the same optimiser,
batches and step budget for every start (the corpus trainer's recipe, ``masstrain``).

Early stopping sees only the k shots: for k >= 2, ``tasks.shot_split`` holds out a fifth of
them per class (at least one) as the validation set and trains on the rest; for k = 1 there
is nothing to hold out, so the shot is its own validation and training stops once the shots
stop gaining. With all images the corpus's own validation split is used. The rule is the
corpus trainer's (strict improvement, ``patience`` checks), replayed on the recorded curves
(``finetune.early_stop``). The shots are drawn once per class (seeded) and shared by every
task and start, so the starts are compared on identical data.
"""
import logging
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t2w_jax import api
from t2w_jax import io as io_lib
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.evaluate import baselines
from t2w_jax.evaluate import finetune
from t2w_jax.evaluate import plots
from t2w_jax.evaluate import registry
from t2w_jax.evaluate import report
from t2w_jax.zoo import masstrain
from t2w_jax.zoo import trainer_shape

METHODS = ("generated", "generalist", "nearest", "random")
SHOTS = (1, 5, 20, 0)  # 0: every training image of the class


def shot_label(k: int) -> str:
  return "all" if k == 0 else str(k)


def shot_data(data: masstrain.DeviceData, k: int, seed: int) -> masstrain.DeviceData:
  """The device data of a k-shot user: k training rows per class, a fifth held out.

  Args:
    data: the full ``DeviceData`` (its ``class_index`` rows are the training images, its
      validation rows already left out).
    k: shots per class; 0 returns ``data`` unchanged (all images and the corpus's
      validation split).
    seed: which shots: each class's k are the first k of a seeded permutation of its
      training rows.

  Returns:
    ``DeviceData`` with ``class_index`` holding the training shots and ``val_index`` the
    held-out ones (for k = 1 the shot itself).

  Raises:
    ValueError: a class with fewer than k training images.
  """
  if k == 0:
    return data
  n_train, n_val = tasks_lib.shot_split(k)
  index, count = np.asarray(data.class_index), np.asarray(data.class_count)
  short = np.flatnonzero(count < k)
  if short.size:
    raise ValueError(f"{k} shots per class asked, but class {int(short[0])} has only "
                     f"{int(count[short[0]])} training images")
  rng = np.random.default_rng(seed)
  shots = np.stack([index[c, rng.permutation(int(count[c]))[:k]] for c in range(len(count))])
  train, val = shots[:, :n_train], (shots[:, n_train:] if n_val else shots)
  full = lambda a: jnp.full((len(count),), a.shape[1], jnp.int32)  # noqa: E731
  return data._replace(class_index=jnp.asarray(train, jnp.int32), class_count=full(train),
                       val_index=jnp.asarray(val, jnp.int32), val_count=full(val))


def initial_nets(ctx, tasks, methods: Sequence[str], rng, *, steps=None, guidance=None,
                 sampler=None) -> dict:
  """{method: (n, D)} the starting nets of ``tasks`` for each method of ``METHODS``."""
  n = len(tasks)
  gen_rng, init_rng = jax.random.split(rng)
  out = {}
  for method in methods:
    if method == "generated":
      emb, mask = ctx.class_text(tasks)
      out[method] = np.asarray(api.sample_flat(ctx.gen, emb, mask, rng=gen_rng, steps=steps,
                                               guidance=guidance, sampler=sampler))
    elif method == "generalist":
      out[method] = np.repeat(np.asarray(ctx.corpus.base, np.float32)[None], n, 0)
    elif method == "nearest":
      out[method] = baselines.nearest_seen_weights(ctx, tasks)[:, 0]
    elif method == "random":
      out[method] = finetune.random_inits(ctx.model, ctx.corpus.layout,
                                          int(ctx.corpus.meta["image_size"]), init_rng, n)
    else:
      raise ValueError(f"unknown start {method!r}; known: {list(METHODS)}")
  return out


def start_accuracy(ctx, tasks, inits: dict) -> dict:
  """{split: {method: {mean, per_task}}} test accuracy of the starts, not fine-tuned."""
  methods = list(inits)
  acc = ctx.accuracy(np.concatenate([inits[m] for m in methods]), list(tasks) * len(methods))
  acc = acc.reshape(len(methods), len(tasks))
  split_of = np.array([t.split for t in tasks])
  return {s: {m: {"mean": float(acc[i, split_of == s].mean()),
                  "per_task": acc[i, split_of == s].tolist()} for i, m in enumerate(methods)}
          for s in dict.fromkeys(split_of.tolist())}


def _markdown(results: dict) -> str:
  splits, methods = results["splits"], results["methods"]
  head = ("| shots/class | " + " | ".join(f"{m} ({s})" for s in splits for m in methods)
          + " |")
  lines = [f"### Few-shot initialisation (early-stopped test accuracy %, "
           f"{results['train_steps']} steps at most, mean over tasks)", "", head,
           "|---" * (1 + len(splits) * len(methods)) + "|"]
  cells = [f"{100 * results['start'][s][m]['mean']:.1f}" for s in splits for m in methods]
  lines.append("| none (the start itself) | " + " | ".join(cells) + " |")
  for k, r in results["per_k"].items():
    cells = [f"{100 * r['early_stopped'][s][m]['mean']:.1f}" for s in splits for m in methods]
    lines.append(f"| {k} | " + " | ".join(cells) + " |")
  others = [m for m in methods if m != "generated"]
  if "generated" in methods and others:
    lines += ["", "Generated start minus each other start, paired by task (points, mean ± "
              "s.e., tasks won):", "",
              "| shots/class | " + " | ".join(f"− {m} ({s})" for s in splits for m in others)
              + " |", "|---" * (1 + len(splits) * len(others)) + "|"]
    for k, r in results["per_k"].items():
      cells = []
      for s in splits:
        for m in others:
          d = r["paired"][s][m]
          se = "" if d["se"] is None else f" ± {100 * d['se']:.1f}"
          cells.append(f"{100 * d['mean']:+.1f}{se} ({d['wins']}/{d['n']})")
      lines.append(f"| {k} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


@registry.register("fewshot")
def fewshot(ctx, rng, *, splits: Sequence[str] = ("unseen", "heldout"), num_tasks: int = 6,
            shots: Sequence[int] = SHOTS, methods: Sequence[str] = METHODS,
            train_steps: int = 500, eval_every: int = 25, patience: int | None = None,
            batch_size: int | None = None, learning_rate: float | None = None,
            nets_per_chunk: int | None = None, shot_seed: int = 0,
            steps: int | None = None, guidance: float | None = None,
            sampler: str | None = None, out_dir: str | None = None) -> dict:
  """Few-shot fine-tuning from the generated net, the generalist, the nearest corpus net
  and a random init, for several shot counts.

  Args:
    ctx: the ``EvalContext``.
    rng: PRNG key (generation and the random inits).
    splits: the corpus splits whose first ``num_tasks`` tasks are fine-tuned on.
    num_tasks: tasks per split.
    shots: shots per class (0: all training images).
    methods: starting points among ``METHODS``; "generated" is skipped with a warning when
      the context has no generator.
    train_steps: the step budget of every start (a multiple of ``eval_every``).
    eval_every: steps between checks (test and validation accuracy).
    patience: checks without improvement before early stopping; None: the corpus
      trainer's.
    batch_size, learning_rate, nets_per_chunk: the recipe; None: the corpus trainer's.
    shot_seed: which images are the shots.
    steps, guidance, sampler: sampling of the generated starts; None: the defaults.
    out_dir: where fewshot.md/.png go; None: no files written.

  Returns:
    JSON-ready dict: splits, task_ids, shots, methods, train_steps, eval_every, patience,
    steps (list), start {split: {method: {mean, per_task}}} (no fine-tuning), per_k {label:
    {curves {method: mean test accuracy per check (all tasks)}, early_stopped {split:
    {method: {mean, per_task}}}, kept_step {method: mean}, initial {method: mean}, paired {split: {method: generated − method}}}}, markdown, png.
  """
  trainer = ctx.corpus.meta["trainer"]
  methods = list(methods)
  if "generated" in methods and ctx.gen is None:
    logging.warning("fewshot: no generator in the context; skipping the 'generated' start")
    methods.remove("generated")
  if "generated" in methods and ctx.gen.layout.fingerprint() != ctx.corpus.layout.fingerprint():
    raise ValueError("the generator was trained for another net layout than the corpus's")
  splits, shots = list(splits), [int(k) for k in shots]
  for k in shots:
    if k:
      tasks_lib.shot_split(k)  # rejects a bad count before any training
  rows = {s: ctx.rows(s, int(num_tasks)) for s in splits}
  if any(len(r) == 0 for r in rows.values()):
    raise ValueError(f"the corpus has no tasks in one of the splits {splits}")
  tasks = [t for s in splits for t in ctx.tasks(rows[s])]
  spec = masstrain.TrainerSpec(
      steps=int(train_steps),
      batch_size=int(trainer["batch_size"] if batch_size is None else batch_size),
      learning_rate=float(trainer["learning_rate"] if learning_rate is None
                          else learning_rate),
      nets_per_chunk=int(trainer_shape.resolve(trainer).nets_per_chunk
                         if nets_per_chunk is None else nets_per_chunk))
  patience = int(trainer.get("patience", 5) if patience is None else patience)
  eval_every = int(eval_every)
  inits = initial_nets(ctx, tasks, methods, rng, steps=steps, guidance=guidance,
                       sampler=sampler)
  ids, mask = ctx.padded(tasks)
  seeds = np.array([t.seed for t in tasks], np.uint32)
  n, m = len(tasks), len(methods)
  split_of = np.array([t.split for t in tasks])
  results = {"splits": splits, "task_ids": {s: [int(ctx.corpus.records[r]["task_id"])
                                                for r in rows[s]] for s in splits},
             "shots": [shot_label(k) for k in shots], "methods": methods,
             "train_steps": spec.steps, "eval_every": eval_every, "patience": patience,
             "steps": list(range(0, spec.steps + 1, eval_every)), "per_k": {},
             "start": start_accuracy(ctx, tasks, inits)}
  for k in shots:
    data = shot_data(ctx.data, k, int(shot_seed))
    curves = finetune.train_curves(
        ctx.model, spec, ctx.corpus.layout, data, np.concatenate([inits[x] for x in methods]),
        np.tile(ids, (m, 1)), np.tile(mask, (m, 1)), np.tile(seeds, m),
        eval_every=eval_every, with_val=True)
    kept = finetune.early_stop(curves.val, patience)
    test = curves.test.reshape(m, n, -1)
    stopped = curves.test[np.arange(m * n), kept].reshape(m, n)
    kept = kept.reshape(m, n)
    r = {"curves": {x: test[i].mean(0).tolist() for i, x in enumerate(methods)},
         "initial": {x: float(test[i, :, 0].mean()) for i, x in enumerate(methods)},
         "kept_step": {x: float(kept[i].mean() * eval_every) for i, x in enumerate(methods)},
         "early_stopped": {}, "paired": {}}
    for s in splits:
      sel = split_of == s
      r["early_stopped"][s] = {x: {"mean": float(stopped[i, sel].mean()),
                                   "per_task": stopped[i, sel].tolist()}
                               for i, x in enumerate(methods)}
      if "generated" in methods:
        g = stopped[methods.index("generated"), sel].tolist()
        r["paired"][s] = {x: report.paired_difference(g, stopped[i, sel].tolist())
                          for i, x in enumerate(methods) if x != "generated"}
    results["per_k"][shot_label(k)] = r
    logging.info("fewshot k=%s: %s", shot_label(k), ", ".join(
        f"{x} {np.mean(stopped[i]):.3f}" for i, x in enumerate(methods)))
  results["markdown"] = _markdown(results)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    results["png"] = plots.plot_fewshot(results, os.path.join(out_dir, "fewshot.png"))
    io_lib.atomic_write_bytes(os.path.join(out_dir, "fewshot.md"), results["markdown"].encode())
  return results
