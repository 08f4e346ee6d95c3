"""Weight enhancement: noise an existing net to timestep t, denoise it with its task's text.

For each source net (each task's specialist, the "oracle" corpus row, and the generalist) and each
t of a grid: tokenise and normalise the weights exactly as the generator saw its training
data (``gen.spec.tokenizer``, ``gen.spec.norms``), noise them with ``q_sample`` under the
generator's schedule, run the DDIM reverse chain from t (``diffusion.denoise_from``)
conditioned on the task's class list, map back to weights and measure accuracy. Reported
per t: accuracy before (the source net itself), after denoising, and of the noised net
itself (mapped straight back to weights) to show how much the denoiser recovers.

Small t keeps the net and nudges it; large t keeps little of it and approaches plain
generation. All tasks and both sources go through the chain as one batch per t.
"""
import logging
import os
from typing import Sequence

import jax
import numpy as np

from t2w_jax import api
from t2w_jax import generator as generator_lib
from t2w_jax import io as io_lib
from t2w_jax.evaluate import plots
from t2w_jax.evaluate import registry

DEFAULT_T = (50, 100, 200, 400)
SOURCES = ("oracle", "generalist")


def _markdown(results: dict) -> str:
  names = list(results["sources"])
  label = {"oracle": "specialist"}  # the report's name for the task's own corpus net
  head = "| t | " + " | ".join(f"{label.get(n, n)} before | {label.get(n, n)} noised | "
                               f"{label.get(n, n)} denoised" for n in names) + " |"
  lines = [f"### Weight enhancement ({results['num_tasks']} {results['split']} tasks, DDIM "
           f"{results['steps']} steps, guidance {results['guidance']:g})", "", head,
           "|---" * (3 * len(names) + 1) + "|"]
  for i, t in enumerate(results["t"]):
    cells = []
    for n in names:
      s = results["sources"][n]
      cells += [f"{s['before']:.3f}", f"{s['noised'][i]:.3f}",
                f"{s['after'][i]:.3f} ± {s['after_std'][i]:.3f}"]
    lines.append(f"| {t} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


@registry.register("enhance", needs_generator=True)
def enhance(ctx, rng, *, split: str = "unseen", num_tasks: int = 6,
            t: Sequence[int] = DEFAULT_T, sources: Sequence[str] = SOURCES,
            steps: int | None = None, guidance: float | None = None,
            out_dir: str | None = None) -> dict:
  """Weight enhancement over a grid of t, for the specialist and the generalist of each task.

  Args:
    ctx: the ``EvalContext`` (with a generator).
    rng: PRNG key for the noise and the chain.
    split: the corpus split whose tasks are enhanced.
    num_tasks: its first ``num_tasks`` tasks.
    t: timesteps to noise to; values outside the generator's [0, T) are dropped with a
      warning.
    sources: nets to enhance: "oracle" (each task's specialist) and/or "generalist".
    steps: DDIM steps over [0, t]; None: the generator's default.
    guidance: classifier-free guidance scale; None: the generator's default.
    out_dir: where enhancement.md/.png go; None: no files written.

  Returns:
    JSON-ready dict: split, num_tasks, t (list), steps, guidance, sources {name:
    {before, after (per t), after_std, noised (per t), gain (after - before per t)}},
    png (when written) and markdown.
  """
  gen = ctx.gen
  if gen is None:
    raise ValueError("enhance needs a trained generator in the context")
  if gen.layout.fingerprint() != ctx.corpus.layout.fingerprint():
    raise ValueError("the generator was trained for another net layout than the corpus's")
  rows = ctx.rows(split, int(num_tasks))
  if len(rows) == 0:
    raise ValueError(f"the corpus has no {split!r} tasks to enhance")
  tasks = ctx.tasks(rows)
  n = len(tasks)
  sources = list(sources)
  unknown = sorted(set(sources) - set(SOURCES))
  if unknown or not sources:
    raise ValueError(f"unknown enhancement sources {unknown or sources}; known: {list(SOURCES)}")
  num_t = int(gen.config["num_timesteps"])
  grid = [int(x) for x in t]
  kept = [x for x in grid if 0 <= x < num_t]
  if len(kept) < len(grid):
    logging.warning("enhance: dropping t %s outside the generator's [0, %d)",
                    sorted(set(grid) - set(kept)), num_t)
  if not kept:
    raise ValueError(f"no enhancement timestep in [0, {num_t}); got t={grid}")
  setting = generator_lib.resolve_sampling(gen.config, sampler="ddim", steps=steps,
                                           guidance=guidance)

  nets = {"oracle": np.asarray(ctx.corpus.weights[rows], np.float32),
          "generalist": np.repeat(np.asarray(ctx.corpus.base, np.float32)[None], n, 0)}
  flat = np.concatenate([nets[s] for s in sources])
  all_tasks = tasks * len(sources)
  emb, mask = ctx.class_text(all_tasks)
  before = ctx.accuracy(flat, all_tasks).reshape(len(sources), n)
  after, noised = [], []
  for i, t_i in enumerate(kept):
    den, noi = api.enhance_flat(gen, flat, emb, mask, t=t_i, rng=jax.random.fold_in(rng, i),
                                steps=setting.steps, guidance=setting.guidance)
    after.append(ctx.accuracy(np.asarray(den), all_tasks).reshape(len(sources), n))
    noised.append(ctx.accuracy(np.asarray(noi), all_tasks).reshape(len(sources), n))
  after, noised = np.stack(after, 1), np.stack(noised, 1)  # (sources, t, n)

  results = {"split": split, "num_tasks": n, "t": kept, "steps": setting.steps,
             "guidance": setting.guidance, "sources": {}}
  for j, s in enumerate(sources):
    b = float(before[j].mean())
    results["sources"][s] = {
        "before": b, "after": after[j].mean(-1).tolist(), "after_std": after[j].std(-1).tolist(),
        "noised": noised[j].mean(-1).tolist(),
        "gain": (after[j].mean(-1) - before[j].mean()).tolist()}
  results["markdown"] = _markdown(results)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    results["png"] = plots.plot_enhancement(results, os.path.join(out_dir, "enhancement.png"))
    io_lib.atomic_write_bytes(os.path.join(out_dir, "enhancement.md"),
                                  results["markdown"].encode())
  logging.info("enhance (%d %s tasks):\n%s", n, split, results["markdown"])
  return results
