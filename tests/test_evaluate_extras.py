"""Fine-tune curves, weight enhancement, text-guided fusion and weight matching, on a tiny run."""
import csv
import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import dit as dit_config
from t2w_jax import api
from t2w_jax import generator as generator_lib
from t2w_jax.evaluate import enhance as enhance_lib
from t2w_jax.evaluate import fewshot as fewshot_lib
from t2w_jax.evaluate import finetune as finetune_lib
from t2w_jax.evaluate import fusion as fusion_lib
from t2w_jax.evaluate import registry
from t2w_jax.evaluate.context import EvalContext
from t2w_jax.train import state as state_lib
from t2w_jax.weights import permute_params
from t2w_jax.weights import sample_perms
from t2w_jax.zoo import make_corpus as make_corpus_lib
from t2w_jax.zoo import masstrain

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ctx(tiny_corpus_dir):
  """The conftest's tiny corpus and a freshly initialised tiny generator, opened as an
  EvalContext.

  The evaluators only need a generator's spec and parameters, not good ones; building it
  from init (instead of ``loop.train``, tested elsewhere) keeps this file inside its time.
  """
  context = EvalContext.create(tiny_corpus_dir)
  d = dit_config.get_config("tiny")
  spec = generator_lib.spec_from_corpus(d, context.corpus)
  dit = generator_lib.build_dit(spec)
  x, t, text = generator_lib.dummy_inputs(spec)
  lids, bids = spec.tokenizer.layer_ids, spec.tokenizer.block_ids
  params = jax.jit(lambda r: dit.init(r, x, t, lids, bids, text)["params"])(
      jax.random.PRNGKey(0))
  context.gen = api.Generator(spec, state_lib.unbox(params))
  return context


def _net(seed: int, widths=(4, 6, 5), embed_dim: int = 7) -> dict:
  """Random SubtaskCNN-shaped params (numpy: no compile needed for the matching tests)."""
  rng = np.random.default_rng(seed)
  params, cin = {}, 3
  for i, w in enumerate(widths):
    params[f"conv_{i}"] = {"kernel": rng.normal(size=(3, 3, cin, w)).astype(np.float32),
                           "bias": rng.normal(size=(w,)).astype(np.float32)}
    cin = w
  params["head"] = {"kernel": rng.normal(size=(cin, embed_dim)).astype(np.float32),
                    "bias": rng.normal(size=(embed_dim,)).astype(np.float32)}
  return params


def _assert_trees_equal(a, b, atol=0.0):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


# ------------------------------------------------------------------ weight matching


def test_weight_matching_recovers_a_known_permutation():
  a = _net(0)
  b = permute_params(a, sample_perms(jax.random.PRNGKey(1), a))
  # The shuffle is real: B's weights differ from A's.
  assert not np.allclose(np.asarray(a["conv_1"]["kernel"]), np.asarray(b["conv_1"]["kernel"]))
  perms = fusion_lib.match_weights(a, b)
  _assert_trees_equal(permute_params(b, perms), a)
  # Aligned averaging of a net and its permuted copy is the net; plain averaging is not.
  _assert_trees_equal(fusion_lib.aligned_average(a, b), a, atol=1e-6)
  plain = jax.tree.map(lambda x, y: (np.asarray(x) + np.asarray(y)) / 2, a, b)
  assert not np.allclose(np.asarray(plain["conv_0"]["kernel"]), np.asarray(a["conv_0"]["kernel"]))


