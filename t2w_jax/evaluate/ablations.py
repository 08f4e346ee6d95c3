"""Ablations: train each generator variant with one budget, evaluate on the same tasks.

Every variant reads the same corpus, trains the same number of steps from the same seed,
and is evaluated by the ``generated`` evaluator on the same tasks with the same sampler;
the table puts each split's mean generated accuracy beside the base and oracle.
"""
import json
import logging
import os

import ml_collections

from configs import ablations as ablation_configs
from configs import dit as dit_configs
from configs import eval as eval_configs
from t2w_jax.evaluate import run as eval_run
from t2w_jax.train import loop
from t2w_jax.zoo import corpus as corpus_lib


def variant_config(config, name: str) -> ml_collections.ConfigDict:
  """configs/dit.py with the variant's overrides and the shared budget."""
  if name not in ablation_configs.VARIANTS:
    raise ValueError(f"unknown ablation variant {name!r}; known: "
                     f"{', '.join(ablation_configs.VARIANTS)}")
  c = dit_configs.get_config(config.dit_variant)
  c.num_steps = config.num_steps
  c.checkpoint_every = config.num_steps
  for key, value in ablation_configs.VARIANTS[name].items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def run_ablations(config, workdir: str) -> dict:
  """Trains (or resumes) and evaluates every variant; writes table.md and results.json."""
  corpus_dir = os.path.join(workdir, "corpus")
  out = os.path.join(workdir, "ablations")
  names = [n.strip() for n in config.variants.split(",") if n.strip()]
  results = {}
  for name in names:
    vdir = os.path.join(out, name)
    c = variant_config(config, name)
    c.corpus_dir = corpus_dir
    logging.info("ablation %s: training %d steps in %s", name, c.num_steps, vdir)
    loop.train(c, vdir)
    e = eval_configs.get_config()
    e.corpus_dir = corpus_dir
    e.splits = tuple(config.splits)
    e.max_tasks = config.max_tasks
    gen_cfg = e.evals.generated
    gen_cfg.num_samples = config.num_samples
    gen_cfg.novelty = False
    if config.get("sample_steps", 0):
      gen_cfg.steps = int(config.sample_steps)
    e.evals = ml_collections.ConfigDict({"generated": gen_cfg})
    res = eval_run.evaluate(e, vdir)
    results[name] = {s: v for s, v in res["evals"]["generated"]["splits"].items()}
  table = render(results, config)
  os.makedirs(out, exist_ok=True)
  corpus_lib.atomic_write_json(os.path.join(out, "results.json"),
                               {"config": config.to_dict(), "variants": results})
  corpus_lib.atomic_write_bytes(os.path.join(out, "table.md"), table.encode())
  return {"table": table, "variants": results}


def render(results: dict, config) -> str:
  """Markdown: one row per variant, mean generated accuracy (± std over tasks) per split."""
  splits = list(config.splits)
  lines = [f"| variant | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
  first = next(iter(results.values()), {})
  for name, per in results.items():
    cells = [f"{100 * per[s]['mean']:.1f} ± {100 * per[s]['std']:.1f}" if s in per else "-"
             for s in splits]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  for ref in ("generalist", "oracle"):
    cells = []
    for s in splits:
      v = first.get(s, {}).get(ref)
      cells.append(f"{100 * v['mean']:.1f}" if isinstance(v, dict) and "mean" in v else "-")
    lines.append(f"| ({ref}) | " + " | ".join(cells) + " |")
  steps = config.get("sample_steps", 0)
  sampling = f"DDIM-{steps}" if steps else "the generator config's sampler"
  lines.append(f"\n{config.num_steps} training steps each ({config.dit_variant} DiT), "
               f"{config.num_samples} samples per task ({sampling}), up to "
               f"{config.max_tasks} tasks per split.")
  return "\n".join(lines)
