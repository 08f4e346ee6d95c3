"""Few labelled images: the shot-conditioned net against everything a user could do instead.

For each task of the splits and k shots per class (drawn once per class, seeded, shared by
every method, so all comparisons are paired on the same tasks and the same images):

* zero-shot: the generated net and the plain hypernetwork's net (no image used);
* the generator's shot-conditioned net (``t2w_jax.shots``) under each prior asked for:
  "diffusion" (the generator's own denoiser as the prior), "l2" (its deterministic
  counterpart, a pull toward the zero-shot net) and "none" (plain refinement in token
  space);
* fine-tuning on the shots by ``api.few_shot`` (its batched core ``api.few_shot_flat``:
  the corpus trainer's recipe, early-stopped on a fifth of the shots it holds out itself)
  from the zero-shot generated net above, the hypernetwork's net and the nearest corpus
  net, each handed to it as ``init``, one key per task shared by the starts;
* the specialist (trained on all of the task's training images) as the ceiling, and the
  generalist.

Every choice (which refinement check, which fine-tuning check) is made on the shots: a fifth
of each class's shots validate (``data.tasks.shot_split``; a single shot validates itself;
``api.few_shot`` draws its own fifth).
No test image is used for any choice.
"""
import inspect
import logging
import os
from typing import Sequence

import jax
import numpy as np

from t2w_jax import api
from t2w_jax import io as io_lib
from t2w_jax import shots as shots_lib
from t2w_jax import task_loss as task_loss_lib
from t2w_jax.evaluate import baselines
from t2w_jax.evaluate import fewshot
from t2w_jax.evaluate import hypernet as hypernet_lib
from t2w_jax.evaluate import registry
from t2w_jax.evaluate import report
from t2w_jax.zoo import family as family_lib
from t2w_jax.zoo import masstrain


def task_shots(data: masstrain.DeviceData, ids: np.ndarray, mask: np.ndarray) -> shots_lib.Shots:
  """The ``Shots`` of n tasks from a k-shot ``DeviceData`` (``fewshot.shot_data``).

  Each task's images are its classes' training shots then their validation shots (for one
  shot per class, the same image twice: it trains and validates), labelled by class slot;
  padded class slots weigh 0.
  """
  ci, vi = np.asarray(data.class_index), np.asarray(data.val_index)
  n, kmax = ids.shape
  nt, nv = ci.shape[1], vi.shape[1]
  rows = np.concatenate([ci[ids], vi[ids]], axis=2).reshape(n, -1)     # (n, K*(nt+nv))
  labels = np.broadcast_to(np.arange(kmax)[None, :, None], (n, kmax, nt + nv))
  is_val = np.zeros((n, kmax, nt + nv), bool)
  is_val[:, :, nt:] = True
  valid = np.repeat(mask[:, :, None], nt + nv, 2)
  labels, is_val, valid = (a.reshape(n, -1) for a in (labels, is_val, valid))
  train_w = np.stack([shots_lib.balanced_weights(labels[i], valid[i] & ~is_val[i])
                      for i in range(n)])
  val_w = np.stack([shots_lib.balanced_weights(labels[i], valid[i] & is_val[i])
                    for i in range(n)])
  images = np.asarray(data.images)[rows]
  # One shot per class: the validation "shots" are the training ones (nothing held out).
  held_out = np.full((n,), not np.array_equal(ci, vi))
  return shots_lib.Shots(images, labels.astype(np.int32), train_w, val_w, held_out)


def hypernet_defaults() -> dict:
  """The hypernetwork evaluator's training options (its signature is their one home)."""
  sig = inspect.signature(hypernet_lib.evaluate_hypernet)
  keep = inspect.signature(hypernet_lib.train_hypernet).parameters
  return {k: p.default for k, p in sig.parameters.items()
          if k in keep and p.default is not inspect.Parameter.empty}


