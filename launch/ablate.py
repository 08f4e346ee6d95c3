"""Train and evaluate the generator ablations on an existing corpus (see configs/ablations.py).

  python launch/ablate.py --config=configs/ablations.py --workdir=runs/default

Every variant reads the same corpus, trains the same number of steps from the same seed,
and is evaluated by the ``generated`` evaluator on the same tasks with the same sampler;
the table puts each split's mean generated accuracy beside the generalist and the
specialist. The orchestration lives here, not in the library, because it reads the
top-level ``configs`` package, which is not installed with ``t2w_jax``.
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


def variant_config(config, name: str) -> ml_collections.ConfigDict:
  """configs/dit.py with the variant's overrides and the shared budget.

  Args:
    config: the ablation config (configs/ablations.py).
    name: a key of ``configs.ablations.VARIANTS``.

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
  for key, value in ablation_configs.VARIANTS[name].items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


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
  for name in names:  # an unknown name fails before any training
    variant_config(config, name)
  results = {}
  for name in names:
    vdir = os.path.join(out, name)
    c = variant_config(config, name)
    c.corpus_dir = corpus_dir
    logging.info("ablation %s: training %d steps in %s", name, c.num_steps, vdir)
    loop.train(c, vdir)
    res = eval_run.evaluate(eval_config(config, corpus_dir), vdir)
    results[name] = {s: v for s, v in res["evals"]["generated"]["splits"].items()}
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
  lines.append(f"\n{config.num_steps} training steps each ({config.dit_variant} DiT), "
               f"{config.num_samples} samples per task ({sampling}), up to "
               f"{config.max_tasks} tasks per split.")
  return "\n".join(lines)


def _ablate(config, workdir):
  return run_ablations(config, workdir)["table"]


if __name__ == "__main__":
  cli.main(_ablate, what="ablation", workdir_help="run directory holding corpus/")
