"""Train and evaluate the generator ablations on an existing corpus (see configs/ablations.py).

  python launch/ablate.py --config=configs/ablations.py --workdir=runs/default

Every variant reads the same corpus, trains the same number of steps from the same seed,
and is evaluated by the ``generated`` evaluator on the same tasks with the same sampler;
the table puts each split's mean generated accuracy beside the generalist and the
specialist. With ``--config.seeds=0,1`` every variant trains once per seed (seed 0 in
ablations/<variant>, seed s in ablations/<variant>_seed<s>) and each task's accuracy is
averaged over the seeds before the paired differences are taken. The orchestration lives
here, not in the library, because it reads the top-level ``configs`` package, which is
not installed with ``t2w_jax``.
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from t2w_jax import platform  # noqa: E402  (must run before JAX is imported)

platform.setup_host_devices()

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from configs import ablations as ablation_configs  # noqa: E402
from configs import dit as dit_configs  # noqa: E402
from configs import eval as eval_configs  # noqa: E402
from t2w_jax import cli  # noqa: E402
from t2w_jax import io as io_lib  # noqa: E402
from t2w_jax.evaluate import run as eval_run  # noqa: E402
from t2w_jax.train import loop  # noqa: E402


def variant_config(config, name: str, seed: int = 0) -> ml_collections.ConfigDict:
  """configs/dit.py with the variant's overrides, the shared budget and ``seed``.

  Args:
    config: the ablation config (configs/ablations.py).
    name: a key of ``configs.ablations.VARIANTS``.
    seed: the training seed (0: configs/dit.py's, or the variant's own if it sets one).

  Returns:
    The variant's DiT config.

  Raises:
    ValueError: an unknown variant.
  """
  if name not in ablation_configs.VARIANTS:
    raise ValueError(f"unknown ablation variant {name!r}; known: "
                     f"{', '.join(ablation_configs.VARIANTS)}")
  c = dit_configs.get_config(config.dit_variant)
  c.num_steps = config.num_steps
  c.checkpoint_every = config.num_steps
  if config.get("data_devices", 0):
    c.mesh.data = config.data_devices
  for key, value in ablation_configs.VARIANTS[name].items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  if seed:
    c.seed = seed
  return c


def parse_seeds(config) -> list[int]:
  """The ablation config's training seeds, in order, each once; at least one."""
  text = str(config.get("seeds", "0"))
  try:
    seeds = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"seeds must be comma-separated integers, got {text!r}") from None
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise ValueError(f"seeds must be distinct non-negative integers, got {text!r}")
  return seeds


def variant_dir(out: str, name: str, seed: int) -> str:
  """Where a variant trains at ``seed``: ablations/<name>, or <name>_seed<seed>."""
  return os.path.join(out, name if seed == 0 else f"{name}_seed{seed}")


def average_seeds(per_seed: dict) -> dict:
  """One variant's split dict averaged over seeds: each task's accuracy is its mean over
  the seeds (``per_task``; ``mean`` and ``std`` over tasks of it); the references
  (generalist, specialist) are the first seed's, the same tasks at every seed; each
  seed's mean stays in ``per_seed``."""
  first = next(iter(per_seed.values()))
  if len(per_seed) == 1:
    return first
  out = {}
  for split, ref in first.items():
    rows = np.asarray([per_seed[s][split]["per_task"] for s in per_seed])
    per_task = rows.mean(axis=0)
    out[split] = dict(ref, per_task=per_task.tolist(), mean=float(per_task.mean()),
                      std=float(per_task.std()),
                      per_seed={str(s): float(np.mean(per_seed[s][split]["per_task"]))
                                for s in per_seed})
  return out


def eval_config(config, corpus_dir: str) -> ml_collections.ConfigDict:
  """The evaluation config every variant is measured with: ``generated`` only.

  Args:
    config: the ablation config.
    corpus_dir: the shared corpus.

  Returns:
    A configs/eval.py config with one evaluator.
  """
  e = eval_configs.get_config()
  e.corpus_dir = corpus_dir
  e.splits = tuple(config.splits)
  e.max_tasks = config.max_tasks
  gen_cfg = e.evals.generated
  gen_cfg.num_samples = config.num_samples
  gen_cfg.novelty = False
  if config.get("steps", 0):
    gen_cfg.steps = int(config.steps)
  e.evals = ml_collections.ConfigDict({"generated": gen_cfg})
  return e