def test_weight_matching_of_unrelated_nets_gives_permutations_and_raises_on_mismatch():
  a, b = _net(0), _net(5)
  perms = fusion_lib.match_weights(a, b)
  for p, w in zip(perms, (4, 6, 5)):
    assert sorted(p.tolist()) == list(range(w))
  # Alignment can only raise the matching objective (identity is a feasible start).
  def score(x, y):
    return sum(float(np.vdot(np.asarray(u), np.asarray(v)))
               for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
  assert score(a, permute_params(b, perms)) >= score(a, b) - 1e-9
  with pytest.raises(ValueError, match="same layout"):
    fusion_lib.match_weights(a, _net(0, widths=(4, 6, 6)))


def test_choose_pairs_prefers_disjoint_small_unions():
  records = [{"class_ids": c} for c in ([0, 1], [1, 2], [3, 4], [5, 6, 7, 8], [0, 1, 2])]
  # Disjoint with union <= 4: (0, 2); then 1 can only pair with 3 (too big) or 4 (superset).
  assert fusion_lib.choose_pairs(records, range(5), 1, 4) == [(0, 2)]
  pairs = fusion_lib.choose_pairs(records, range(5), 3, 4)
  assert pairs[0] == (0, 2)
  for a, b in pairs:
    sa, sb = set(records[a]["class_ids"]), set(records[b]["class_ids"])
    assert not (sa <= sb or sb <= sa)  # the union is a new task
    assert len(sa | sb) <= 4  # never more classes than the generator makes nets for
  assert len({r for p in pairs for r in p}) == 2 * len(pairs)  # each row used once


# ------------------------------------------------------------------ evaluators on a tiny run


def test_registered():
  assert registry.get("finetune").fn is finetune_lib.finetune_curves
  assert registry.get("enhance").fn is enhance_lib.enhance
  assert registry.get("fusion").fn is fusion_lib.fusion


@pytest.mark.slow
def test_finetune_curves(ctx, tmp_path):
  trainer = ctx.corpus.meta["trainer"]
  out = finetune_lib.finetune_curves(ctx, jax.random.PRNGKey(0), num_tasks=2,
                                     eval_every=trainer["eval_every"], nets_per_chunk=6,
                                     out_dir=str(tmp_path))
  steps = out["steps"]
  assert steps == list(range(0, trainer["steps"] + 1, trainer["eval_every"]))
  assert set(out["curves"]) == {"generated", "generalist", "random"}
  for c in out["curves"].values():
    assert len(c["mean"]) == len(c["std"]) == len(steps)
    assert all(0.0 <= m <= 1.0 for m in c["mean"])
  rnd = out["curves"]["random"]["mean"]
  assert rnd[-1] > rnd[0] + 0.05, rnd
  # Same recipe as the corpus trainer: from the generalist with the task's seed, the curve
  # at the step early stopping kept is the corpus (specialist) net, so its accuracy is the
  # one the corpus recorded. (The weights agree to ~1e-5, so the predictions are the same.)
  records = [ctx.corpus.records[r] for r in ctx.rows("unseen", 2)]
  per = out["per_task"]
  assert per["task_ids"] == [r["task_id"] for r in records]
  curves = out["per_task_curves"]["generalist"]
  kept = [curves[i][r["steps"] // trainer["eval_every"]] for i, r in enumerate(records)]
  np.testing.assert_allclose(kept, [r["trained_acc"] for r in records], atol=1e-6)
  np.testing.assert_allclose(per["initial"]["generalist"], [r["base_acc"] for r in records],
                             atol=1e-6)
  assert out["final"]["generalist"] == pytest.approx(np.mean(per["final"]["generalist"]))
  # Files.
  with open(out["csv"]) as f:
    table = list(csv.DictReader(f))
  assert len(table) == 3 * len(steps)
  assert {r["method"] for r in table} == {"generated", "generalist", "random"}
  with open(out["png"], "rb") as f:
    assert f.read(8) == PNG_MAGIC
  assert os.path.getsize(out["png"]) > 1000
  assert "| random |" in out["markdown"]


def test_train_curves_rejects_bad_eval_every(ctx):
  spec = finetune_lib.masstrain.TrainerSpec(steps=10)
  with pytest.raises(ValueError, match="divide"):
    finetune_lib.train_curves(ctx.model, spec, ctx.corpus.layout, ctx.data,
                              np.zeros((1, ctx.corpus.layout.total)), [[0]], [[True]], [0],
                              eval_every=3)


@pytest.mark.slow
def test_enhance(ctx, tmp_path):
  num_t = ctx.gen.config["num_timesteps"]
  out = enhance_lib.enhance(ctx, jax.random.PRNGKey(0), num_tasks=2, t=(0, 5, num_t + 50),
                            chain_steps=(1,), interpolate=(0.0, 1.0), nn_counts=(0, 1),
                            few_shot_steps=50, out_dir=str(tmp_path))
  # The level above T is dropped; t = 0 has no chain to count steps of.
  assert [tuple(s) for s in out["settings"] if s[0] == "denoise"] == [
      ("denoise", "t=0"), ("denoise", "t=5, 1 step")]
  assert set(out["inputs"]) == set(enhance_lib.INPUTS)
  assert out["num_select"] == out["num_report"] == 2  # 2 splits x 2 tasks, every other one
  labels = [tuple(s) for s in out["settings"]]
  for kind, r in out["inputs"].items():
    assert len(r["sweep"]) == len(labels)
    # Every family's identity setting (t=0, a=0, m=0) is the input net itself.
    for ident in (("denoise", "t=0"), ("noise", "t=0"), ("interpolate", "a=0"),
                  ("nn_average", "m=0")):
      assert r["sweep"][labels.index(ident)] == pytest.approx(r["before"], abs=1e-12), kind
    # a = 1 is the generated net whatever the input: the same figure for every kind.
    assert r["sweep"][labels.index(("interpolate", "a=1"))] == pytest.approx(
        out["inputs"]["converged"]["sweep"][labels.index(("interpolate", "a=1"))], abs=1e-12)
    for fam, c in r["chosen"].items():
      assert tuple(out["settings"][c["index"]]) == (fam, c["setting"])
      assert c["test"] == pytest.approx(r["sweep"][c["index"]], abs=1e-12)
      assert c["vs_input"]["mean"] == pytest.approx(c["test"] - r["before"], abs=1e-9)
  # The converged input is the corpus's specialist, measured on the report tasks (odd
  # positions of each split).
  rows = [r for s in ("unseen", "heldout") for r in ctx.rows(s, 2)[1::2]]
  oracle = np.mean([ctx.corpus.records[r]["trained_acc"] for r in rows])
  assert out["inputs"]["converged"]["before"] == pytest.approx(oracle, abs=1e-6)
  assert out["default_t"]["converged"] == out["inputs"]["converged"]["chosen"]["denoise"][
      "setting"]
  with open(out["png"], "rb") as f:
    assert f.read(8) == PNG_MAGIC


def test_enhance_refuses_settings_it_cannot_run(ctx):
  num_t = ctx.gen.config["num_timesteps"]
  with pytest.raises(ValueError, match="no enhancement noise level"):
    enhance_lib.enhance(ctx, jax.random.PRNGKey(0), num_tasks=2, t=(num_t + 1,))
  with pytest.raises(ValueError, match="num_tasks must be >= 2"):
    enhance_lib.enhance(ctx, jax.random.PRNGKey(0), num_tasks=1, t=(0,))


def test_under_trained_nets_are_the_corpus_trainers_nets_at_that_step(ctx):
  """train_for with the corpus recipe from the generalist, stopped at the step the corpus
  kept, is the corpus's specialist: the same batches, schedule and seed."""
  trainer = ctx.corpus.meta["trainer"]
  rows = ctx.rows("unseen", 3)
  tasks = ctx.tasks(rows)
  ids, mask = ctx.padded(tasks)
  spec = finetune_lib.masstrain.TrainerSpec(steps=trainer["steps"],
                                            batch_size=trainer["batch_size"],
                                            learning_rate=trainer["learning_rate"],
                                            nets_per_chunk=2)
  kept = [ctx.corpus.records[r]["steps"] for r in rows]
  base = np.repeat(np.asarray(ctx.corpus.base, np.float32)[None], 3, 0)
  nets = finetune_lib.train_for(ctx.model, spec, ctx.corpus.layout, ctx.data, base, ids, mask,
                                [t.seed for t in tasks], kept)
  np.testing.assert_allclose(nets, np.asarray(ctx.corpus.weights[rows]), atol=2e-4)
  zero = finetune_lib.train_for(ctx.model, spec, ctx.corpus.layout, ctx.data, base, ids, mask,
                                [t.seed for t in tasks], [0, 0, 0])
  np.testing.assert_array_equal(zero, base)
  with pytest.raises(ValueError, match="one step count"):
    finetune_lib.train_for(ctx.model, spec, ctx.corpus.layout, ctx.data, base, ids, mask,
                           [t.seed for t in tasks], [trainer["steps"] + 1, 0, 0])


def test_shot_data_holds_out_a_fifth_of_the_shots(ctx):
  data = ctx.data
  for k, (n_train, n_val) in ((1, (1, 1)), (5, (4, 1)), (10, (8, 2))):
    d = fewshot_lib.shot_data(data, k, seed=0)
    ci, vi = np.asarray(d.class_index), np.asarray(d.val_index)
    assert ci.shape[1] == n_train and vi.shape[1] == n_val
    assert (np.asarray(d.class_count) == n_train).all()
    full = np.asarray(data.class_index)
    for c in range(ci.shape[0]):
      allowed = set(full[c, :int(data.class_count[c])])
      assert set(ci[c]) <= allowed and set(vi[c]) <= allowed  # never a validation row
      if k > 1:
        assert not set(ci[c]) & set(vi[c])
      else:
        assert set(ci[c]) == set(vi[c])
    # The same seed draws the same shots; the test images are untouched.
    again = fewshot_lib.shot_data(data, k, seed=0)
    np.testing.assert_array_equal(np.asarray(again.class_index), ci)
    assert d.test_index is data.test_index
  assert fewshot_lib.shot_data(data, 0, seed=0) is data
  with pytest.raises(ValueError, match="has only"):
    fewshot_lib.shot_data(data, 10_000, seed=0)


def test_fewshot_study_reports_what_api_few_shot_returns(ctx, monkeypatch, tmp_path):
  """The study's fine-tuned numbers are the test accuracies of the nets api.few_shot_flat
  (api.few_shot's batched core) returned, for the tasks, images, keys and starts a user
  would pass: replacing the function replaces every number."""
  base = np.asarray(ctx.corpus.base, np.float32)
  other = np.asarray(ctx.corpus.weights[0], np.float32)  # stands in for the generated start
  calls = []

  def fake(gen, texts, images, labels, *, rngs, inits=None, **settings):
    n = len(texts)
    calls.append(dict(texts=texts, images=images, labels=labels, rngs=rngs, inits=inits,
                      settings=settings))
    start = (np.repeat(other[None], n, 0) if inits is None else
             np.stack([np.asarray(gen.layout.flatten(w)) for w in inits]))
    return {"params": start[::-1].copy(), "start": start, "class_emb": [None] * n,
            "kept_step": np.full(n, 5), "steps_run": np.full(n, 10),
            "train_images": np.zeros(n, int), "val_images": np.zeros(n, int)}

  monkeypatch.setattr(api, "few_shot_flat", fake)
  out = fewshot_lib.fewshot(ctx, jax.random.PRNGKey(0), splits=("unseen",), num_tasks=2,
                            shots=(1, 5), train_steps=20, eval_every=5, patience=2,
                            out_dir=str(tmp_path))
  methods = list(fewshot_lib.METHODS)
  assert out["shots"] == ["1", "5"] and out["methods"] == methods
  assert len(calls) == 2 * len(methods)
  tasks = ctx.tasks(ctx.rows("unseen", 2))
  names = [[ctx.corpus.class_names[c] for c in t.class_ids] for t in tasks]
  given = fewshot_lib.given_starts(ctx, tasks, methods[1:],
                                   jax.random.split(jax.random.PRNGKey(0))[1])
  for j, (k, method) in enumerate((k, m) for k in (1, 5) for m in methods):
    call = calls[j]
    assert call["texts"] == names
    assert call["settings"]["max_steps"] == 20 and call["settings"]["patience"] == 2
    # The starts of a task share its key: the same batches and validation images.
    np.testing.assert_array_equal(np.asarray(call["rngs"]), np.asarray(calls[0]["rngs"]))
    for i, t in enumerate(tasks):  # k shots of each class, labelled by its slot
      np.testing.assert_array_equal(np.bincount(call["labels"][i]), [k] * len(t.class_ids))
    if method == "generated":
      assert call["inits"] is None  # api.few_shot's own start
    else:
      got = np.stack([np.asarray(ctx.gen.layout.flatten(w)) for w in call["inits"]])
      np.testing.assert_array_equal(got, given[method])
    start = given[method] if method != "generated" else np.repeat(other[None], 2, 0)
    r = out["per_k"][str(k)]
    assert r["early_stopped"]["unseen"][method]["per_task"] == ctx.accuracy(
        start[::-1], tasks).tolist()
    assert out["start"]["unseen"][method]["per_task"] == ctx.accuracy(start, tasks).tolist()
    assert r["kept_step"][method] == 5
  np.testing.assert_array_equal(given["generalist"], np.repeat(base[None], 2, 0))
  with open(out["png"], "rb") as f:
    assert f.read(8) == PNG_MAGIC
  assert "| 5 |" in out["markdown"]


@pytest.mark.slow
def test_fewshot_study_number_equals_calling_api_few_shot(ctx):
  """The study's accuracy for a task is exactly that of the net api.few_shot gives a user
  for the same task, images, key and start."""
  kw = dict(max_steps=20, eval_every=5, patience=2)
  out = fewshot_lib.fewshot(ctx, jax.random.PRNGKey(0), splits=("unseen",), num_tasks=2,
                            shots=(20,), methods=("generated", "random"),
                            train_steps=20, eval_every=5, patience=2, nets_per_chunk=1)
  tasks = ctx.tasks(ctx.rows("unseen", 2))
  task_rng, init_rng = jax.random.split(jax.random.PRNGKey(0))
  keys = jax.random.split(task_rng, len(tasks))
  images, labels = fewshot_lib.task_images(ctx, tasks, 20, 0)
  random = fewshot_lib.given_starts(ctx, tasks, ["random"], init_rng)["random"]
  moved = False
  for i, t in enumerate(tasks):
    names = [ctx.corpus.class_names[c] for c in t.class_ids]
    for method, init in (("generated", None), ("random", ctx.gen.layout.unflatten(random[i]))):
      net, info = api.few_shot(ctx.gen, names, images[i], labels[i], rng=keys[i], init=init,
                               **kw)
      acc = ctx.accuracy(np.asarray(ctx.gen.layout.flatten(net.params))[None], [t])[0]
      assert out["per_k"]["20"]["early_stopped"]["unseen"][method]["per_task"][i] == acc
      moved |= info["kept_step"] > 0
  assert moved  # some net was fine-tuned, so the equality is not the start's


def _ensemble_accuracy(wide, members, task) -> tuple[float, int]:
  """An output ensemble's accuracy computed directly: the members' softmax probabilities
  over the task's classes, averaged, on the task's test images (``masstrain.eval_set``);
  and the number of those images."""
  layout = wide.corpus.layout
  model = wide.model.clone(conv_impl="lax")
  ids, mask = wide.padded([task])
  classes, mask = jnp.asarray(ids[0]), jnp.asarray(mask[0])
  rows, valid = masstrain.eval_set(wide.data, classes, mask)
  x = wide.data.test_images[rows.reshape(-1)]
  emb = wide.data.class_emb[classes]
  probs = np.mean([np.asarray(jax.nn.softmax(masstrain.masked_logits(
      model, layout.unflatten(jnp.asarray(f)), x, emb, mask), -1)) for f in members], 0)
  labels = np.repeat(np.arange(ids.shape[1]), rows.shape[1])
  valid = np.asarray(valid).reshape(-1)
  return float((probs.argmax(-1) == labels)[valid].mean()), int(valid.sum())


def test_fusion_trains_on_the_devices_its_nets_fill():
  """The fusion study's trainer calls use every local device, as the corpus run does, once
  the nets fill a chunk on each; fewer nets use the first devices, a chunk each, so that
  no device trains padding only."""
  devices = jax.local_devices()
  assert len(devices) == 8
  for n, c, want in ((1, 2, 1), (2, 2, 1), (3, 2, 2), (4, 2, 2), (5, 2, 3), (15, 2, 8),
                     (16, 2, 8), (40, 2, 8), (96, 8, 8), (7, 8, 1)):
    mesh = fusion_lib.train_mesh(n, c)
    assert mesh.axis_names == ("nets",)
    assert list(mesh.devices) == devices[:want], (n, c)
  two = devices[:2]
  assert list(fusion_lib.train_mesh(48, 8, two).devices) == two
  assert list(fusion_lib.train_mesh(3, 8, two).devices) == two[:1]


@pytest.mark.slow
def test_fusion(ctx, tmp_path):
  # Every call of the trainers the evaluator makes, with what it was given and gave back.
  calls, real_make_trainer = [], masstrain.make_trainer

  def recording(model, spec, mesh=None, *, own_starts=False):
    train = real_make_trainer(model, spec, mesh, own_starts=own_starts)

    def run(data, starts, tasks):
      res = train(data, starts, tasks)
      calls.append(dict(model=model, spec=spec, mesh=mesh, own_starts=own_starts, data=data,
                        starts=starts, tasks=tasks, result=res))
      return res
    return run

  # The independent parents' step cap at 2x the corpus trainer's (4x by default, checked
  # below): fewer steps to run, and still a factor that 1 is not.
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(masstrain, "make_trainer", recording)
    out = fusion_lib.fusion(ctx, jax.random.PRNGKey(0), num_pairs=2, num_samples=2,
                            indep_cap_factor=2, out_dir=str(tmp_path))
  assert list(out["methods"]) == list(fusion_lib.METHODS)
  assert {k: m["size"] for k, m in out["methods"].items() if m["size"] != 1} == {"ensemble": 2}
  p_n = out["num_pairs"]
  assert 1 <= p_n <= 2 and len(out["pairs"]) == p_n
  for m in out["methods"].values():
    assert 0.0 <= m["mean"] <= 1.0
  rec = {r["task_id"]: i for i, r in enumerate(ctx.corpus.records)}
  rows_a = [rec[p["task_a"]] for p in out["pairs"]]
  rows_b = [rec[p["task_b"]] for p in out["pairs"]]
  for p, ra, rb in zip(out["pairs"], rows_a, rows_b):
    acc = p["accuracy"]
    assert acc["generated_best"] >= acc["generated"] - 1e-6
    assert len(p["union"]) == len(set(p["union"])) <= ctx.gen.config["max_classes"]
    assert (p["split_a"], p["split_b"]) == (ctx.corpus.records[ra]["split"],
                                            ctx.corpus.records[rb]["split"])
  # Every pair's figures, recomputed from public pieces on a context wide enough for the
  # unions.
  unions = [fusion_lib.union_task(*ctx.tasks([ra, rb]), task_id=-1 - i)
            for i, (ra, rb) in enumerate(zip(rows_a, rows_b))]
  for p, u in zip(out["pairs"], unions):
    assert p["union"] == [ctx.corpus.class_names[c] for c in u.class_ids]
  kmax = max([ctx.max_classes] + [len(u.class_ids) for u in unions])
  wide = dataclasses.replace(ctx, max_classes=kmax)
  layout = ctx.corpus.layout
  base = np.asarray(ctx.corpus.base, np.float32)
  for p, u, ra, rb in zip(out["pairs"], unions, rows_a, rows_b):
    fa = np.asarray(ctx.corpus.weights[ra], np.float32)
    fb = np.asarray(ctx.corpus.weights[rb], np.float32)
    aligned = np.asarray(layout.flatten(fusion_lib.aligned_average(layout.unflatten(fa),
                                                                   layout.unflatten(fb))))
    nets = {"parent_a": fa, "parent_b": fb, "average": (fa + fb) / 2, "aligned": aligned,
            "generalist": base}
    for name, net in nets.items():
      assert wide.accuracy(net[None], [u])[0] == pytest.approx(p["accuracy"][name], abs=1e-6)
    # The ensemble: the mean of the two parents' softmax, computed here without the context
    # (one test image's worth of slack for float rounding in the averaging).
    direct, images = _ensemble_accuracy(wide, [fa, fb], u)
    assert abs(direct - p["accuracy"]["ensemble"]) <= 1.0 / images + 1e-9
    assert wide.accuracy(np.stack([fa, fb])[None], [u])[0] == p["accuracy"]["ensemble"]
    perms = fusion_lib.match_weights(layout.unflatten(fa), layout.unflatten(fb))
    assert p["units_moved"]["corpus"] == pytest.approx(fusion_lib.units_moved(perms))
  # The generated nets, sampled with the evaluator's key (split off for generation).
  gen_rng, init_rng = jax.random.split(jax.random.PRNGKey(0))
  emb, mask = wide.class_text(unions)
  gen = np.asarray(api.sample_flat(ctx.gen, np.repeat(emb, 2, 0), np.repeat(mask, 2, 0),
                                   rng=gen_rng))
  acc = wide.accuracy(gen, [u for u in unions for _ in range(2)]).reshape(len(unions), 2)
  for i, p in enumerate(out["pairs"]):
    assert p["accuracy"]["generated"] == pytest.approx(acc[i].mean(), abs=1e-12)
    assert p["accuracy"]["generated_best"] == pytest.approx(acc[i].max(), abs=1e-12)
  # The independent parents: the evaluator's random inits (its second key), trained with
  # the corpus recipe at the cap factor times its step cap, early-stopped, in one call of
  # the corpus trainer (own starts). The call is checked, not made again: the evaluator
  # trains over several devices, whose program rounds unlike a one-device one, so a second
  # training may early-stop elsewhere.
  assert registry.get("fusion").options["indep_cap_factor"] == 4
  trainer = make_corpus_lib.trainer_spec(
      ml_collections.ConfigDict({"trainer": ctx.corpus.meta["trainer"]}))
  indep_spec = dataclasses.replace(trainer, steps=2 * trainer.steps)
  inits = finetune_lib.random_inits(ctx.model, layout, int(ctx.corpus.meta["image_size"]),
                                    init_rng, 2 * p_n)
  tasks_ab = ctx.tasks(rows_a) + ctx.tasks(rows_b)
  ids, tmask = wide.padded(tasks_ab)
  seeds = np.array([t.seed for t in tasks_ab], np.uint32)
  own_starts = [c for c in calls if c["own_starts"]]
  assert len(own_starts) == 1, calls
  call = own_starts[0]
  assert call["spec"] == indep_spec
  assert call["model"] is ctx.model and call["data"] is ctx.data
  n = 2 * p_n  # the nets after n are copies of the last, filling the last chunk
  # Spread over as many devices as the nets fill chunks (fusion.train_mesh), no more.
  c = indep_spec.nets_per_chunk
  assert call["mesh"].size == fusion_lib.train_mesh(n, c).size == -(-n // c) < jax.device_count()
  assert len(call["tasks"].seeds) == c * call["mesh"].size
  np.testing.assert_array_equal(np.asarray(jax.vmap(layout.flatten)(call["starts"]))[:n],
                                inits)
  np.testing.assert_array_equal(np.asarray(call["tasks"].classes)[:n], ids)
  np.testing.assert_array_equal(np.asarray(call["tasks"].mask)[:n], tmask)
  np.testing.assert_array_equal(np.asarray(call["tasks"].seeds)[:n], seeds)
  res = jax.tree.map(lambda a: np.asarray(a)[:n], call["result"])
  trained = np.asarray(jax.vmap(layout.flatten)(res.params))
  # Own starts: the starting accuracy is each random init's own, and the trained one each
  # kept net's own.
  np.testing.assert_allclose(np.asarray(res.base_acc), ctx.accuracy(inits, tasks_ab), atol=1e-6)
  own = np.asarray(res.trained_acc)
  np.testing.assert_allclose(own, ctx.accuracy(trained, tasks_ab), atol=1e-6)
  ind = out["independent_parents"]
  assert ind["step_cap"] == indep_spec.steps
  assert ind["ran_to_cap"] == int(np.sum(np.asarray(res.steps_run) >= indep_spec.steps))
  assert ind["own_acc"]["mean"] == pytest.approx(own.mean(), abs=1e-6)
  moved = []
  for i, (p, u) in enumerate(zip(out["pairs"], unions)):
    assert p["indep_own_acc"] == pytest.approx([own[i], own[p_n + i]], abs=1e-6)
    ia, ib = trained[i], trained[p_n + i]
    aligned_b, perms = fusion_lib.align(layout.unflatten(ia), layout.unflatten(ib))
    merged = np.asarray(layout.flatten(fusion_lib.aligned_average(layout.unflatten(ia),
                                                                  layout.unflatten(ib))))
    # Aligning is a re-labelling of B's units: the same function, the same accuracy.
    for name, net in (("indep_parent_a", ia), ("indep_parent_b", ib),
                      ("indep_average", (ia + ib) / 2), ("indep_aligned", merged),
                      ("indep_parent_b", np.asarray(layout.flatten(aligned_b)))):
      assert wide.accuracy(net[None], [u])[0] == pytest.approx(p["accuracy"][name], abs=1e-6)
    moved.append(fusion_lib.units_moved(perms))
    assert p["units_moved"]["indep"] == pytest.approx(moved[-1])
  # Independent inits leave real permutations to find; the corpus parents (one basin) not.
  assert ind["units_moved"]["mean"] > out["corpus_units_moved"]["mean"]
  # The specialists: one call from the shared start, as few devices as the nets fill.
  shared = [k for k in calls if not k["own_starts"]]
  assert len(shared) == 1 and shared[0]["mesh"].size == -(-p_n // trainer.nets_per_chunk)
  # The specialist on the union: the corpus trainer from the generalist; started through
  # the own-starts path here, every net from the generalist.
  ids, umask = wide.padded(unions)
  seeds = np.array([u.seed for u in unions], np.uint32)
  train = masstrain.make_trainer(ctx.model, trainer, own_starts=True)
  starts = jax.vmap(layout.unflatten)(np.repeat(base[None], len(unions), 0))
  res = train(ctx.data, starts, masstrain.TaskBatch(ids, umask, seeds))
  spec_flat = np.asarray(jax.vmap(layout.flatten)(res.params))
  for i, p in enumerate(out["pairs"]):
    assert wide.accuracy(spec_flat[i:i + 1], [unions[i]])[0] == pytest.approx(
        p["accuracy"]["specialist"], abs=1e-6)
  # Summaries: per-method mean and std over pairs; generated − method, paired by pair.
  for name, m in out["methods"].items():
    per = [p["accuracy"][name] for p in out["pairs"]]
    assert m["mean"] == pytest.approx(np.mean(per), abs=1e-12)
    assert m["std"] == pytest.approx(np.std(per), abs=1e-12)
  assert set(out["paired"]) == set(fusion_lib.METHODS) - {"generated", "generated_best"}
  for name, d in out["paired"].items():
    diff = np.array([p["accuracy"]["generated"] - p["accuracy"][name] for p in out["pairs"]])
    assert d["n"] == p_n and d["wins"] == int(np.sum(diff > 0))
    assert d["mean"] == pytest.approx(diff.mean(), abs=1e-12)
    if p_n > 1:
      assert d["se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(p_n), abs=1e-12)
  assert sum(b["n"] for b in out["by_split"].values()) == p_n
  assert "ensemble (2× the parameters)" in out["markdown"]
  with open(out["png"], "rb") as f:
    assert f.read(8) == PNG_MAGIC
  with pytest.raises(ValueError, match="max_classes"):
    fusion_lib.fusion(ctx, jax.random.PRNGKey(0), max_union=ctx.gen.config["max_classes"] + 1)
