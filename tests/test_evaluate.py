"""Evaluators: baselines give the values they must, the whole evaluation runs and reports.

The baselines' tests read the conftest's tiny corpus; the end-to-end evaluation (the slow
tier) trains a tiny generator on a copy of it and runs once (module scope) with settings
chosen so that all the generator's sampling shares two compiled programs.
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import dit as dit_config
from configs import eval as eval_config
from conftest import binomial_tail
from t2w_jax import text as text_lib
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.evaluate import baselines
from t2w_jax.evaluate import generated
from t2w_jax.evaluate import registry
from t2w_jax.evaluate import report
from t2w_jax.evaluate import run
from t2w_jax.evaluate.context import EvalContext
from t2w_jax.train import loop
from t2w_jax.zoo import masstrain

ALL_METHODS = ("generalist", "random", "mean_weights", "nn_retrieval", "ridge", "oracle")
# The chance, were the specialists no better than the generalist, of as many test images
# going their way.
FALSE_PASS = 0.01


@pytest.fixture(scope="module")
def workdir(tiny_corpus_run, tmp_path_factory):
  # A copy of the conftest's tiny corpus run: the evaluation writes into its workdir.
  d = str(tmp_path_factory.mktemp("eval_run") / "run")
  shutil.copytree(tiny_corpus_run[0], d)
  g = dit_config.get_config("tiny")
  # The evaluators need a checkpoint, not a good generator: 10 steps, no adversarial
  # term and one device compile fastest.
  g.update(num_steps=10, adv_weight=0.0)
  g.mesh.data = 1
  loop.train(g, d)
  return d


@pytest.fixture(scope="module")
def ctx(tiny_corpus_dir):
  # The conftest's tiny corpus: no generator needed.
  return EvalContext.create(tiny_corpus_dir, chunk=8)


def _test_config():
  c = eval_config.get_config("tiny")
  # Fine-tune curves, enhancement and fusion have their own tests (test_evaluate_extras.py).
  for key in ("finetune", "enhance", "fusion"):
    if key in c.evals:
      del c.evals[key]
  # Every sampling call has batch 2 and DDIM-2: one compiled program (two with guidance).
  c.evals.generated.update(num_samples=1, steps=2)
  c.evals.sampler_ablation.update(samplers=("ddim:2", "ddim:1000"), guidances=(1.0, 2.0),
                                  temperatures=(1.0, 0.0), guidance_sampler="ddim:2")
  c.evals.freeform.update(steps=2)
  return c


@pytest.fixture(scope="module")
def results(workdir):
  return run.evaluate(_test_config(), workdir)


# --------------------------------------------------------------------------- registry
def test_unknown_evaluator_is_a_clear_error(tmp_path):
  with pytest.raises(KeyError, match="unknown evaluator 'nope'.*baselines"):
    registry.get("nope")
  c = eval_config.get_config("tiny")
  c.evals.bad = ml_collections.ConfigDict(dict(type="no_such_eval"))
  # Fails on the name before touching the (missing) corpus.
  with pytest.raises(KeyError, match="no_such_eval"):
    run.evaluate(c, str(tmp_path))
  with pytest.raises(ValueError, match="variant"):
    eval_config.get_config("huge")


def test_single_study_variants_hold_one_evaluator_with_valid_options():
  for arg in ("hypernet", "fusion", "fewshot"):
    evals = eval_config.get_config(arg).evals
    assert list(evals.keys()) == [arg]
    options = set(registry.get(evals[arg].type).options)
    assert set(evals[arg].keys()) - {"type"} <= options
  # The few-shot variant runs the study at the size of the applications variant.
  assert (eval_config.get_config("fewshot").evals.fewshot.to_dict()
          == eval_config.get_config("applications").evals.fewshot.to_dict())


def test_misspelt_evaluator_option_is_an_error(tmp_path):
  c = eval_config.get_config("tiny")
  c.evals.finetune.num_task = 3  # misspelt: no silent fall back to the default
  with pytest.raises(ValueError, match="'finetune' has no option 'num_task'.*num_tasks"):
    run.evaluate(c, str(tmp_path))  # before touching the (missing) corpus
  with pytest.raises(ValueError, match="no option 'sample_steps'"):
    registry.get("enhance")(None, jax.random.PRNGKey(0), sample_steps=3)
  # Each default lives in the signature; the config only overrides (tiny) or leaves None.
  assert registry.get("finetune").options["num_tasks"] == 6
  assert registry.get("finetune").options["eval_every"] == 25
  assert eval_config.get_config().evals.finetune.num_tasks is None


def test_registry_refuses_a_second_function_under_a_taken_name():
  assert {"baselines", "generated", "sampler_ablation", "freeform"} <= set(registry.names())
  with pytest.raises(ValueError, match="already registered"):
    registry.register("baselines")(lambda ctx, rng: {})


def test_evaluator_needing_a_generator_refuses_a_context_without_one(ctx):
  with pytest.raises(ValueError, match="needs a trained generator"):
    registry.get("generated")(ctx, jax.random.PRNGKey(0))


# --------------------------------------------------------------------------- ridge
def test_ridge_without_regularisation_reproduces_a_linear_target():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 6))
  w, b = rng.normal(size=(6, 9)), rng.normal(size=(9,))
  y = x @ w + b
  model = baselines.fit_ridge(x, y, 0.0)
  np.testing.assert_allclose(model.predict(x), y, atol=1e-4)
  np.testing.assert_allclose(model.coef, w, atol=1e-5)
  np.testing.assert_allclose(model.intercept, b, atol=1e-5)
  # Fewer rows than inputs (the tiny corpus): lam = 0 still interpolates the rows.
  xs = rng.normal(size=(5, 20))
  ys = rng.normal(size=(5, 3))
  np.testing.assert_allclose(baselines.fit_ridge(xs, ys, 0.0).predict(xs), ys, atol=1e-5)
  # A large regulariser shrinks towards the mean of the targets (the unpenalised bias).
  big = baselines.fit_ridge(x, y, 1e12)
  np.testing.assert_allclose(big.predict(x), np.repeat(y.mean(0)[None], 40, 0), atol=1e-4)


def test_ridge_leave_one_out_matches_refitting():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(12, 4)), rng.normal(size=(12, 3))
  for lam in (0.0, 0.5, 5.0):
    errs = []
    for i in range(12):
      keep = np.arange(12) != i
      errs.append((baselines.fit_ridge(x[keep], y[keep], lam).predict(x[i:i + 1]) - y[i]) ** 2)
    np.testing.assert_allclose(baselines.ridge_loo_mse(x, y, [lam])[lam], np.mean(errs),
                               rtol=1e-4)
  model, loo = baselines.select_ridge(x, y, (0.01, 1.0, 100.0))
  assert model.lam == min(loo, key=loo.get)
  with pytest.raises(ValueError, match=">= 0"):
    baselines.fit_ridge(x, y, -1.0)


# --------------------------------------------------------------------------- retrieval, novelty
def test_nn_retrieval_returns_the_task_with_the_same_text(ctx):
  seen = ctx.rows("seen")
  keys = baselines.fused_embeddings(ctx, ctx.tasks(seen))
  # A query with the same classes as seen row j (in another order) must retrieve row j.
  queries = [tasks_lib.Task(-1, "query", tuple(reversed(t.class_ids)), 0)
             for t in ctx.tasks(seen)]
  got = baselines.nn_retrieve(keys, baselines.fused_embeddings(ctx, queries))
  np.testing.assert_array_equal(got, np.arange(len(seen)))
  rng = np.random.default_rng(0)
  k = rng.normal(size=(10, 7))
  assert list(baselines.nn_retrieve(k, 3.0 * k[[4, 2]])) == [4, 2]


def test_test_predictions_agree_with_accuracy(ctx):
  rows = ctx.rows("unseen")
  tasks = ctx.tasks(rows)
  flat = np.concatenate([np.asarray(ctx.corpus.weights[rows]), ctx.corpus.base[None]])
  tasks = tasks + tasks[:1]
  pred, label = ctx.test_predictions(flat, tasks)
  acc = [(p == l)[l >= 0].mean() for p, l in zip(pred, label)]
  np.testing.assert_allclose(acc, ctx.accuracy(flat, tasks), atol=1e-6)
  # The trainer's own measurement (vmapped im2col convolutions, per-class-row embedding)
  # gives the same numbers: the evaluators measure what the corpus trainer measured.
  ids, mask = ctx.padded(tasks)
  trainer_acc = jax.vmap(lambda f, c, m: masstrain.task_accuracy(
      ctx.model, ctx.data, ctx.corpus.layout.unflatten(f), c, m))(
          jnp.asarray(flat), jnp.asarray(ids), jnp.asarray(mask))
  np.testing.assert_allclose(acc, np.asarray(trainer_acc), atol=1e-6)
  assert ((pred < 0) == (label < 0)).all()
  assert (label >= 0).sum(1)[0] == len(tasks[0].class_ids) * 20  # tiny: 20 test images/class
  # The cached reference accuracies are the same numbers.
  np.testing.assert_allclose(ctx.reference_accuracy("oracle", rows), acc[:-1],
                             atol=1e-6)
  np.testing.assert_allclose(ctx.reference_accuracy("generalist", rows[:1]), acc[-1:],
                             atol=1e-6)


def test_accuracy_counts_valid_entries_in_the_callers_precision():
  """The one accuracy count: NumPy in, float64 out; JAX in (the trainer), float32 out; the
  same fractions, and 0 where nothing is valid."""
  pred = np.array([[0, 1, 2, 2], [1, 1, 0, 0], [0, 0, 0, 0]])
  label = np.array([[0, 1, 1, -1], [1, 0, -1, -1], [-1, -1, -1, -1]])
  host = masstrain.accuracy(pred, label, label >= 0)
  assert host.dtype == np.float64
  np.testing.assert_array_equal(host, [2 / 3, 1 / 2, 0.0])
  dev = jax.jit(masstrain.accuracy)(jnp.asarray(pred), jnp.asarray(label),
                                    jnp.asarray(label >= 0))
  assert dev.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(dev), np.float32([2 / 3, 1 / 2, 0.0]))


def test_nearest_rows_matches_brute_force():
  rng = np.random.default_rng(2)
  keys = 100.0 + rng.normal(size=(30, 50))  # far from the origin: the centring matters
  q = keys[:7] + 0.01 * rng.normal(size=(7, 50))
  d = np.linalg.norm(q[:, None] - keys[None], axis=-1)
  idx, dist = generated.nearest_rows(q, keys, center=np.full(50, 100.0), chunk=8)
  np.testing.assert_array_equal(idx, d.argmin(1))
  np.testing.assert_allclose(dist, d.min(1), rtol=1e-9)
  idx, _ = generated.nearest_rows(keys[:7], keys, exclude_self=True, chunk=8)
  d_self = np.linalg.norm(keys[:7, None] - keys[None], axis=-1)
  d_self[np.arange(7), np.arange(7)] = np.inf
  np.testing.assert_array_equal(idx, d_self.argmin(1))


def test_gap_closure_guards_tiny_denominators():
  g = generated.gap_closure(np.array([0.6, 0.5, 0.9]), np.array([0.5, 0.5, 0.5]),
                            np.array([0.7, 0.505, 0.9]), min_den=0.02)
  assert g["tasks_used"] == 2
  assert g["per_task_mean"] == pytest.approx((0.5 + 1.0) / 2)
  assert g["from_means"] == pytest.approx((2.0 / 3 - 0.5) / (2.105 / 3 - 0.5))
  assert generated.gap_closure(np.ones(2), np.ones(2), np.ones(2))["per_task_mean"] is None


def test_prior_temperature_is_the_given_one_else_the_generators_else_the_priors():
  from types import SimpleNamespace
  from t2w_jax.text import prior
  gen = SimpleNamespace(config={"prior_temperature": 0.25})
  assert baselines.temperature_of(SimpleNamespace(gen=gen), 2.0) == 2.0
  assert baselines.temperature_of(SimpleNamespace(gen=gen)) == 0.25
  assert baselines.temperature_of(SimpleNamespace(gen=None)) == prior.DEFAULT_TEMPERATURE
  # A generator's config always has it (configs/dit.py): no second default hides its loss.
  assert "prior_temperature" in dit_config.get_config()
  with pytest.raises(KeyError):
    baselines.temperature_of(SimpleNamespace(gen=SimpleNamespace(config={})))


# --------------------------------------------------------------------------- free-form text
@pytest.mark.parametrize("i", range(4))
def test_freeform_sentences_parse_back_to_the_class_names(i):
  names = ["red circle", "blue cross", "green star"]
  text = generated.describe(names, i)
  assert text_lib.parse_description(text, singular=True) == names, text
  with pytest.raises(ValueError, match="empty"):
    text_lib.parse_description("  ", singular=True)


@pytest.mark.parametrize("text,names", [
    ("cats vs dogs", ["cat", "dog"]),
    ("Classify: apple; banana; cherry", ["apple", "banana", "cherry"]),
    ("I want to recognise tulips, roses, and buses", ["tulip", "rose", "bus"]),
    ("a model to distinguish between maple trees and oak trees", ["maple tree", "oak tree"]),
    ("red circle, blue star and green heart", ["red circle", "blue star", "green heart"]),
])
def test_freeform_parses_what_a_user_types(text, names):
  # The one parser of descriptions, with the singular the free-form evaluator asks for.
  assert text_lib.parse_description(text, singular=True) == names
  # A known class name keeps its spelling: it is never singularised.
  assert text_lib.parse_description("glasses and red circles", ["glasses"],
                                    singular=True) == ["glasses", "red circle"]


def test_sampler_settings_parse():
  assert generated.parse_setting("ddim:25", 1000) == ("ddim", 25)
  assert generated.parse_setting("ddpm", 100) == ("ddpm", 100)
  with pytest.raises(ValueError, match="ddim:STEPS"):
    generated.parse_setting("ddim", 100)


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_oracle_beats_base_and_baselines_are_sane(results, ctx):
  """The specialist ("oracle") beats the generalist, and a random net is far below it.

  The evaluation reports each method's per-task accuracy on the unseen and held-out splits;
  those of the generalist and the specialist are checked against their per-image
  predictions, and the two are compared per test image, paired, over every task of the
  corpus, by a binomial margin: a split here has four tasks, each specialist early-stopped
  on a few validation images (where no check improved, it is the generalist itself), so a
  difference of split means is within the noise of the float rounding, while a specialist
  no better than the generalist would win each image they disagree on with probability at
  most 1/2.
  """
  b = results["evals"]["baselines"]
  wins = losses = 0
  for split in ("seen", "unseen", "heldout"):
    rows = ctx.rows(split)
    base, label = ctx.reference_predictions("generalist", rows)
    spec, _ = ctx.reference_predictions("oracle", rows)
    valid = label >= 0
    base_right, spec_right = (base == label) & valid, (spec == label) & valid
    wins += int((spec_right & ~base_right).sum())
    losses += int((base_right & ~spec_right).sum())
    # A specialist that early stopping kept at its start is the generalist.
    kept = np.array([ctx.corpus.records[r]["steps"] == 0 for r in rows])
    np.testing.assert_array_equal(spec[kept], base[kept])
    if split == "seen":
      continue  # not in the evaluation's report
    s = b["splits"][split]
    m = s["methods"]
    assert set(m) == set(ALL_METHODS)
    assert len(m["generalist"]["per_task"]) == s["n_tasks"] == len(rows) == 4
    assert s["task_ids"] == [t.task_id for t in ctx.tasks(rows)]
    np.testing.assert_allclose(m["generalist"]["per_task"],
                               base_right.sum(1) / valid.sum(1), rtol=1e-6)
    np.testing.assert_allclose(m["oracle"]["per_task"], spec_right.sum(1) / valid.sum(1),
                               rtol=1e-6)
    # A random net knows nothing: far below the oracle, near chance (1/4 .. 1/2 here).
    assert m["random"]["mean"] < m["oracle"]["mean"] - 0.2
  p_value = binomial_tail(wins + losses, wins)
  assert p_value <= FALSE_PASS, (
      f"the specialist is right on {wins} test images the generalist gets wrong, and wrong "
      f"on {losses} it gets right")
  assert b["ridge_lambda"] in (0.01, 0.1, 1.0, 10.0, 100.0)


def test_report_renders_the_committed_main_table_from_its_results():
  """The committed results of the default main job render to the committed table (whose
  header names the run's directories as the README's command does)."""
  docs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                      "results")
  with open(os.path.join(docs, "default_eval_results.json")) as f:
    results = json.load(f)
  results["meta"].update(corpus_dir="runs/default/corpus", generator_dir="runs/default")
  with open(os.path.join(docs, "default_eval_table.md")) as f:
    assert report.render(results) == f.read()


@pytest.mark.slow
def test_hypernet_keeps_its_best_validating_check(results):
  """The hypernetwork early-stops by the shared rule: no patience in the tiny config, so the
  whole schedule runs; the kept check is a check point, and it is the start exactly when
  no check strictly lowered the validation loss."""
  h = results["evals"]["hypernet"]
  assert h["steps_run"] == 40
  assert h["kept_step"] % 10 == 0 and 0 <= h["kept_step"] <= h["steps_run"]
  assert h["val_loss"] <= h["val_loss_at_start"]
  assert (h["kept_step"] == 0) == (h["val_loss"] == h["val_loss_at_start"])


@pytest.mark.slow
def test_evaluation_writes_json_and_table_with_every_method(results, workdir):
  out = os.path.join(workdir, "eval")
  with open(os.path.join(out, "results.json")) as f:
    saved = json.load(f)  # strict JSON (no NaN)
  with open(os.path.join(out, "table.md")) as f:
    table = f.read()
  assert table == results["table"] == report.render(saved)
  assert {"baselines", "generated", "sampler_ablation", "freeform"} <= set(saved["evals"])
  gen = saved["evals"]["generated"]
  for split in ("unseen", "heldout"):
    s = gen["splits"][split]
    assert 0.0 <= s["mean"] <= s["best_of_k"]["mean"] <= 1.0
    assert len(s["per_sample"]) == 4 and len(s["per_sample"][0]) == 1
    assert s["novelty"]["nn_distance_mean"] > 0
    assert 0.0 <= s["novelty"]["agreement_with_nearest_mean"] <= 1.0
    assert s["gap_closure"]["tasks"] == 4
    # K=1: the weight average of one sample is that sample.
    assert s["weight_average"]["per_task"] == s["per_task"]
  for label in ("**generated** (mean of K=1)", "**generated** (best of K=1)",
                "**generated** (weight average of its K=1 samples)", "generalist",
                "random init", "mean of seen corpus weights", "NN retrieval", "ridge",
                "specialist", "paired by task", "Room closed", "Novelty", "Sampler ablation",
                "Free-form"):
    assert label in table, label
  ab = saved["evals"]["sampler_ablation"]
  assert [(r["sampler"], r["steps"], r["guidance"], r["temperature"]) for r in ab["rows"]] == [
      ("ddim", 2, 1.0, 1.0), ("ddim", 2, 2.0, 1.0), ("ddim", 2, 1.0, 0.0)]
  assert ab["skipped"] and "ddim:1000" in ab["skipped"][0]
  ff = saved["evals"]["freeform"]["variants"]
  assert set(ff) == set(generated.FREEFORM_VARIANTS)
  assert ff["sentence"]["parsed_exactly"] == 1.0


@pytest.mark.slow
def test_generation_is_deterministic(results, workdir):
  from t2w_jax import api
  gen = api.load(workdir)
  c = EvalContext.create(os.path.join(workdir, "corpus"), gen=gen)
  tasks = c.tasks(c.rows("unseen", 2))
  emb, mask = c.class_text(tasks)
  a, b = (generated.sample_nets(c, emb, mask, jax.random.PRNGKey(3), num_samples=1,
                                sampler="ddim", steps=2, guidance=1.0) for _ in range(2))
  np.testing.assert_array_equal(a, b)
  # The same key as run.evaluate gives the same accuracies it reported.
  again = registry.get("generated")(c, run.evaluator_rng(0, "generated"), splits=("unseen",),
                                    num_samples=1, steps=2, novelty=False)
  assert again["splits"]["unseen"]["per_sample"] == \
      results["evals"]["generated"]["splits"]["unseen"]["per_sample"]


def test_paired_difference():
  p = report.paired_difference([0.5, 0.7, 0.6], [0.4, 0.7, 0.3])
  d = np.array([0.1, 0.0, 0.3])
  assert p["n"] == 3 and p["wins"] == 2
  np.testing.assert_allclose(p["mean"], d.mean())
  np.testing.assert_allclose(p["se"], d.std(ddof=1) / np.sqrt(3))
  assert report.paired_difference([0.5], [0.4])["se"] is None
  assert report.paired_difference([0.5, 0.6], [0.4]) is None
  assert report.paired_difference([], []) is None