def run_ablations(config, workdir: str) -> dict:
  """Trains (or resumes) and evaluates every variant; writes table.md and results.json.

  Args:
    config: the ablation config (configs/ablations.py).
    workdir: holds corpus/; variants train into workdir/ablations/<variant>.

  Returns:
    {"table": Markdown, "variants": {variant: the generated evaluator's per-split dict}}.
  """
  corpus_dir = os.path.join(workdir, "corpus")
  out = os.path.join(workdir, "ablations")
  names = [n.strip() for n in config.variants.split(",") if n.strip()]
  seeds = parse_seeds(config)
  for name in names:  # an unknown name fails before any training
    variant_config(config, name)
  results = {}
  for name in names:
    per_seed = {}
    for seed in seeds:
      vdir = variant_dir(out, name, seed)
      c = variant_config(config, name, seed)
      c.corpus_dir = corpus_dir
      logging.info("ablation %s, seed %d: training %d steps in %s", name, seed,
                   c.num_steps, vdir)
      loop.train(c, vdir)
      res = eval_run.evaluate(eval_config(config, corpus_dir), vdir)
      per_seed[seed] = {s: v for s, v in res["evals"]["generated"]["splits"].items()}
    results[name] = average_seeds(per_seed)
  table = render(results, config)
  os.makedirs(out, exist_ok=True)
  io_lib.atomic_write_json(os.path.join(out, "results.json"),
                           {"config": config.to_dict(), "variants": results})
  io_lib.atomic_write_bytes(os.path.join(out, "table.md"), table.encode())
  return {"table": table, "variants": results}


def _paired(a, b) -> str:
  """'+x.x ± s.e.' of the per-task differences a - b (points), or '-'."""
  if not a or not b or len(a) != len(b) or len(a) < 2:
    return "-"
  d = 100 * (np.asarray(a) - np.asarray(b))
  return f"{d.mean():+.1f} ± {d.std(ddof=1) / np.sqrt(len(d)):.1f}"


def render(results: dict, config) -> str:
  """Markdown: one row per variant, mean generated accuracy (± std over tasks) per split
  and its paired difference from the first variant (mean ± standard error over tasks).

  Args:
    results: variant -> split -> the generated evaluator's split dict.
    config: the ablation config.

  Returns:
    The table, with the generalist's and the specialist's rows and a footnote.
  """
  splits = list(config.splits)
  ref_name = next(iter(results), "")
  first = results.get(ref_name, {})
  header = splits + [f"{s}: − {ref_name}, paired" for s in splits]
  lines = ["| variant | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
  for name, per in results.items():
    cells = [f"{100 * per[s]['mean']:.1f} ± {100 * per[s]['std']:.1f}" if s in per else "-"
             for s in splits]
    cells += [_paired(per.get(s, {}).get("per_task"), first.get(s, {}).get("per_task"))
              for s in splits]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  for ref in ("generalist", "oracle"):
    cells = []
    for s in splits:
      v = first.get(s, {}).get(ref)
      cells.append(f"{100 * v['mean']:.1f}" if isinstance(v, dict) and "mean" in v else "-")
    cells += [_paired(first.get(s, {}).get(ref, {}).get("per_task"),
                      first.get(s, {}).get("per_task")) for s in splits]
    lines.append(f"| ({ref}) | " + " | ".join(cells) + " |")
  steps = config.get("steps", 0)
  sampling = f"DDIM-{steps}" if steps else "the generator config's sampler"
  seeds = parse_seeds(config)
  seeding = (f"; each task's accuracy averaged over training seeds "
             f"{', '.join(map(str, seeds))}" if len(seeds) > 1 else "")
  lines.append(f"\n{config.num_steps} training steps each ({config.dit_variant} DiT), "
               f"{config.num_samples} samples per task ({sampling}), up to "
               f"{config.max_tasks} tasks per split{seeding}.")
  return "\n".join(lines)


def _ablate(config, workdir):
  return run_ablations(config, workdir)["table"]


if __name__ == "__main__":
  cli.main(_ablate, what="ablation", workdir_help="run directory holding corpus/")
