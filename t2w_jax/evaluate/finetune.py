"""Fine-tune curves: test accuracy against steps when fine-tuning from different inits.

A generated net is only worth having if it is a better start than what a user already has.
On unseen tasks this fine-tunes, with the corpus trainer's recipe (``zoo/masstrain.py``:
Adam, class-balanced batches drawn on the device, the task's own seed), from

* ``generated``: the net the generator makes from the task's text;
* ``base``: the shared base net every corpus net was fine-tuned from;
* ``random``: a fresh random init of the subtask CNN,

and records test accuracy every ``eval_every`` steps. All methods use the same seed per
task, so they see the same batches and differ only in where they start. Fine-tuning from
``base`` for the corpus trainer's step count reproduces the task's corpus (oracle) net.

Nets are trained side by side: ``vmap`` over a chunk of nets, ``lax.map`` over chunks, a
``lax.scan`` over evaluation segments around a ``lax.scan`` over steps: one compiled call.
"""
import csv
import functools
import io
import logging
import os
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t2w_jax import api
from t2w_jax import io as io_lib
from t2w_jax.evaluate import plots
from t2w_jax.evaluate import registry
from t2w_jax.weights import ParamLayout
from t2w_jax.zoo import masstrain
from t2w_jax.zoo.cnn import SubtaskCNN
from t2w_jax.zoo.cnn import init_params

METHODS = ("generated", "generalist", "random")


class Curves(NamedTuple):
  """What ``train_curves`` measured, as numpy arrays over n nets and S + 1 checks.

  test: (n, S + 1) test accuracy at steps 0, eval_every, ..., steps.
  final: (n, D) the weights after the last step.
  """
  test: np.ndarray
  final: np.ndarray


