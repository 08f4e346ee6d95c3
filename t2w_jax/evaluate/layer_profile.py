"""Which layers of a generated net cost accuracy: a per-layer profile against the specialist.

For every parameter of the subtask net (``conv_0/kernel``, ``head/bias``, ...) and every
task, the generated net's values of that parameter are replaced by the task specialist's
and the net is measured again: the gain is what the generator's error on that parameter
costs. The relative error |generated - specialist| / |specialist - generalist| per
parameter says how far the generator moved it the right way (1: not at all).
"""
from typing import Sequence

import jax
import numpy as np

from t2w_jax import api
from t2w_jax.evaluate import registry
from t2w_jax.evaluate.baselines import split_tasks


@registry.register("layer_profile")
def layer_profile(ctx, rng, *, splits: Sequence[str] = ("unseen", "heldout"),
                  max_tasks: int | None = None) -> dict:
  """Per-parameter accuracy gain of swapping in the specialist's values, and relative error.

  Args:
    ctx: the ``EvalContext`` (needs a generator).
    rng: PRNG key of the generated nets (the generator's default sampler).
    splits / max_tasks: the tasks measured.

  Returns:
    JSON-ready {split: {"generated": mean accuracy, "params": {path: {"swap_gain": mean
    accuracy gain (points as a fraction), "swap_gain_se", "relative_error": median over
    tasks}}}}.
  """
  if ctx.gen is None:
    raise ValueError("the layer profile needs a trained generator in the context")
  layout = ctx.corpus.layout
  base = np.asarray(ctx.corpus.base, np.float32)
  out = {}
  for split in splits:
    rows, tasks = split_tasks(ctx, max_tasks, split)
    emb, mask = ctx.class_text(tasks)
    gen = np.asarray(api.sample_flat(ctx.gen, emb, mask, rng=jax.random.fold_in(rng, 0)),
                     np.float32)
    spec = np.asarray(ctx.corpus.weights[rows], np.float32)
    acc0 = ctx.accuracy(gen, tasks)
    params = {}
    for path, off, size in zip(layout.paths, layout.offsets, layout.sizes):
      sl = slice(off, off + size)
      swapped = gen.copy()
      swapped[:, sl] = spec[:, sl]
      gain = ctx.accuracy(swapped, tasks) - acc0
      err = np.linalg.norm(gen[:, sl] - spec[:, sl], axis=1)
      moved = np.linalg.norm(spec[:, sl] - base[None, sl], axis=1)
      params[path] = {"size": int(size), "swap_gain": float(gain.mean()),
                      "swap_gain_se": float(gain.std(ddof=1) / np.sqrt(len(gain))),
                      "relative_error": float(np.median(err / np.maximum(moved, 1e-12)))}
    out[split] = {"generated": float(acc0.mean()), "params": params}
  return out
