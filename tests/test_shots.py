"""Shot-conditioned generation (``t2w_jax.shots``) and the DiT's text head: contracts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dit as dit_config
from t2w_jax import api
from t2w_jax import generator as generator_lib
from t2w_jax import shots as shots_lib
from t2w_jax import task_loss
from t2w_jax.errors import ConfigError
from t2w_jax.evaluate import shots as shots_eval
from t2w_jax.evaluate.context import EvalContext
from t2w_jax.evaluate import fewshot
from t2w_jax.models import DiT
from t2w_jax.train import state as state_lib

TEXT = "red circle and blue star"


@pytest.fixture(scope="module")
def ctx(tiny_corpus_dir):
  """The tiny corpus with a freshly initialised tiny generator that has a text head."""
  context = EvalContext.create(tiny_corpus_dir)
  cfg = dit_config.get_config("tiny")
  cfg.model.text_head = 16
  spec = generator_lib.spec_from_corpus(cfg, context.corpus)
  params = generator_lib.init_dit_params(spec, jax.random.PRNGKey(0))
  context.gen = api.Generator(spec, state_lib.unbox(params))
  return context


def _shots(ctx, k):
  tasks = ctx.tasks(ctx.rows("unseen", 2))
  ids, mask = ctx.padded(tasks)
  emb, _ = ctx.class_text(tasks)
  return tasks, emb, mask, shots_eval.task_shots(fewshot.shot_data(ctx.data, k, 0), ids, mask)


@pytest.mark.slow
def test_text_head_is_zero_at_init_and_a_function_of_the_class_set():
  m = DiT(width=32, depth=1, num_heads=2, mlp_ratio=2.0, block_size=16, num_layers=3,
          max_blocks=4, text_dim=8, text_head=16)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
  t = jnp.array([3, 7])
  lids, bids = jnp.array([0, 0, 1, 2, 2]), jnp.array([0, 1, 0, 0, 1])
  emb = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8))
  cmask = jnp.array([[1, 1, 0], [1, 1, 1]], bool)
  text = {"class_emb": emb, "class_mask": cmask, "fused": jnp.ones((2, 8)),
          "log_prior": jnp.zeros((2, 3))}
  variables = m.init(jax.random.PRNGKey(2), x, t, lids, bids, text)
  assert float(jnp.abs(m.apply(variables, x, t, lids, bids, text)).max()) == 0.0
  # Give the head's output layer weights: the output then depends on the classes as a set.
  params = state_lib.unbox(variables)["params"]
  head = params["text_head"]["out"]
  params["text_head"]["out"] = {"kernel": jax.random.normal(jax.random.PRNGKey(3),
                                                            head["kernel"].shape),
                                "bias": head["bias"]}
  from t2w_jax.models.text_head import TextHead
  th = TextHead(16, 2, 5, 16)
  hp = {"params": params["text_head"]}
  drop = jnp.zeros((2,), bool)
  out = th.apply(hp, emb, cmask, drop)
  assert float(jnp.abs(out).max()) > 0
  perm = th.apply(hp, emb[:, ::-1], cmask[:, ::-1], drop)
  np.testing.assert_allclose(np.asarray(out), np.asarray(perm), atol=1e-5)
  junk = emb.at[0, 2].set(100.0)  # a padded slot's content does not matter
  np.testing.assert_allclose(np.asarray(th.apply(hp, junk, cmask, drop)), np.asarray(out),
                             atol=1e-6)
  dropped = th.apply(hp, emb, cmask, jnp.array([True, False]))
  assert float(jnp.abs(dropped[0]).max()) == 0.0
  np.testing.assert_allclose(np.asarray(dropped[1]), np.asarray(out[1]), atol=0)


def test_task_shots_weights_and_labels(ctx):
  tasks, _, mask, sh = _shots(ctx, 5)
  n_train, n_val = 4, 1
  for i in range(len(tasks)):
    k = int(mask[i].sum())
    np.testing.assert_allclose(sh.train_w[i].sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(sh.val_w[i].sum(), 1.0, rtol=1e-6)
    assert (sh.train_w[i] > 0).sum() == k * n_train and (sh.val_w[i] > 0).sum() == k * n_val
    assert set(np.unique(sh.labels[i][sh.train_w[i] > 0])) == set(range(k))
  assert sh.held_out.all()
  # One shot per class: the shot trains and validates, so nothing is held out.
  _, _, _, one = _shots(ctx, 1)
  assert ((one.train_w > 0).sum(1) == (one.val_w > 0).sum(1)).all()
  assert not one.held_out.any()


@pytest.mark.slow
def test_refiner_keeps_the_start_without_steps_and_lowers_the_shots_loss(ctx):
  gen = ctx.gen
  spec = gen.spec
  tasks, emb, mask, sh = _shots(ctx, 5)
  model = task_loss.subtask_model(spec.cnn, spec.text_dim)
  z0 = shots_lib.to_tokens(spec, api.sample_flat(gen, emb, mask, rng=jax.random.PRNGKey(1)))
  cfg = shots_lib.DEFAULTS._replace(steps=0)
  z, info = shots_lib.make_refiner(spec, model, cfg)(gen.params, z0, emb, mask, sh,
                                                     jax.random.PRNGKey(2))
  np.testing.assert_array_equal(np.asarray(z), np.asarray(z0 * spec.tokenizer.mask))
  assert (np.asarray(info["kept_check"]) == 0).all()
  for prior in shots_lib.PRIORS:
    cfg = shots_lib.DEFAULTS._replace(prior=prior, steps=40, check_every=10,
                                      learning_rate=0.05)
    z, info = shots_lib.make_refiner(spec, model, cfg)(gen.params, z0, emb, mask, sh,
                                                       jax.random.PRNGKey(2))
    # The kept check validates no worse than the start, and the start is one of the checks.
    assert (np.asarray(info["val_loss"]) <= np.asarray(info["start_val_loss"])).all()
    assert (np.asarray(info["val_loss"]) < np.asarray(info["start_val_loss"])).any(), prior
    assert np.isfinite(np.asarray(z)).all()
  # Without held-out shots no check can be chosen: the start comes back.
  z, info = shots_lib.make_refiner(spec, model, cfg)(
      gen.params, z0, emb, mask, sh._replace(held_out=np.zeros(len(tasks), bool)),
      jax.random.PRNGKey(2))
  np.testing.assert_array_equal(np.asarray(z), np.asarray(z0 * spec.tokenizer.mask))


def test_generate_with_shots_contract_and_errors(ctx):
  gen = ctx.gen
  size = gen.spec.image_size
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, size, size, 3), dtype=np.uint8)
  labels = np.array([0, 0, 0, 1, 1, 1])
  net, info = shots_lib.generate_with_shots(gen, TEXT, images, labels,
                                            rng=jax.random.PRNGKey(0), steps=20,
                                            check_every=10)
  assert generator_lib.ParamLayout.from_params(net.params) == gen.layout
  assert list(net.class_names) == ["red circle", "blue star"]
  assert len(net.predict(images)) == 6
  assert info["train_images"] + info["val_images"] == 6 and info["val_images"] == 2
  assert info["val_loss"] <= info["zero_shot_val_loss"] and info["refined"]
  _, one = shots_lib.generate_with_shots(gen, TEXT, images[[0, 3]], labels[[0, 3]],
                                         rng=jax.random.PRNGKey(0))
  assert not one["refined"] and one["kept_step"] == 0
  with pytest.raises(ConfigError, match="has no images"):
    shots_lib.generate_with_shots(gen, TEXT, images, np.zeros(6, int), rng=jax.random.PRNGKey(0))
  with pytest.raises(ConfigError, match="image size"):
    shots_lib.generate_with_shots(gen, TEXT, images[:, :4], labels, rng=jax.random.PRNGKey(0))
  with pytest.raises(ConfigError, match="labels must be"):
    shots_lib.generate_with_shots(gen, TEXT, images, labels + 1, rng=jax.random.PRNGKey(0))
  with pytest.raises(ConfigError, match="empty description"):
    shots_lib.generate_with_shots(gen, "", images, labels, rng=jax.random.PRNGKey(0))
  with pytest.raises(ConfigError, match="prior must be"):
    shots_lib.generate_with_shots(gen, TEXT, images, labels, rng=jax.random.PRNGKey(0),
                                  prior="gaussian")
  with pytest.raises(ConfigError, match="multiple of check_every"):
    shots_lib.generate_with_shots(gen, TEXT, images, labels, rng=jax.random.PRNGKey(0),
                                  steps=15, check_every=10)


def test_layer_profile_swaps_one_parameter_at_a_time(ctx):
  from t2w_jax.evaluate import layer_profile
  rng = jax.random.PRNGKey(3)
  out = layer_profile.layer_profile(ctx, rng, splits=("unseen",), max_tasks=2)["unseen"]
  layout = ctx.corpus.layout
  assert list(out["params"]) == list(layout.paths)
  # Recompute one entry by hand: the generated nets with the head's bias from the specialist.
  rows = ctx.rows("unseen", 2)
  tasks = ctx.tasks(rows)
  emb, mask = ctx.class_text(tasks)
  gen = np.asarray(api.sample_flat(ctx.gen, emb, mask, rng=jax.random.fold_in(rng, 0)))
  spec = np.asarray(ctx.corpus.weights[rows], np.float32)
  path = layout.paths[-1]
  off, size = layout.offsets[-1], layout.sizes[-1]
  swapped = gen.copy()
  swapped[:, off:off + size] = spec[:, off:off + size]
  gain = ctx.accuracy(swapped, tasks) - ctx.accuracy(gen, tasks)
  np.testing.assert_allclose(out["params"][path]["swap_gain"], gain.mean(), atol=1e-9)
  np.testing.assert_allclose(out["generated"], ctx.accuracy(gen, tasks).mean(), atol=1e-9)


def test_shots_study_fine_tunes_through_api_few_shot(ctx, monkeypatch):
  """The study's fine-tuning rows are the test accuracies of what api.few_shot_flat
  (api.few_shot's batched core) returned for the tasks' shots, from the study's starts."""
  calls = []

  def fake(gen, texts, images, labels, *, rngs, inits=None, **settings):
    start = np.stack([np.asarray(gen.layout.flatten(w)) for w in inits])
    calls.append(dict(texts=texts, labels=labels, start=start, settings=settings))
    n = len(texts)
    return {"params": start[::-1].copy(), "start": start, "class_emb": [None] * n,
            "kept_step": np.zeros(n, int), "steps_run": np.zeros(n, int),
            "train_images": np.zeros(n, int), "val_images": np.zeros(n, int)}

  monkeypatch.setattr(api, "few_shot_flat", fake)
  res = shots_eval.shots_study(ctx, jax.random.PRNGKey(0), splits=("unseen",), num_tasks=2,
                               shots=(5,), priors=("none",), refine_steps=0,
                               finetune_starts=("generated", "nearest"),
                               with_hypernet=False, train_steps=20, eval_every=5)
  tasks = ctx.tasks(ctx.rows("unseen", 2))
  assert len(calls) == 2
  for call, start in zip(calls, ("generated", "nearest")):
    assert call["texts"] == [[ctx.corpus.class_names[c] for c in t.class_ids] for t in tasks]
    assert all((np.bincount(y) == 5).all() for y in call["labels"])
    assert call["settings"]["max_steps"] == 20 and call["settings"]["eval_every"] == 5
    got = res["per_k"]["5"]["acc"]["unseen"][f"{start}+finetune"]["per_task"]
    assert got == ctx.accuracy(call["start"][::-1], tasks).tolist()
  # The generated start is the study's own zero-shot generated net.
  assert (res["per_k"]["5"]["acc"]["unseen"]["generated"]["per_task"]
          == ctx.accuracy(calls[0]["start"], tasks).tolist())
