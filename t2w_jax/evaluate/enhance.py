"""Weight enhancement: noise an existing net to timestep t, denoise it with its task's text.

For each source net (the corpus oracle net of each task, and the shared base net) and each
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

import jax
import jax.numpy as jnp
import numpy as np

from t2w_jax import io as io_lib
from t2w_jax.diffusion import DDIMSampler
from t2w_jax.diffusion import denoise_from
from t2w_jax.diffusion import get_schedule
from t2w_jax.diffusion import q_sample
from t2w_jax.evaluate import baselines
from t2w_jax.evaluate import plots
from t2w_jax.evaluate import registry
from t2w_jax.text.condition import text_condition
from t2w_jax.train import state as state_lib

DEFAULT_T = (50, 100, 200, 400)
SOURCES = ("oracle", "generalist")


def make_enhancer(gen, t: int, *, steps: int, guidance: float = 1.0):
  """A jitted ``(flat (B, D), class_emb (B, K, d), mask (B, K), rng) -> (denoised, noised)``.

  Args:
    gen: a loaded ``api.Generator``.
    t: the timestep to noise to, 0 <= t < T (static: it fixes the chain length).
    steps: DDIM steps over [0, t] (all of them when t + 1 < steps).
    guidance: classifier-free guidance scale (1.0: conditional only).

  Returns:
    The function; both outputs are (B, D) flat weights.
  """
  spec = gen.spec
  num_t = int(spec.config["num_timesteps"])
  if not 0 <= t < num_t:
    raise ValueError(f"enhancement timestep t={t} out of range [0, {num_t}) for this "
                     "generator's schedule")
  model = state_lib.make_denoiser(spec)
  tok, norms = spec.tokenizer, spec.norms
  schedule = get_schedule(spec.config["schedule"], num_t)
  sampler = DDIMSampler(num_steps=int(steps))
  temperature = spec.config["prior_temperature"]
  guided = guidance != 1.0

  def run(params, flat, class_emb, mask, rng):
    b = flat.shape[0]
    x0 = norms.normalize(tok.tokenize(flat))
    k_noise, k_chain = jax.random.split(rng)
    # Noise only the real positions: pad positions stay exactly 0, as in training data.
    noise = jnp.where(tok.mask, jax.random.normal(k_noise, x0.shape), 0.0)
    x_t = q_sample(schedule, x0, jnp.full((b,), t, jnp.int32), noise)
    cond = text_condition(class_emb, mask, temperature)
    null = dict(cond, drop=jnp.ones((b,), bool))

    def denoise(x, ts, c):
      return model(params, x, ts, c)

    out = denoise_from(sampler, denoise, schedule, k_chain, x_t, t, cond,
                       null_cond=null if guided else None, guidance=guidance if guided else 1.0)
    back = lambda tokens: tok.detokenize(norms.denormalize(tokens))  # noqa: E731
    return back(out), back(x_t)

  fn = jax.jit(run)
  return lambda flat, class_emb, mask, rng: fn(
      gen.params, jnp.asarray(flat, jnp.float32), jnp.asarray(class_emb, jnp.float32),
      jnp.asarray(mask, bool), rng)


def _markdown(results: dict) -> str:
  names = list(results["sources"])
  head = "| t | " + " | ".join(f"{n} before | {n} noised | {n} denoised" for n in names) + " |"
  lines = [f"### Weight enhancement ({results['num_tasks']} {results['split']} tasks, DDIM "
           f"{results['sample_steps']} steps, guidance {results['guidance']:g})", "", head,
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
def enhance(ctx, cfg, rng) -> dict:
  """Weight enhancement over a grid of t, for the oracle and the base net of each task.

  Config keys (all optional): ``split`` ("unseen"), ``num_tasks`` (8), ``t`` ((50, 100,
  200, 400); values >= the generator's T are dropped with a warning), ``sources``
  (("oracle", "generalist")), ``sample_steps`` (the generator's default), ``guidance`` (the
  generator's default), ``out_dir`` (None: no files written).

  Args:
    ctx: the ``EvalContext`` (with a generator).
    cfg: this evaluator's config (ConfigDict or dict).
    rng: PRNG key for the noise and the chain.

  Returns:
    JSON-ready dict: split, num_tasks, t (list), sample_steps, guidance, sources {name:
    {before, after (per t), after_std, noised (per t), gain (after - before per t)}},
    png (when written) and markdown.
  """
  gen = ctx.gen
  if gen is None:
    raise ValueError("enhance needs a trained generator in the context")
  if gen.layout.fingerprint() != ctx.corpus.layout.fingerprint():
    raise ValueError("the generator was trained for another net layout than the corpus's")
  split = cfg.get("split", "unseen")
  rows = ctx.rows(split, int(cfg.get("num_tasks", 8)))
  if len(rows) == 0:
    raise ValueError(f"the corpus has no {split!r} tasks to enhance")
  tasks = ctx.tasks(rows)
  n = len(tasks)
  sources = list(cfg.get("sources", SOURCES))
  unknown = sorted(set(sources) - set(SOURCES))
  if unknown or not sources:
    raise ValueError(f"unknown enhancement sources {unknown or sources}; known: {list(SOURCES)}")
  num_t = int(gen.config["num_timesteps"])
  grid = [int(t) for t in cfg.get("t", DEFAULT_T)]
  kept = [t for t in grid if 0 <= t < num_t]
  if len(kept) < len(grid):
    logging.warning("enhance: dropping t %s outside the generator's [0, %d)",
                    sorted(set(grid) - set(kept)), num_t)
  if not kept:
    raise ValueError(f"no enhancement timestep in [0, {num_t}); got t={grid}")
  steps = int(cfg.get("sample_steps") or gen.config["sample_steps"])
  guidance = cfg.get("guidance")
  guidance = float(gen.config["guidance"] if guidance is None else guidance)

  nets = {"oracle": np.asarray(ctx.corpus.weights[rows], np.float32),
          "generalist": np.repeat(np.asarray(ctx.corpus.base, np.float32)[None], n, 0)}
  flat = np.concatenate([nets[s] for s in sources])
  all_tasks = tasks * len(sources)
  emb, mask = ctx.class_text(all_tasks)
  before = baselines.accuracy(ctx, flat, all_tasks).reshape(len(sources), n)
  after, noised = [], []
  for i, t in enumerate(kept):
    fn = make_enhancer(gen, t, steps=steps, guidance=guidance)
    den, noi = fn(flat, emb, mask, jax.random.fold_in(rng, i))
    after.append(baselines.accuracy(ctx, np.asarray(den), all_tasks).reshape(len(sources), n))
    noised.append(baselines.accuracy(ctx, np.asarray(noi), all_tasks).reshape(len(sources), n))
  after, noised = np.stack(after, 1), np.stack(noised, 1)  # (sources, t, n)

  results = {"split": split, "num_tasks": n, "t": kept, "sample_steps": steps,
             "guidance": guidance, "sources": {}}
  for j, s in enumerate(sources):
    b = float(before[j].mean())
    results["sources"][s] = {
        "before": b, "after": after[j].mean(-1).tolist(), "after_std": after[j].std(-1).tolist(),
        "noised": noised[j].mean(-1).tolist(),
        "gain": (after[j].mean(-1) - before[j].mean()).tolist()}
  results["markdown"] = _markdown(results)
  out_dir = cfg.get("out_dir")
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    results["png"] = plots.plot_enhancement(results, os.path.join(out_dir, "enhancement.png"))
    io_lib.atomic_write_bytes(os.path.join(out_dir, "enhancement.md"),
                                  results["markdown"].encode())
  logging.info("enhance (%d %s tasks):\n%s", n, split, results["markdown"])
  return results
