"""Weight enhancement: noise an existing net to level t, denoise it with its task's text.

Enhancement can only help where the generator's estimate for the text is better than the
net it is given, so it is measured on the inputs where that can hold and on one where it
cannot, per task of the unseen and held-out splits:

* ``few_shot_1`` / ``few_shot_5``: the generalist fine-tuned on 1 or 5 images per class,
  early-stopped on the shots alone (``fewshot.shot_data``);
* ``partial_10`` / ``partial_25``: the task's specialist stopped at 10 % / 25 % of the
  steps its corpus run kept (same recipe, seed and schedule: ``finetune.train_for``);
* ``converged``: the task's specialist (its corpus row).

Each is compared with what a user could do without the enhancement chain, each family with
its own setting grid:

* ``denoise``: ``api.enhance_flat`` over noise levels t and DDIM step counts (t = 0 is
  the net itself);
* ``noise``: the same noise added, not denoised;
* ``interpolate``: w + a (g − w) toward the one-step generated net g (a = 0: the net);
* ``nn_average``: the net averaged with its m nearest seen corpus nets by text (m = 0:
  the net).

A family's setting is chosen per input kind on the *selection* tasks (every other task of
each split) by accuracy on their validation rows, and reported on the other half of the
tasks by test accuracy, paired with the input net. The chosen ``denoise`` t is the
documented default per kind of net.
"""
import logging
import os
from typing import Sequence

import jax
import numpy as np

from t2w_jax import api
from t2w_jax import io as io_lib
from t2w_jax.evaluate import baselines
from t2w_jax.evaluate import fewshot as fewshot_lib
from t2w_jax.evaluate import finetune
from t2w_jax.evaluate import plots
from t2w_jax.evaluate import registry
from t2w_jax.evaluate import report
from t2w_jax.zoo import masstrain

INPUTS = ("few_shot_1", "few_shot_5", "partial_10", "partial_25", "converged")
DEFAULT_T = (0, 5, 10, 25, 50, 100, 200, 400, 700)
CHAIN_STEPS = (1, 5)
INTERPOLATE = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
NN_COUNTS = (0, 1, 3, 7)
FAMILIES = ("denoise", "noise", "interpolate", "nn_average")


def input_nets(ctx, tasks, rows, inputs: Sequence[str], *, few_shot_steps: int = 500,
               shot_seed: int = 0) -> dict:
  """{input kind: (n, D)} the nets to enhance for ``tasks`` (corpus ``rows``)."""
  trainer = ctx.corpus.meta["trainer"]
  layout, n = ctx.corpus.layout, len(tasks)
  ids, mask = ctx.padded(tasks)
  seeds = np.array([t.seed for t in tasks], np.uint32)
  base = np.repeat(np.asarray(ctx.corpus.base, np.float32)[None], n, 0)
  recipe = dict(batch_size=int(trainer["batch_size"]),
                learning_rate=float(trainer["learning_rate"]),
                nets_per_chunk=ctx.corpus_trainer_shape.nets_per_chunk)
  out = {}
  for kind in inputs:
    if kind == "converged":
      out[kind] = np.asarray(ctx.corpus.weights[list(rows)], np.float32)
    elif kind.startswith("partial_"):
      frac = int(kind.split("_")[1]) / 100
      kept = np.array([ctx.corpus.records[r]["steps"] for r in rows])
      spec = masstrain.TrainerSpec(steps=int(trainer["steps"]), **recipe)
      out[kind] = finetune.train_for(ctx.model, spec, layout, ctx.data, base, ids, mask,
                                     seeds, np.round(frac * kept).astype(np.int32))
    elif kind.startswith("few_shot_"):
      k = int(kind.split("_")[2])
      spec = masstrain.TrainerSpec(steps=int(few_shot_steps), eval_every=25,
                                   patience=int(trainer.get("patience", 5)), **recipe)
      out[kind], _ = finetune.train_early_stopped(
          ctx.model, spec, layout, fewshot_lib.shot_data(ctx.data, k, int(shot_seed)), base,
          ids, mask, seeds)
    else:
      raise ValueError(f"unknown input kind {kind!r}; known: {list(INPUTS)}")
  return out


def _settings(t_grid, chain_steps, interpolate, nn_counts):
  """[(family, label, params)] of every setting measured, the identity first per family."""
  out = []
  for t in t_grid:
    for s in (chain_steps if t > 0 else chain_steps[:1]):
      label = f"t={t}" if t == 0 else f"t={t}, {s} step" + ("s" if s > 1 else "")
      out.append(("denoise", label, (t, s)))
  out += [("noise", f"t={t}", (t,)) for t in t_grid]
  out += [("interpolate", f"a={a:g}", (a,)) for a in interpolate]
  out += [("nn_average", f"m={m}", (m,)) for m in nn_counts]
  return out


