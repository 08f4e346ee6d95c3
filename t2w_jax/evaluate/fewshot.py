"""Few-shot initialisation: a user has k labelled images per class of an unseen task.

The T2W paper's headline use of a generated net is as an initialisation. It matters most
where data is scarce, so this fine-tunes every task from each start

* ``generated``: the generator's net for the task's class list (``api.few_shot``'s own
  start: one DDIM step by default);
* ``generalist``: the net trained on all seen classes;
* ``nearest``: the seen corpus net whose class text is nearest the task's;
* ``random``: a fresh random init,

with k = 1, 5, 20 shots per class and with all training images. Every number is what a user
gets from ``api.few_shot`` (through its batched core ``api.few_shot_flat``, the same
function for many tasks): the generated start is its own, the others are handed to it as
``init``; the recipe, the validation split (a fifth of each class's images, at least one; a
single shot validates itself) and the early stopping are its. Each task has one key, shared
by its four starts, so they train on the same batches and validate on the same images. The
shots are drawn once per class (seeded) and shared by every task and start; with all
images a task gets every training image of its classes. The kept nets are measured on the
tasks' test images (``EvalContext.accuracy``, with the corpus's class embeddings: the
generator's encoder gives the same ones up to float rounding).
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
from t2w_jax.zoo import family as family_lib
from t2w_jax.zoo import masstrain

METHODS = ("generated", "generalist", "nearest", "random")
SHOTS = (1, 5, 20, 0)  # 0: every training image of the class


def shot_label(k: int) -> str:
  return "all" if k == 0 else str(k)


def class_shots(data: masstrain.DeviceData, k: int, seed: int) -> np.ndarray:
  """(C, k) row ids of every class's k shots: the first k of a seeded permutation of its
  training rows (``class_index``; never a validation or test image).

  Raises:
    ValueError: k < 1, or a class with fewer than k training images.
  """
  tasks_lib.shot_split(k)  # rejects k < 1
  index, count = np.asarray(data.class_index), np.asarray(data.class_count)
  short = np.flatnonzero(count < k)
  if short.size:
    raise ValueError(f"{k} shots per class asked, but class {int(short[0])} has only "
                     f"{int(count[short[0]])} training images")
  rng = np.random.default_rng(seed)
  return np.stack([index[c, rng.permutation(int(count[c]))[:k]] for c in range(len(count))])


def shot_data(data: masstrain.DeviceData, k: int, seed: int) -> masstrain.DeviceData:
  """The device data of a k-shot user: k training rows per class, a fifth held out.

  Args:
    data: the full ``DeviceData`` (its ``class_index`` rows are the training images, its
      validation rows already left out).
    k: shots per class; 0 returns ``data`` unchanged (all images and the corpus's
      validation split).
    seed: which shots (``class_shots``).

  Returns:
    ``DeviceData`` with ``class_index`` holding the training shots and ``val_index`` the
    held-out ones (for k = 1 the shot itself).

  Raises:
    ValueError: a class with fewer than k training images.
  """
  if k == 0:
    return data
  n_train, n_val = tasks_lib.shot_split(k)
  shots = class_shots(data, k, seed)
  train, val = shots[:, :n_train], (shots[:, n_train:] if n_val else shots)
  full = lambda a: jnp.full((len(shots),), a.shape[1], jnp.int32)  # noqa: E731
  return data._replace(class_index=jnp.asarray(train, jnp.int32), class_count=full(train),
                       val_index=jnp.asarray(val, jnp.int32), val_count=full(val))


def task_images(ctx, tasks, k: int, seed: int) -> tuple[list, list]:
  """Each task's labelled images for a k-shot user, as ``api.few_shot`` takes them.

  Args:
    ctx: the ``EvalContext``.
    tasks: the tasks.
    k: shots per class (``class_shots``, drawn once per class and shared by the tasks);
      0: every training image of the task's classes (the corpus's validation rows too).
    seed: which shots.

  Returns:
    (images, labels): per task, (N, S, S, 3) images (its classes in order) and (N,) labels
    (the class's slot in the task).
  """
  pool = ctx.dataset.train_images
  if k:
    shots = class_shots(ctx.data, k, seed)
    rows_of = lambda c: shots[c]  # noqa: E731
  else:
    all_labels = np.asarray(ctx.dataset.train_labels)
    rows_of = lambda c: np.flatnonzero(all_labels == c)  # noqa: E731
  images, labels = [], []
  for t in tasks:
    rows = [rows_of(c) for c in t.class_ids]
    images.append(pool[np.concatenate(rows)])
    labels.append(np.concatenate([np.full(len(r), i, np.int32) for i, r in enumerate(rows)]))
  return images, labels


def given_starts(ctx, tasks, methods: Sequence[str], rng) -> dict:
  """{method: (n, D)} the starts handed to ``api.few_shot`` as ``init`` (every method of
  ``METHODS`` but "generated", whose start is ``api.few_shot``'s own)."""
  n = len(tasks)
  out = {}
  for method in methods:
    if method == "generalist":
      out[method] = np.repeat(np.asarray(ctx.corpus.base, np.float32)[None], n, 0)
    elif method == "nearest":
      out[method] = baselines.nearest_seen_weights(ctx, tasks)[:, 0]
    elif method == "random":
      out[method] = finetune.random_inits(ctx.model, ctx.corpus.layout,
                                          int(ctx.corpus.meta["image_size"]), rng, n)
    else:
      raise ValueError(f"unknown given start {method!r}; known: "
                       f"{[m for m in METHODS if m != 'generated']}")
  return out


def _by_split(acc: np.ndarray, split_of: np.ndarray) -> dict:
  """{split: {mean, per_task}} of (n,) accuracies over tasks of several splits."""
  return {s: {"mean": float(acc[split_of == s].mean()), "per_task": acc[split_of == s].tolist()}
          for s in dict.fromkeys(split_of.tolist())}


def _markdown(results: dict) -> str:
  splits, methods = results["splits"], results["methods"]
  head = ("| shots/class | " + " | ".join(f"{m} ({s})" for s in splits for m in methods)
          + " |")
  lines = [f"### Few-shot initialisation (test accuracy % of `api.few_shot`'s net, "
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
            train_steps: int = api.FEW_SHOT.max_steps,
            eval_every: int = api.FEW_SHOT.eval_every, patience: int = api.FEW_SHOT.patience,
            batch_size: int = api.FEW_SHOT.batch_size,
            learning_rate: float = api.FEW_SHOT.learning_rate,
            nets_per_chunk: int | None = None, shot_seed: int = 0,
            steps: int | None = None, guidance: float | None = None,
            sampler: str | None = None, out_dir: str | None = None) -> dict:
  """Few-shot fine-tuning by ``api.few_shot`` from the generated net, the generalist, the
  nearest corpus net and a random init, for several shot counts.

  Args:
    ctx: the ``EvalContext`` (a CNN-family corpus: ``api.few_shot`` takes images).
    rng: PRNG key (the tasks' keys for ``api.few_shot``, the random inits).
    splits: the corpus splits whose first ``num_tasks`` tasks are fine-tuned on.
    num_tasks: tasks per split.
    shots: shots per class (0: all training images).
    methods: starting points among ``METHODS``.
    train_steps, eval_every, patience, batch_size, learning_rate: ``api.few_shot``'s
      max_steps and the rest of its settings (defaults: its own).
    nets_per_chunk: tasks trained side by side (speed only); None: the corpus trainer's.
    shot_seed: which images are the shots.
    steps, guidance, sampler: sampling of the generated starts; None: the defaults.
    out_dir: where fewshot.md/.png go; None: no files written.

  Returns:
    JSON-ready dict: splits, task_ids, shots, methods, train_steps, eval_every, patience,
    start {split: {method: {mean, per_task}}} (no fine-tuning), per_k {label:
    {early_stopped {split: {method: {mean, per_task}}}, kept_step {method: mean},
    steps_run {method: mean}, paired {split: {method: generated − method}}}}, markdown,
    png.
  """
  if ctx.gen is None:
    raise ValueError("the few-shot study runs api.few_shot, which needs a trained generator "
                     "in the context")
  if family_lib.family_of(ctx.corpus.meta["model"]) != "cnn":
    raise ValueError("the few-shot study runs api.few_shot on images; this context holds an "
                     "adapter-family corpus's trunk features")
  if ctx.gen.layout.fingerprint() != ctx.corpus.layout.fingerprint():
    raise ValueError("the generator was trained for another net layout than the corpus's")
  methods = list(methods)
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    raise ValueError(f"unknown starts {unknown}; known: {list(METHODS)}")
  splits, shots = list(splits), [int(k) for k in shots]
  for k in shots:
    if k:
      tasks_lib.shot_split(k)  # rejects a bad count before any training
  rows = {s: ctx.rows(s, int(num_tasks)) for s in splits}
  if any(len(r) == 0 for r in rows.values()):
    raise ValueError(f"the corpus has no tasks in one of the splits {splits}")
  tasks = [t for s in splits for t in ctx.tasks(rows[s])]
  names = [[ctx.corpus.class_names[c] for c in t.class_ids] for t in tasks]
  n = len(tasks)
  task_rng, init_rng = jax.random.split(rng)
  keys = list(jax.random.split(task_rng, n))  # one per task, shared by its starts
  given = given_starts(ctx, tasks, [m for m in methods if m != "generated"], init_rng)
  layout = ctx.corpus.layout
  settings = dict(max_steps=int(train_steps), eval_every=int(eval_every),
                  patience=int(patience), batch_size=int(batch_size),
                  learning_rate=float(learning_rate), steps=steps, guidance=guidance,
                  sampler=sampler, nets_per_chunk=int(
                      ctx.corpus_trainer_shape.nets_per_chunk if nets_per_chunk is None
                      else nets_per_chunk))
  split_of = np.array([t.split for t in tasks])
  results = {"splits": splits, "task_ids": {s: [int(ctx.corpus.records[r]["task_id"])
                                                for r in rows[s]] for s in splits},
             "shots": [shot_label(k) for k in shots], "methods": methods,
             "train_steps": int(train_steps), "eval_every": int(eval_every),
             "patience": int(patience), "per_k": {}}
  start_acc = {}
  for k in shots:
    images, labels = task_images(ctx, tasks, k, int(shot_seed))
    stopped, kept, ran = {}, {}, {}
    for m in methods:
      inits = None if m == "generated" else [layout.unflatten(w) for w in given[m]]
      out = api.few_shot_flat(ctx.gen, names, images, labels, rngs=keys, inits=inits,
                              **settings)
      stopped[m] = ctx.accuracy(out["params"], tasks)
      kept[m], ran[m] = out["kept_step"], out["steps_run"]
      if m not in start_acc:  # a task's start is the same for every k (its key is)
        start_acc[m] = ctx.accuracy(out["start"], tasks)
    r = {"kept_step": {m: float(kept[m].mean()) for m in methods},
         "steps_run": {m: float(ran[m].mean()) for m in methods},
         "early_stopped": {}, "paired": {}}
    for s in splits:
      sel = split_of == s
      r["early_stopped"][s] = {m: _by_split(stopped[m], split_of)[s] for m in methods}
      if "generated" in methods:
        g = stopped["generated"][sel].tolist()
        r["paired"][s] = {m: report.paired_difference(g, stopped[m][sel].tolist())
                          for m in methods if m != "generated"}
    results["per_k"][shot_label(k)] = r
    logging.info("fewshot k=%s: %s", shot_label(k), ", ".join(
        f"{m} {np.mean(stopped[m]):.3f}" for m in methods))
  results["start"] = {s: {m: _by_split(start_acc[m], split_of)[s] for m in methods}
                      for s in splits}
  results["markdown"] = _markdown(results)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    results["png"] = plots.plot_fewshot(results, os.path.join(out_dir, "fewshot.png"))
    io_lib.atomic_write_bytes(os.path.join(out_dir, "fewshot.md"), results["markdown"].encode())
  return results
