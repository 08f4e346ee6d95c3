"""Evaluation config: generated nets against every baseline, evaluators picked by name.

Run (from the repository root; WORKDIR holds corpus/ and the trained generator):

  python launch/evaluate.py --config=configs/eval.py --workdir=runs/default
  python launch/evaluate.py --config=configs/eval.py:tiny --workdir=/tmp/t2w_tiny
  python launch/evaluate.py --config=configs/eval.py:fusion --workdir=runs/default
  python launch/evaluate.py --config=configs/eval.py --workdir=DIR \\
      --config.evals.generated.num_samples=8 --config.max_tasks=16 \\
      --config.evals.finetune.num_tasks=2

``get_config(arg)``: arg "" (default), "tiny" (seconds; tests and smoke runs),
"applications" (the few-shot, enhancement and fusion studies only, at the sizes docs/results.md
reports), "fewshot" (the few-shot study alone, at that size), "fusion" (the fusion study
alone), "shots" (few labelled images: the shot-conditioned net against zero-shot nets and
fine-tuning), "profile" (which parameters of the generated nets
cost accuracy) or "hypernet" (the plain hypernetwork alone).

``config.evals`` is a dict of entries, big_vision style: ``evals.<key>.type`` is a
registered evaluator (``t2w_jax.evaluate.registry.names()``), the other fields are its
options, passed to it as keyword arguments (defaults: the evaluator's signature); ``splits``
and ``max_tasks`` are inherited from the top level by the evaluators that take them.
Results land in WORKDIR/eval/results.json under ``evals.<key>``.
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

  # Each entry: the evaluator's registered name (``type``) and the options set here on
  # purpose. An option's default lives in the evaluator's signature and only there (run
  # ``python -c "from t2w_jax.evaluate import registry; print(registry.get('finetune').options)"``);
  # a field left at None (a placeholder, so the command line can set it) means "the
  # evaluator's default", and a field the evaluator does not take is an error.
  c.evals = ml_collections.ConfigDict()
  # Generalist, random init, mean of seen weights, NN retrieval, ridge, specialist.
  c.evals.baselines = ml_collections.ConfigDict(dict(
      type="baselines", random_seed=_placeholder(int), temperature=_placeholder(float),
      min_denominator=_placeholder(float)))
  # K generated nets per task: accuracy, best-of-K, gap closure, novelty.
  c.evals.generated = ml_collections.ConfigDict(dict(
      type="generated", num_samples=_placeholder(int), sampler=_placeholder(str),
      steps=_placeholder(int), guidance=_placeholder(float), temperature=_placeholder(float),
      min_denominator=_placeholder(float), novelty=_placeholder(bool),
      novelty_ref_rows=_placeholder(int), novelty_samples=_placeholder(int)))
  # The plain hypernetwork (text -> weight delta, trained through the task loss alone, no
  # corpus): the bar the diffusion generator has to clear (t2w_jax/evaluate/hypernet.py).
  c.evals.hypernet = ml_collections.ConfigDict(dict(
      type="hypernet", max_steps=_placeholder(int), hidden=_placeholder(int),
      learning_rate=_placeholder(float), eval_every=_placeholder(int),
      patience=_placeholder(int)))
  # The sampler study: DDIM 1-100 steps and DDPM on 24 unseen tasks; guidance and the
  # starting-noise temperature at the default one-step sampler.
  c.evals.sampler_ablation = ml_collections.ConfigDict(dict(
      type="sampler_ablation", split=_placeholder(str), num_tasks=24,
      num_samples=_placeholder(int), cross=_placeholder(bool), guidance_sampler="ddim:1"))
  c.evals.freeform = ml_collections.ConfigDict(dict(
      type="freeform", split=_placeholder(str), num_tasks=_placeholder(int),
      num_samples=_placeholder(int), prompt=_placeholder(str), sampler=_placeholder(str),
      steps=_placeholder(int), guidance=_placeholder(float)))
  # Evaluators of t2w_jax/evaluate/{finetune,enhance,fusion}.py.
  c.evals.finetune = ml_collections.ConfigDict(dict(
      type="finetune", split=_placeholder(str), num_tasks=_placeholder(int),
      eval_every=_placeholder(int), train_steps=_placeholder(int), steps=_placeholder(int)))
  # Enhancement of few-shot, under-trained and converged nets, a small grid here; the
  # full study is the "applications" variant.
  c.evals.enhance = ml_collections.ConfigDict(dict(
      type="enhance", num_tasks=4, t=(0, 25, 100, 400), chain_steps=(1,),
      few_shot_steps=200, guidance=_placeholder(float)))
  c.evals.fusion = ml_collections.ConfigDict(dict(
      type="fusion", num_pairs=_placeholder(int), num_samples=_placeholder(int),
      indep_cap_factor=_placeholder(int), steps=_placeholder(int)))

  # The fusion study's size: 48 task pairs (unseen tasks first, then held-out, then seen:
  # fusion.choose_pairs), K=4 generated samples per pair.
  fusion_study = dict(num_pairs=48, num_samples=4)
  # The few-shot study's size: 16 tasks per split, api.few_shot capped at 400 steps.
  fewshot_study = ml_collections.ConfigDict(dict(
      type="fewshot", num_tasks=16, train_steps=400, eval_every=25))
  if arg == "applications":
    # The three studies of docs/results.md's "Applications": few-shot initialisation, weight
    # enhancement and text-guided fusion, at the sizes docs/results.md reports.
    fusion = c.evals.fusion
    fusion.update(**fusion_study)
    c.evals = ml_collections.ConfigDict({"fusion": fusion})
    c.evals.fewshot = fewshot_study
    c.evals.enhance = ml_collections.ConfigDict(dict(type="enhance", num_tasks=24))
  elif arg == "tiny":
    c.chunk = 8
    c.evals.finetune.update(num_tasks=2, eval_every=5)
    c.evals.enhance.update(num_tasks=2, t=(0, 10), few_shot_steps=50)
    c.evals.fusion.update(num_pairs=1, num_samples=1)
    c.evals.generated.num_samples = 2
    c.evals.hypernet.update(max_steps=40, eval_every=10, hidden=32, val_tasks=8,
                            batch_size=8, images=8)
    c.evals.generated.novelty_ref_rows = 8
    c.evals.sampler_ablation.update(num_tasks=2, num_samples=1,
                                    samplers=("ddim:5", "ddim:10", "ddim:1000", "ddpm"),
                                    guidances=(1.0, 2.0), temperatures=(1.0, 0.0),
                                    guidance_sampler="ddim:10")
    c.evals.freeform.update(num_tasks=2, num_samples=1)
  elif arg == "fewshot":
    c.evals = ml_collections.ConfigDict({"fewshot": fewshot_study})
  elif arg == "fusion":
    fusion = c.evals.fusion
    fusion.update(**fusion_study)
    c.evals = ml_collections.ConfigDict({"fusion": fusion})
  elif arg == "shots":
    # Few labelled images: the shot-conditioned net against zero-shot nets and
    # fine-tuning, on 48 + 48 tasks (t2w_jax/evaluate/shots.py).
    c.evals = ml_collections.ConfigDict({"shots": ml_collections.ConfigDict(dict(
        type="shots", num_tasks=48, prior_weight=_placeholder(float),
        refine_steps=_placeholder(int), learning_rate=_placeholder(float),
        train_steps=_placeholder(int)))})
  elif arg == "profile":
    # Which parameters of the generated nets cost accuracy (t2w_jax/evaluate/layer_profile.py).
    c.evals = ml_collections.ConfigDict({"layer_profile": ml_collections.ConfigDict(dict(
        type="layer_profile"))})
  elif arg == "hypernet":
    # The plain hypernetwork alone (no generator needed), e.g. with a larger step cap
    # than the main job can afford: --config.evals.hypernet.max_steps=16000.
    c.evals = ml_collections.ConfigDict({"hypernet": c.evals.hypernet})
  elif arg:
    raise ValueError(f"unknown eval config variant {arg!r}; use '', 'tiny', 'applications', "
                     "'fewshot', 'fusion', 'shots', 'profile' or 'hypernet'")
  return c