def _markdown(results: dict) -> str:
  lines = [f"### Weight enhancement ({results['num_select']} selection + "
           f"{results['num_report']} report tasks of {', '.join(results['splits'])}; "
           "settings chosen on the selection tasks' validation rows, test accuracy % on "
           "the report tasks)", "",
           "| input | before | " + " | ".join(f"{f} (setting): after, − before" for f in
                                             results["families"]) + " |",
           "|---" * (2 + len(results["families"])) + "|"]
  for kind, r in results["inputs"].items():
    cells = []
    for f in results["families"]:
      c = r["chosen"][f]
      d = c["vs_input"]
      se = "" if d["se"] is None else f" ± {100 * d['se']:.1f}"
      cells.append(f"{c['setting']}: {100 * c['test']:.1f}, {100 * d['mean']:+.1f}{se}")
    lines.append(f"| {kind} | {100 * r['before']:.1f} | " + " | ".join(cells) + " |")
  lines += ["", "Sweep (report tasks, test accuracy %; denoise = DDIM from t, noise = the "
            "noised net itself):", "",
            "| setting | " + " | ".join(results["inputs"]) + " |",
            "|---" * (1 + len(results["inputs"])) + "|"]
  for i, (fam, label) in enumerate(results["settings"]):
    cells = [f"{100 * r['sweep'][i]:.1f}" for r in results["inputs"].values()]
    lines.append(f"| {fam} {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


@registry.register("enhance", needs_generator=True)
def enhance(ctx, rng, *, splits: Sequence[str] = ("unseen", "heldout"), num_tasks: int = 6,
            inputs: Sequence[str] = INPUTS, t: Sequence[int] = DEFAULT_T,
            chain_steps: Sequence[int] = CHAIN_STEPS,
            interpolate: Sequence[float] = INTERPOLATE,
            nn_counts: Sequence[int] = NN_COUNTS, few_shot_steps: int = 500,
            shot_seed: int = 0, guidance: float | None = None,
            out_dir: str | None = None) -> dict:
  """Enhancement of few-shot, under-trained and converged nets against what a user could do
  without it; one setting per family and input kind chosen on held-apart tasks.

  Args:
    ctx: the ``EvalContext`` (with a generator).
    rng: PRNG key (the noise, the generated nets).
    splits: the corpus splits whose first ``num_tasks`` tasks are used; within each split
      even positions select settings and odd positions are reported.
    num_tasks: tasks per split (at least 2).
    inputs: input kinds among ``INPUTS``.
    t: noise levels (0 is the net itself; values above the generator's T are dropped
      with a warning).
    chain_steps: DDIM step counts from each t.
    interpolate: weights a toward the one-step generated net.
    nn_counts: numbers m of nearest seen corpus nets averaged in.
    few_shot_steps: the step cap of the few-shot inputs.
    shot_seed: which images are the shots.
    guidance: the chain's guidance; None: the generator's.
    out_dir: where enhancement.md/.png go; None: no files written.

  Returns:
    JSON-ready dict: splits, skipped_inputs (few-shot kinds the data has too few images
    for), num_select, num_report, families, settings [(family, label)],
    inputs {kind: {before, before_select_val, sweep (report test accuracy per setting),
    chosen {family: {setting, index, val, test, vs_input (paired)}}}}, default_t {kind:
    label}, markdown, png.
  """
  gen = ctx.gen
  if gen is None:
    raise ValueError("enhance needs a trained generator in the context")
  if gen.layout.fingerprint() != ctx.corpus.layout.fingerprint():
    raise ValueError("the generator was trained for another net layout than the corpus's")
  num_t = int(gen.config["num_timesteps"])
  kept_t = [int(x) for x in t if 0 <= int(x) <= num_t]
  if len(kept_t) < len(t):
    logging.warning("enhance: dropped noise levels outside [0, %d]: %s", num_t,
                    sorted(set(int(x) for x in t) - set(kept_t)))
  if not kept_t:
    raise ValueError(f"no enhancement noise level left in [0, {num_t}] from {list(t)}")
  if int(num_tasks) < 2:
    raise ValueError(f"num_tasks must be >= 2 (half select, half report), got {num_tasks}")
  splits, inputs = list(splits), list(inputs)
  rows, role = [], []
  for s in splits:
    r = ctx.rows(s, int(num_tasks))
    rows += [int(x) for x in r]
    role += ["select" if i % 2 == 0 else "report" for i in range(len(r))]
  role = np.array(role)
  if not (role == "report").any() or not (role == "select").any():
    raise ValueError(f"need at least 2 tasks in the splits {splits}")
  tasks = ctx.tasks(rows)
  # A few-shot input needs k training images in every class of every task (a small or
  # mocked dataset may have fewer): such inputs are left out, with a warning.
  ids, valid = ctx.padded(tasks)
  fewest = int(np.asarray(ctx.data.class_count)[ids[valid]].min())
  short = [k for k in inputs if k.startswith("few_shot_") and int(k.split("_")[2]) > fewest]
  if short:
    logging.warning("enhance: %s left out: a class has only %d training images", short, fewest)
    inputs = [k for k in inputs if k not in short]
  if not inputs:
    raise ValueError(f"no input kind left to enhance (a class has only {fewest} images)")
  n, m = len(tasks), len(inputs)
  nets = input_nets(ctx, tasks, rows, inputs, few_shot_steps=few_shot_steps,
                    shot_seed=shot_seed)
  x = np.concatenate([nets[k] for k in inputs])  # (m * n, D), input kind major
  all_tasks = tasks * m
  emb, mask = ctx.class_text(all_tasks)
  gen_rng, noise_rng = jax.random.split(rng)
  # The one-step generated net of each task (the embeddings of its first copy).
  g = np.tile(np.asarray(api.sample_flat(gen, emb[:n], mask[:n], rng=gen_rng, steps=1)),
              (m, 1))
  nn = np.tile(baselines.nearest_seen_weights(ctx, tasks, count=max(max(nn_counts), 1)),
               (m, 1, 1))
  settings = _settings(kept_t, [int(s) for s in chain_steps],
                       [float(a) for a in interpolate], [int(c) for c in nn_counts])
  sel, rep = np.tile(role == "select", m), np.tile(role == "report", m)
  sel_tasks = [tk for tk, s in zip(all_tasks, sel) if s]
  val = np.zeros((len(settings), m, int((role == "select").sum())))
  test = np.zeros((len(settings), m, n))
  noised = {}
  for i, (fam, _, p) in enumerate(settings):
    if fam == "denoise":
      den, noi = api.enhance_flat(gen, x, emb, mask, t=p[0], steps=p[1], guidance=guidance,
                                  rng=jax.random.fold_in(noise_rng, p[0]))
      out, noised[p[0]] = np.asarray(den), np.asarray(noi)
    elif fam == "noise":
      out = noised[p[0]]  # the same noise as the chain started from
    elif fam == "interpolate":
      out = x + p[0] * (g - x)
    else:
      out = (x + nn[:, :p[0]].sum(1)) / (p[0] + 1)
    test[i] = ctx.accuracy(out, all_tasks).reshape(m, n)
    val[i] = ctx.accuracy(out[sel], sel_tasks, split="val").reshape(m, -1)
  before_val = ctx.accuracy(x[sel], sel_tasks, split="val").reshape(m, -1)
  before = ctx.accuracy(x, all_tasks).reshape(m, n)

  families = [f for f in FAMILIES if any(s[0] == f for s in settings)]
  results = {"splits": splits, "skipped_inputs": short,
             "num_select": int((role == "select").sum()),
             "num_report": int((role == "report").sum()), "families": families,
             "settings": [(f, label) for f, label, _ in settings], "inputs": {},
             "default_t": {}}
  r_idx = role == "report"
  for j, kind in enumerate(inputs):
    chosen = {}
    for f in families:
      idx = [i for i, s in enumerate(settings) if s[0] == f]
      best = idx[int(np.argmax([val[i, j].mean() for i in idx]))]  # ties: the first listed
      chosen[f] = {"setting": settings[best][1], "index": best,
                   "val": float(val[best, j].mean()), "test": float(test[best, j, r_idx].mean()),
                   "vs_input": report.paired_difference(test[best, j, r_idx].tolist(),
                                                        before[j, r_idx].tolist())}
    results["inputs"][kind] = {
        "before": float(before[j, r_idx].mean()), "before_select_val": float(before_val[j].mean()),
        "sweep": test[:, j, r_idx].mean(-1).tolist(), "chosen": chosen}
    results["default_t"][kind] = chosen["denoise"]["setting"] if "denoise" in chosen else None
  results["markdown"] = _markdown(results)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    results["png"] = plots.plot_enhancement(results, os.path.join(out_dir, "enhancement.png"))
    io_lib.atomic_write_bytes(os.path.join(out_dir, "enhancement.md"),
                              results["markdown"].encode())
  logging.info("enhance:\n%s", results["markdown"])
  return results