def _curve_one(model: SubtaskCNN, spec: masstrain.TrainerSpec, layout: ParamLayout,
               eval_every: int, data, init_flat, classes, mask, seed):
  """Fine-tunes one net from ``init_flat``: (test acc (S+1,), final).

  The step and its per-step keys are the corpus trainer's (``masstrain.train_step_fn``,
  ``masstrain.step_keys``), scanned in segments with an accuracy measurement after each.
  """
  params0 = layout.unflatten(init_flat)
  step = masstrain.train_step_fn(model, spec, data, classes, mask)

  def accuracy(params):
    return masstrain.task_accuracy(model, data, params, classes, mask)

  def segment(carry, seg_keys):
    carry, _ = jax.lax.scan(step, carry, seg_keys)
    return carry, accuracy(carry[0])

  keys = masstrain.step_keys(seed, spec.steps)
  keys = keys.reshape((spec.steps // eval_every, eval_every) + keys.shape[1:])
  init = (params0, masstrain.optimizer(spec).init(params0))
  (params, _), accs = jax.lax.scan(segment, init, keys)
  return jnp.concatenate([accuracy(params0)[None], accs]), layout.flatten(params)


def _check_nets(layout: ParamLayout, init_flat, classes, mask, seeds):
  """The per-net arrays as numpy, with their shapes checked against each other."""
  init_flat = np.asarray(init_flat, np.float32)
  classes, mask = np.asarray(classes, np.int32), np.asarray(mask, bool)
  seeds = np.asarray(seeds, np.uint32)
  n = init_flat.shape[0]
  if (init_flat.shape[1:] != (layout.total,) or classes.shape[0] != n or mask.shape != classes.shape
      or seeds.shape != (n,)):
    raise ValueError(f"need (n, {layout.total}) inits with n tasks and seeds; got inits "
                     f"{init_flat.shape}, classes {classes.shape}, mask {mask.shape}, "
                     f"seeds {seeds.shape}")
  return init_flat, classes, mask, seeds


def _run_chunked(one, nets_per_chunk: int, data, *arrays):
  """``one(data, *per_net)`` over n nets: ``vmap`` over chunks of nets, ``lax.map`` over
  chunks, one compiled call; outputs reshaped back to a leading n axis (numpy)."""
  n = arrays[0].shape[0]
  c = max(1, min(nets_per_chunk, n))
  pad = -n % c

  def padded(a):  # repeat the last net: a fixed chunk shape, one compile
    return np.concatenate([a, np.repeat(a[-1:], pad, 0)]) if pad else a

  args = [padded(a).reshape((-1, c) + a.shape[1:]) for a in arrays]
  chunk_fn = jax.vmap(one, in_axes=(None,) + (0,) * len(args))

  @jax.jit
  def run(d, *chunks):
    return jax.lax.map(lambda a: chunk_fn(d, *a), chunks)

  out = run(data, *args)
  return jax.tree.map(lambda a: np.asarray(a).reshape((-1,) + a.shape[2:])[:n], out)


def train_curves(model: SubtaskCNN, spec: masstrain.TrainerSpec, layout: ParamLayout, data,
                 init_flat, classes, mask, seeds, *, eval_every: int) -> Curves:
  """Fine-tunes n nets from given inits, measuring test accuracy every ``eval_every`` steps.

  Args:
    model: the subtask CNN (``conv_impl="im2col"`` survives vmap on CPU).
    spec: the trainer recipe; ``spec.steps`` steps, ``spec.nets_per_chunk`` nets per vmap.
    layout: the flat layout of the nets.
    data: ``masstrain.DeviceData`` (its ``class_index`` is what the nets train on).
    init_flat: (n, D) initial weights, one net per task.
    classes / mask: (n, K) global class ids and validity mask of each net's task.
    seeds: (n,) per-net seeds (the task's corpus seed reproduces the corpus trainer).
    eval_every: steps between measurements; must divide ``spec.steps``.

  Returns:
    ``Curves``.

  Raises:
    ValueError: inconsistent shapes, or eval_every not dividing the step count.
  """
  if eval_every < 1 or spec.steps < 1 or spec.steps % eval_every:
    raise ValueError(f"eval_every={eval_every} must be >= 1 and divide steps={spec.steps}")
  arrays = _check_nets(layout, init_flat, classes, mask, seeds)
  one = functools.partial(_curve_one, model, spec, layout, eval_every)
  test, final = _run_chunked(one, spec.nets_per_chunk, data, *arrays)
  return Curves(test, final)


def train_for(model: SubtaskCNN, spec: masstrain.TrainerSpec, layout: ParamLayout, data,
              init_flat, classes, mask, seeds, num_steps) -> np.ndarray:
  """The nets after their first ``num_steps[i]`` steps of the recipe: (n, D) weights.

  The learning-rate schedule runs over ``spec.steps`` whatever the count, so with the
  corpus trainer's spec, the generalist as init and the task's seed, net i is the corpus
  trainer's net for that task at step ``num_steps[i]`` (an under-trained specialist).
  """
  arrays = _check_nets(layout, init_flat, classes, mask, seeds)
  num_steps = np.asarray(num_steps, np.int32)
  if num_steps.shape != (arrays[0].shape[0],) or num_steps.min(initial=0) < 0 or (
      num_steps.max(initial=0) > spec.steps):
    raise ValueError(f"need one step count in [0, {spec.steps}] per net, got {num_steps}")
  run_steps = max(int(num_steps.max(initial=0)), 1)

  def one(d, init, classes, mask, seed, stop):
    step = masstrain.train_step_fn(model, spec, d, classes, mask)
    params0 = layout.unflatten(init)

    def body(carry, xs):
      i, key = xs
      new, _ = step(carry, key)
      # A net past its own count stays frozen while the others of its chunk go on.
      return jax.tree.map(lambda a, b: jnp.where(i < stop, a, b), new, carry), None

    keys = masstrain.step_keys(seed, spec.steps)[:run_steps]
    (params, _), _ = jax.lax.scan(body, (params0, masstrain.optimizer(spec).init(params0)),
                                  (jnp.arange(run_steps), keys))
    return layout.flatten(params)

  return _run_chunked(one, spec.nets_per_chunk, data, *arrays, num_steps)


def train_early_stopped(model: SubtaskCNN, spec: masstrain.TrainerSpec, layout: ParamLayout,
                        data, init_flat, classes, mask, seeds) -> tuple[np.ndarray, np.ndarray]:
  """n nets trained from their own inits by the corpus trainer's early-stopped loop
  (``masstrain.train_one``; ``spec.eval_every`` > 0): ((n, D) kept nets, (n,) kept steps)."""
  if not spec.eval_every:
    raise ValueError("train_early_stopped needs a spec with eval_every > 0")
  arrays = _check_nets(layout, init_flat, classes, mask, seeds)

  def one(d, init, classes, mask, seed):
    fit = masstrain.train_one(model, spec, d, layout.unflatten(init), classes, mask, seed)
    return layout.flatten(fit.params), fit.steps

  return _run_chunked(one, spec.nets_per_chunk, data, *arrays)


def random_inits(model: SubtaskCNN, layout: ParamLayout, image_size: int, rng,
                 n: int) -> np.ndarray:
  """(n, D) fresh random inits of the subtask CNN (its own initialisers)."""
  keys = jax.random.split(rng, n)
  # Under jit: an eager vmap of init dispatches op by op (seconds on a busy CPU).
  fn = jax.jit(jax.vmap(lambda k: layout.flatten(init_params(model, k, image_size))))
  return np.asarray(fn(keys))


def curves_csv(results: dict) -> str:
  """The curves as CSV text: step, method, mean_acc, std_acc, num_tasks."""
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["step", "method", "mean_acc", "std_acc", "num_tasks"])
  for method, c in results["curves"].items():
    for s, m, sd in zip(results["steps"], c["mean"], c["std"]):
      w.writerow([s, method, f"{m:.6f}", f"{sd:.6f}", results["num_tasks"]])
  return buf.getvalue()


def _markdown(results: dict) -> str:
  steps = results["steps"]
  cols = sorted({0, steps[len(steps) // 4], steps[len(steps) // 2], steps[-1]})
  idx = [steps.index(s) for s in cols]
  head = "| init | " + " | ".join(f"step {s}" for s in cols) + " |"
  lines = [f"### Fine-tune curves ({results['num_tasks']} {results['split']} tasks, "
           "test accuracy mean ± std)", "", head, "|---" * (len(cols) + 1) + "|"]
  for method, c in results["curves"].items():
    cells = [f"{c['mean'][i]:.3f} ± {c['std'][i]:.3f}" for i in idx]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


@registry.register("finetune")
def finetune_curves(ctx, rng, *, split: str = "unseen", num_tasks: int = 6,
                    methods: Sequence[str] = METHODS, train_steps: int | None = None,
                    batch_size: int | None = None, learning_rate: float | None = None,
                    nets_per_chunk: int | None = None, eval_every: int = 25,
                    steps: int | None = None, guidance: float | None = None,
                    sampler: str | None = None, out_dir: str | None = None) -> dict:
  """Fine-tune curves from the generated net, the generalist and a random init.

  Args:
    ctx: the ``EvalContext``.
    rng: PRNG key (generation and the random inits).
    split: the corpus split whose tasks are fine-tuned on.
    num_tasks: its first ``num_tasks`` tasks.
    methods: starting points among ``METHODS``; "generated" is skipped with a warning when
      the context has no generator.
    train_steps, batch_size, learning_rate, nets_per_chunk: the fine-tuning recipe; None:
      the corpus trainer's.
    eval_every: test accuracy every this many steps (must divide the step count).
    steps, guidance, sampler: sampling of the generated starts; None: the generator's
      defaults.
    out_dir: where finetune_curves.csv/.png go; None: no files written.

  Returns:
    JSON-ready dict: split, num_tasks, eval_every, steps (list), curves {method: {mean,
    std}}, initial / final {method: mean acc}, per_task {task_ids, initial / final {method:
    [acc per task]}}, per_task_curves {method: [task][step index]}, csv / png paths (when
    written) and markdown.
  """
  trainer = ctx.corpus.meta["trainer"]
  rows = ctx.rows(split, int(num_tasks))
  if len(rows) == 0:
    raise ValueError(f"the corpus has no {split!r} tasks to fine-tune on")
  tasks = ctx.tasks(rows)
  methods = list(methods)
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    raise ValueError(f"unknown fine-tune methods {unknown}; known: {list(METHODS)}")
  if "generated" in methods and ctx.gen is None:
    logging.warning("finetune: no generator in the context; skipping the 'generated' curve")
    methods.remove("generated")
  if "generated" in methods and ctx.gen.layout.fingerprint() != ctx.corpus.layout.fingerprint():
    raise ValueError("the generator was trained for another net layout than the corpus's")
  spec = masstrain.TrainerSpec(
      steps=int(trainer["steps"] if train_steps is None else train_steps),
      batch_size=int(trainer["batch_size"] if batch_size is None else batch_size),
      learning_rate=float(trainer["learning_rate"] if learning_rate is None
                          else learning_rate),
      nets_per_chunk=int(ctx.corpus_trainer_shape.nets_per_chunk
                         if nets_per_chunk is None else nets_per_chunk))
  eval_every = int(eval_every)
  layout, n = ctx.corpus.layout, len(tasks)
  gen_rng, init_rng = jax.random.split(rng)

  inits = {}
  for method in methods:
    if method == "generated":
      emb, mask = ctx.class_text(tasks)
      inits[method] = np.asarray(api.sample_flat(
          ctx.gen, emb, mask, rng=gen_rng, steps=steps, guidance=guidance, sampler=sampler))
    elif method == "generalist":
      inits[method] = np.repeat(np.asarray(ctx.corpus.base, np.float32)[None], n, 0)
    else:
      inits[method] = random_inits(ctx.model, layout, int(ctx.corpus.meta["image_size"]),
                                   init_rng, n)
  ids, mask = ctx.padded(tasks)
  seeds = np.array([t.seed for t in tasks], np.uint32)
  m = len(methods)
  accs = train_curves(ctx.model, spec, layout, ctx.data,
                      np.concatenate([inits[k] for k in methods]), np.tile(ids, (m, 1)),
                      np.tile(mask, (m, 1)), np.tile(seeds, m), eval_every=eval_every).test
  accs = accs.reshape((m, n, -1))
  steps = list(range(0, spec.steps + 1, eval_every))
  results = {
      "split": split, "num_tasks": n, "eval_every": eval_every, "steps": steps,
      "curves": {k: {"mean": accs[i].mean(0).tolist(), "std": accs[i].std(0).tolist()}
                 for i, k in enumerate(methods)},
      "initial": {k: float(accs[i, :, 0].mean()) for i, k in enumerate(methods)},
      "final": {k: float(accs[i, :, -1].mean()) for i, k in enumerate(methods)},
      "per_task": {"task_ids": [t.task_id for t in tasks],
                   "initial": {k: accs[i, :, 0].tolist() for i, k in enumerate(methods)},
                   "final": {k: accs[i, :, -1].tolist() for i, k in enumerate(methods)}},
      "per_task_curves": {k: accs[i].tolist() for i, k in enumerate(methods)},
  }
  results["markdown"] = _markdown(results)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    results["csv"] = os.path.join(out_dir, "finetune_curves.csv")
    io_lib.atomic_write_bytes(results["csv"], curves_csv(results).encode())
    results["png"] = plots.plot_finetune_curves(results,
                                                os.path.join(out_dir, "finetune_curves.png"))
  logging.info("finetune (%d %s tasks): %s", n, split,
               ", ".join(f"{k} {results['initial'][k]:.3f} -> {results['final'][k]:.3f}"
                         for k in methods))
  return results
