"""Evaluation config: generated nets against every baseline, evaluators picked by name.

Run (from the repository root; WORKDIR holds corpus/ and the trained generator):

  python launch/evaluate.py --config=configs/eval.py --workdir=runs/default
  python launch/evaluate.py --config=configs/eval.py:tiny --workdir=/tmp/t2w_tiny
  python launch/evaluate.py --config=configs/eval.py --workdir=DIR \\
      --config.evals.generated.num_samples=8 --config.max_tasks=16

``get_config(arg)``: arg "" (default) or "tiny" (seconds; tests and smoke runs).

``config.evals`` is a dict of entries, big_vision style: ``evals.<key>.type`` is a
registered evaluator (``t2w_jax.evaluate.registry.names()``), the other fields are its
options; ``splits`` and ``max_tasks`` are inherited from the top level unless an entry sets
them. Results land in WORKDIR/eval/results.json under ``evals.<key>``.
"""
import ml_collections

_placeholder = ml_collections.config_dict.placeholder


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.corpus_dir = _placeholder(str)      # default: WORKDIR/corpus
  c.generator_dir = _placeholder(str)   # default: WORKDIR
  c.eval_per_class = _placeholder(int)  # test images per class; default: the corpus's
  c.splits = ("unseen", "heldout")
  c.max_tasks = _placeholder(int)       # tasks per split; default: all
  c.chunk = 32                          # nets per compiled accuracy call (padded up to it)

  c.evals = ml_collections.ConfigDict()
  # Base, random init, mean of seen weights, NN retrieval, ridge, oracle.
  c.evals.baselines = ml_collections.ConfigDict(dict(
      type="baselines",
      # One value: used as is; several: the one with the lowest exact leave-one-out
      # weight error on the seen rows.
      ridge_lambdas=(0.01, 0.1, 1.0, 10.0, 100.0),
      random_seed=0,
      temperature=_placeholder(float),  # prior temperature for fusing; default: generator's
      min_denominator=0.02))
  # K generated nets per task: accuracy, best-of-K, gap closure, novelty.
  c.evals.generated = ml_collections.ConfigDict(dict(
      type="generated",
      num_samples=4,
      sampler=_placeholder(str),    # default: the generator config's ("ddim")
      steps=_placeholder(int),      # default: the generator config's (1)
      guidance=_placeholder(float),  # default: the generator config's (1.0)
      temperature=_placeholder(float),  # starting-noise scale; default: the config's (1.0)
      min_denominator=0.02,
      novelty=True,
      novelty_ref_rows=256,
      novelty_samples=1))  # generated nets per task whose test predictions are compared
  c.evals.sampler_ablation = ml_collections.ConfigDict(dict(
      type="sampler_ablation",
      split="unseen", num_tasks=6, num_samples=2,
      samplers=("ddim:1", "ddim:2", "ddim:5", "ddim:10", "ddim:25", "ddim:50", "ddim:100",
                "ddpm"),
      guidances=(1.0, 2.0, 4.0),
      temperatures=(1.0, 0.5, 0.0),  # starting-noise scales; the others at guidance_sampler
      cross=False,                  # False: samplers at guidances[0] + guidances at:
      guidance_sampler="ddim:50"))
  c.evals.freeform = ml_collections.ConfigDict(dict(
      type="freeform",
      split="unseen", max_tasks=12, num_samples=2,
      variants=("class_list", "sentence", "sentence_no_singular", "other_prompt",
                "whole_sentence"),
      prompt="an image showing a {}",
      sampler=_placeholder(str), steps=_placeholder(int), guidance=_placeholder(float)))

  # Evaluators of t2w_jax/evaluate/{finetune,enhance,fusion}.py (their docstrings list every
  # option; the ones here are those worth overriding from the command line).
  c.evals.finetune = ml_collections.ConfigDict(dict(
      type="finetune", split="unseen", num_tasks=6, eval_every=25))
  c.evals.enhance = ml_collections.ConfigDict(dict(
      type="enhance", split="unseen", num_tasks=6, t=(50, 100, 200, 400)))
  c.evals.fusion = ml_collections.ConfigDict(dict(
      type="fusion", num_pairs=4, num_samples=2))

  if arg == "tiny":
    c.chunk = 8
    c.evals.finetune.update(num_tasks=2, eval_every=5)
    c.evals.enhance.update(num_tasks=2, t=(10, 50))
    c.evals.fusion.update(num_pairs=1, num_samples=1)
    c.evals.generated.num_samples = 2
    c.evals.generated.novelty_ref_rows = 8
    c.evals.sampler_ablation.update(num_tasks=2, num_samples=1,
                                    samplers=("ddim:5", "ddim:10", "ddim:1000", "ddpm"),
                                    guidances=(1.0, 2.0), temperatures=(1.0, 0.0),
                                    guidance_sampler="ddim:10")
    c.evals.freeform.update(max_tasks=2, num_samples=1)
  elif arg:
    raise ValueError(f"unknown eval config variant {arg!r}; use '' or 'tiny'")
  return c