def _markdown(res: dict) -> str:
  splits, methods = res["splits"], res["methods"]
  lines = [f"### Few labelled images (test accuracy %, mean over tasks; {res['n_tasks']} "
           "tasks per split)", "",
           "| k | " + " | ".join(f"{m} ({s})" for m in methods for s in splits) + " |",
           "|---" * (1 + len(methods) * len(splits)) + "|"]
  for k, r in res["per_k"].items():
    cells = [f"{100 * r['acc'][s][m]['mean']:.1f}" for m in methods for s in splits]
    lines.append(f"| {k} | " + " | ".join(cells) + " |")
  ref = res["reference"]
  lines += ["", f"{ref} minus each method, paired by task (points, mean ± s.e., tasks won):",
            "", "| k | " + " | ".join(f"− {m} ({s})" for m in methods if m != ref
                                       for s in splits) + " |",
            "|---" * (1 + (len(methods) - 1) * len(splits)) + "|"]
  for k, r in res["per_k"].items():
    cells = []
    for m in methods:
      if m == ref:
        continue
      for s in splits:
        d = r["paired"][s][m]
        se = "" if d["se"] is None else f" ± {100 * d['se']:.1f}"
        cells.append(f"{100 * d['mean']:+.1f}{se} ({d['wins']}/{d['n']})")
    lines.append(f"| {k} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


@registry.register("shots")
def shots_study(ctx, rng, *, splits: Sequence[str] = ("unseen", "heldout"),
                num_tasks: int = 48, shots: Sequence[int] = (1, 5, 20),
                priors: Sequence[str] = ("diffusion", "l2", "none"),
                prior_weight: float = shots_lib.DEFAULTS.prior_weight,
                refine_steps: int = shots_lib.DEFAULTS.steps,
                check_every: int = shots_lib.DEFAULTS.check_every,
                learning_rate: float = shots_lib.DEFAULTS.learning_rate,
                t_range: Sequence[float] = shots_lib.DEFAULTS.t_range,
                finetune_starts: Sequence[str] = ("generated", "hypernet", "nearest"),
                train_steps: int = api.FEW_SHOT.max_steps,
                eval_every: int = api.FEW_SHOT.eval_every, shot_seed: int = 0,
                hypernet_options: dict | None = None, with_hypernet: bool = True,
                score_split: str = "test", out_dir: str | None = None) -> dict:
  """The shot-conditioned net against zero-shot nets and fine-tuning, paired.

  Args:
    ctx: the ``EvalContext`` (needs a generator).
    rng: PRNG key (generation, hypernetwork training, refinement).
    splits / num_tasks: the first ``num_tasks`` tasks of each split.
    shots: shots per class.
    priors: the shot-conditioned variants (``shots.PRIORS``); the first is the reference
      of the paired table.
    prior_weight, refine_steps, check_every, learning_rate, t_range: ``shots.ShotConfig``.
    finetune_starts: nets fine-tuned on the shots ("generated", "hypernet", "nearest").
    train_steps, eval_every: ``api.few_shot``'s max_steps and eval_every (its own
      settings otherwise, as in the few-shot study).
    shot_seed: which images are the shots.
    hypernet_options: overrides of the hypernetwork evaluator's training options.
    with_hypernet: train the hypernetwork and compare with it (zero-shot and fine-tuned).
    score_split: "test", or "val" to score every method on the tasks' validation rows
      (training images no net trained on), for choosing settings on seen tasks without
      touching a test image.
    out_dir: where shots.md goes; None: nothing written.

  Returns:
    JSON-ready dict: splits, task_ids, methods, reference, hypernet (training info), per_k
    {k: {acc {split: {method: {mean, per_task}}}, paired {split: {method: reference −
    method}}, kept_check {prior: mean}}}, markdown.
  """
  if ctx.gen is None:
    raise ValueError("the shots study needs a trained generator in the context")
  splits, priors = list(splits), list(priors)
  rows = {s: ctx.rows(s, int(num_tasks)) for s in splits}
  tasks = [t for s in splits for t in ctx.tasks(rows[s])]
  split_of = np.array([t.split for t in tasks])
  n = len(tasks)
  k_gen, k_hyp, k_ref = jax.random.split(rng, 3)
  emb, mask = ctx.class_text(tasks)
  ids, _ = ctx.padded(tasks)
  gen = ctx.gen
  spec = gen.spec
  z_gen = shots_lib.to_tokens(spec, api.sample_flat(gen, emb, mask, rng=k_gen))
  nets0 = {"generated": np.asarray(shots_lib.from_tokens(spec, z_gen))}
  hyp_info = None
  if with_hypernet:
    opts = dict(hypernet_defaults(), **(hypernet_options or {}))
    hyp_params, hyp_model, hyp_info = hypernet_lib.train_hypernet(ctx, k_hyp, **opts)
    base = np.asarray(ctx.corpus.base, np.float32)
    nets0["hypernet"] = base[None] + np.asarray(
        jax.jit(hyp_model.apply)({"params": hyp_params}, emb, mask))
  else:
    finetune_starts = [s for s in finetune_starts if s != "hypernet"]
  if "nearest" in finetune_starts:
    nets0["nearest"] = baselines.nearest_seen_weights(ctx, tasks)[:, 0]
  model = task_loss_lib.subtask_model(spec.cnn, spec.text_dim)
  refiners = {p: shots_lib.make_refiner(spec, model, shots_lib.ShotConfig(
      p, float(prior_weight), int(refine_steps), int(check_every), float(learning_rate),
      tuple(float(t) for t in t_range))) for p in priors}
  # One key per task for api.few_shot, shared by its starts (they train on the same batches).
  ft_keys = list(jax.random.split(jax.random.fold_in(rng, 3), n))
  names = [[ctx.corpus.class_names[c] for c in t.class_ids] for t in tasks]
  ft_settings = dict(max_steps=int(train_steps), eval_every=int(eval_every),
                     nets_per_chunk=int(ctx.corpus_trainer_shape.nets_per_chunk))
  zero_shot = [m for m in ("generated", "hypernet") if m in nets0]
  references = ["specialist", "generalist"] if score_split == "test" else []
  methods = [f"shots:{p}" for p in priors] + zero_shot + [
      f"{s}+finetune" for s in finetune_starts] + references
  res = {"splits": splits, "n_tasks": int(num_tasks), "methods": methods,
         "reference": methods[0], "hypernet": hyp_info,
         "task_ids": {s: [t.task_id for t in tasks if t.split == s] for s in splits},
         "per_k": {}}
  if score_split not in ("test", "val"):
    raise ValueError(f"score_split must be 'test' or 'val', got {score_split!r}")
  if finetune_starts and family_lib.family_of(ctx.corpus.meta["model"]) != "cnn":
    raise ValueError("the fine-tuning comparators run api.few_shot on images; this context "
                     "holds an adapter-family corpus's trunk features: pass finetune_starts=()")
  if score_split == "val" and finetune_starts:
    raise ValueError("the fine-tuning comparators are scored on test images only; pass "
                     "finetune_starts=() with score_split='val'")
  fixed = {m: ctx.accuracy(nets0[m], tasks, score_split) for m in zero_shot}
  if references:
    fixed["specialist"] = np.concatenate([ctx.reference_accuracy("oracle", rows[s])
                                          for s in splits])
    fixed["generalist"] = np.concatenate([ctx.reference_accuracy("generalist", rows[s])
                                          for s in splits])
  for k in [int(k) for k in shots]:
    data = fewshot.shot_data(ctx.data, k, int(shot_seed))
    sh = task_shots(data, ids, mask)
    acc = dict(fixed)
    kept = {}
    for p, refine in refiners.items():
      z, info = refine(gen.params, z_gen, emb, mask, sh, jax.random.fold_in(k_ref, k))
      acc[f"shots:{p}"] = ctx.accuracy(np.asarray(shots_lib.from_tokens(spec, z)), tasks,
                                       score_split)
      kept[p] = float(np.mean(np.asarray(info["kept_check"])) * int(check_every))
    if finetune_starts:
      images, labels = fewshot.task_images(ctx, tasks, k, int(shot_seed))
      for s in finetune_starts:
        out = api.few_shot_flat(gen, names, images, labels, rngs=ft_keys,
                                inits=[spec.layout.unflatten(w) for w in nets0[s]],
                                **ft_settings)
        acc[f"{s}+finetune"] = ctx.accuracy(out["params"], tasks)
    r = {"acc": {}, "paired": {}, "kept_check_step": kept}
    for s in splits:
      sel = split_of == s
      r["acc"][s] = {mm: {"mean": float(acc[mm][sel].mean()),
                          "per_task": np.asarray(acc[mm][sel]).tolist()} for mm in methods}
      r["paired"][s] = {mm: report.paired_difference(acc[methods[0]][sel].tolist(),
                                                    np.asarray(acc[mm][sel]).tolist())
                        for mm in methods[1:]}
    res["per_k"][str(k)] = r
    logging.info("shots k=%d: %s", k, ", ".join(
        f"{mm} {np.mean(acc[mm]):.3f}" for mm in methods))
  res["markdown"] = _markdown(res)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    io_lib.atomic_write_bytes(os.path.join(out_dir, "shots.md"), res["markdown"].encode())
  return res
