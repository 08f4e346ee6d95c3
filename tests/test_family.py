"""The subtask family as a config choice: CNN, or frozen trunk + generated bottleneck adapter."""
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import corpus as corpus_config
from configs import dit as dit_config
from t2w_jax import api
from t2w_jax.evaluate.context import EvalContext
from t2w_jax.train import loop
from t2w_jax.zoo import base as base_lib
from t2w_jax.zoo import corpus as corpus_lib
from t2w_jax.zoo import family as family_lib
from t2w_jax.zoo import make_corpus as make_corpus_lib
from t2w_jax.zoo.cnn import SubtaskCNN, init_params, unit_normalize

EMBED = 16


def _num_params(model, image_size=16):
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), image_size))
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))


def test_constructor_picks_the_family():
  cnn = family_lib.build_subtask_net(corpus_config.get_config().model, 384, "im2col")
  assert isinstance(cnn, SubtaskCNN) and cnn.conv_impl == "im2col"
  adapter = family_lib.build_subtask_net(corpus_config.get_config("adapter").model, 384)
  assert isinstance(adapter, family_lib.AdapterNet)
  assert (adapter.feature_dim, adapter.bottleneck, adapter.embed_dim) == (64, 16, 384)
  # A config without a family (older corpora's meta) is the CNN.
  assert isinstance(family_lib.build_subtask_net(
      dict(widths=(4,), strides=(1,), logit_scale=10.0), 8), SubtaskCNN)
  with pytest.raises(ValueError, match="unknown subtask family"):
    family_lib.build_subtask_net(dict(family="mlp"), 8)


def test_cnn_family_sizes_and_features():
  # Exact parameter counts of the named nets (MiniLM's 384-d text space): the README and
  # the room sweep rely on them.
  counts = {name: _num_params(family_lib.build_subtask_net(
      corpus_config.get_config(f"net={name}").model, 384)) for name in corpus_config.NETS}
  assert counts == {"cnn19k": 18_704, "cnn8k": 8_104, "cnn4k": 4_012, "cnn2k": 2_328,
                    "adapter16": 7_568, "adapter4": 2_180}
  assert corpus_config.get_config().model.widths == corpus_config.NETS["cnn2k"]["widths"]
  model = family_lib.build_subtask_net(corpus_config.get_config("net=cnn19k").model, 384)
  params = jax.jit(lambda k: init_params(model, k, 16))(jax.random.PRNGKey(0))
  assert sorted(params) == ["conv_0", "conv_1", "conv_2", "head"]
  # embed is the head on the new features method: the same function as before.
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 16, 16, 3))
  feats, emb = jax.jit(lambda p, x: (model.apply({"params": p}, x, method="features"),
                                     model.apply({"params": p}, x, method="embed")))(params, x)
  chex.assert_shape(feats, (3, 32))
  head = params["head"]
  np.testing.assert_allclose(emb, unit_normalize(feats @ head["kernel"] + head["bias"]),
                             atol=1e-5)


@pytest.fixture(scope="module")
def adapter_net():
  net = family_lib.AdapterNet(feature_dim=12, bottleneck=4, embed_dim=EMBED)
  return net, init_params(net, jax.random.PRNGKey(0), 16)


def test_adapter_shapes_and_equivariance(adapter_net):
  net, params = adapter_net
  assert _num_params(net) == 12 * 4 + 4 + 4 * EMBED + EMBED
  assert sorted(params) == ["down", "up"]
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 12))
  emb = jax.random.normal(jax.random.PRNGKey(2), (7, EMBED))
  logits = net.apply({"params": params}, x, emb)
  chex.assert_shape(logits, (5, 7))
  e = net.apply({"params": params}, x, method="embed")
  chex.assert_shape(e, (5, EMBED))
  np.testing.assert_allclose(jnp.linalg.norm(e, axis=-1), 1.0, atol=1e-5)
  assert float(jnp.abs(logits).max()) <= net.logit_scale + 1e-4
  perm = np.array([3, 0, 6, 1, 5, 2, 4])
  np.testing.assert_allclose(net.apply({"params": params}, x, emb[perm]), logits[:, perm],
                             atol=1e-5)


def test_adapter_class_list_errors_match_the_cnn(adapter_net):
  net, params = adapter_net
  cnn = SubtaskCNN(widths=(4,), strides=(1,), embed_dim=EMBED)
  cnn_params = init_params(cnn, jax.random.PRNGKey(0), 8)
  for bad in (jnp.zeros((0, EMBED)), jnp.zeros((3, EMBED + 1)), jnp.zeros((EMBED,))):
    with pytest.raises(ValueError) as adapter_err:
      net.apply({"params": params}, jnp.zeros((2, 12)), bad)
    with pytest.raises(ValueError) as cnn_err:
      cnn.apply({"params": cnn_params}, jnp.zeros((2, 8, 8, 3)), bad)
    assert str(adapter_err.value) == str(cnn_err.value)


def test_fusion_aligns_adapter_hidden_units(adapter_net):
  """Aligned averaging of an adapter and a bottleneck-permuted copy gives the adapter back."""
  from t2w_jax.evaluate import fusion
  net, params = adapter_net
  params = jax.tree.map(np.asarray, params)
  perm = np.array([2, 0, 3, 1])
  permuted = {"down": {"kernel": params["down"]["kernel"][:, perm],
                       "bias": params["down"]["bias"][perm]},
              "up": {"kernel": params["up"]["kernel"][perm], "bias": params["up"]["bias"]}}
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 12))
  emb = jax.random.normal(jax.random.PRNGKey(4), (3, EMBED))
  np.testing.assert_allclose(net.apply({"params": permuted}, x, emb),
                             net.apply({"params": params}, x, emb), atol=1e-5)
  merged = fusion.aligned_average(params, permuted)
  chex.assert_trees_all_close(merged, params, atol=1e-6)


# ------------------------------------------------------------------ a tiny adapter corpus
def _adapter_config():
  c = corpus_config.get_config("adapter_tiny")
  c.num_devices = 2
  return c


@pytest.fixture(scope="module")
def adapter_corpus(tmp_path_factory):
  """An adapter tiny corpus, with every train_generalist call's model and labels recorded."""
  workdir = str(tmp_path_factory.mktemp("adapter_corpus"))
  calls, real = [], base_lib.train_generalist

  def spy(model, images, labels, *args, **kwargs):
    calls.append((model, np.asarray(images).shape, np.asarray(labels).copy()))
    return real(model, images, labels, *args, **kwargs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(base_lib, "train_generalist", spy)
    summary = make_corpus_lib.make_corpus(_adapter_config(), workdir)
  return workdir, summary, corpus_lib.open_corpus(os.path.join(workdir, "corpus")), calls


@pytest.mark.slow
def test_adapter_corpus_stores_adapter_weights_only(adapter_corpus):
  workdir, summary, corpus, _ = adapter_corpus
  c = _adapter_config()
  d, b = c.model.trunk_widths[-1], c.model.bottleneck
  e = corpus.class_emb.shape[1]
  params = corpus.layout.unflatten(jnp.asarray(corpus.weights[0]))
  assert sorted(params) == ["down", "up"]
  assert corpus.layout.total == corpus.weights.shape[1] == d * b + b + b * e + e
  assert corpus.meta["model"]["family"] == "adapter"
  assert corpus.meta["trunk_train"]["max_steps"] == c.trunk_train.max_steps
  for f in (family_lib.TRUNK_FILE, family_lib.FEATURES_FILE):
    assert os.path.exists(os.path.join(corpus.path, f))
  feats = family_lib.load_features(corpus.path)
  assert feats.train_images.dtype == np.float32 and feats.train_images.shape[1] == d
  # Fine-tuned adapters beat their base adapter on their tasks.
  assert summary["all"]["gain_points"] > 0, summary


@pytest.mark.slow
def test_heldout_images_never_reach_the_trunk(adapter_corpus):
  _, _, corpus, calls = adapter_corpus
  trunk_calls = [c for c in calls if isinstance(c[0], SubtaskCNN)]
  assert len(trunk_calls) == 1, [type(c[0]).__name__ for c in calls]
  _, shape, labels = trunk_calls[0]
  held = set(corpus.plan.heldout_classes)
  assert held and len(shape) == 4
  assert not held & set(labels.tolist())
  assert set(labels.tolist()) == set(range(len(corpus.class_names))) - held
  # The base adapter trains on features, never on images.
  adapter_calls = [c for c in calls if isinstance(c[0], family_lib.AdapterNet)]
  assert len(adapter_calls) == 1 and len(adapter_calls[0][1]) == 2


@pytest.mark.slow
def test_features_are_computed_once(adapter_corpus, monkeypatch):
  workdir, _, corpus, _ = adapter_corpus

  def no_trunk(*args, **kwargs):
    raise AssertionError("the trunk ran again")

  monkeypatch.setattr(family_lib, "compute_features", no_trunk)
  monkeypatch.setattr(family_lib, "train_trunk", no_trunk)
  monkeypatch.setattr(SubtaskCNN, "features", no_trunk)
  make_corpus_lib.make_corpus(_adapter_config(), workdir)  # resumes: every shard is done
  ctx = EvalContext.create(corpus.path)
  assert isinstance(ctx.dataset, family_lib.FeatureDataset)
  rows = np.arange(len(corpus))
  acc = ctx.accuracy(np.asarray(corpus.weights), ctx.tasks(rows))
  np.testing.assert_allclose(acc, [r["trained_acc"] for r in corpus.records], atol=1e-6)
  pred, label = ctx.test_predictions(np.asarray(corpus.weights[:2]), ctx.tasks(rows[:2]))
  np.testing.assert_allclose(((pred == label) & (label >= 0)).sum(1) / (label >= 0).sum(1),
                             acc[:2], atol=1e-6)


@pytest.mark.slow
def test_other_family_config_is_refused(adapter_corpus):
  workdir, _, _, _ = adapter_corpus
  c = corpus_config.get_config("tiny")
  c.num_devices = 2
  with pytest.raises(ValueError, match="other settings.*model"):
    make_corpus_lib.make_corpus(c, workdir)


@pytest.mark.slow
def test_generator_on_adapter_corpus_and_api_net(adapter_corpus, tmp_path):
  workdir, _, corpus, _ = adapter_corpus
  d = dit_config.get_config("tiny")
  d.mesh.data = 1
  d.num_steps = 20
  d.checkpoint_every = 20
  d.adv_start = d.num_steps  # the adversarial term is covered by tests/test_train.py
  d.sample_steps = 1
  d.corpus_dir = corpus.path
  loop.train(d, str(tmp_path))
  gen = api.load(str(tmp_path))
  rec = corpus.records[corpus.indices("seen")[0]]
  params = api.generate(gen, rec["classes"], rng=jax.random.PRNGKey(0), num_samples=2)
  net = api.subtask_net(gen)
  assert isinstance(net, family_lib.TrunkedNet)

  # Images of the task's classes, through trunk + adapter, from the raw dataset.
  dataset = make_corpus_lib.load_data(_adapter_config())
  sel = np.flatnonzero(np.isin(dataset.test_labels, rec["class_ids"]))
  images = dataset.test_images[sel]
  position = {c: i for i, c in enumerate(rec["class_ids"])}  # rec["classes"] order
  labels = np.array([position[int(y)] for y in dataset.test_labels[sel]])
  emb = api.class_embeddings(gen, rec["classes"])
  one = api.take(params, 0)
  logits = net.apply({"params": one}, images, emb)
  chex.assert_shape(logits, (len(images), len(rec["classes"])))
  # The composed net equals the adapter on the corpus's cached features.
  feats = family_lib.load_features(corpus.path).test_images[sel]
  adapter = family_lib.build_subtask_net(gen.spec.cnn, emb.shape[1])
  np.testing.assert_allclose(logits, adapter.apply({"params": one}, feats, emb), atol=1e-4)
  acc = float((np.argmax(np.asarray(logits), -1) == labels).mean())
  assert acc > 1.5 / len(rec["classes"]), acc

  # save_net / load_net carry the trunk: the loaded net needs no corpus.
  path = str(tmp_path / "net.npz")
  api.save_net(path, gen, one, rec["classes"])
  loaded = api.load_net(path)
  p2, net2, names, emb2 = (loaded.params, loaded.module, list(loaded.class_names),
                           loaded.class_emb)
  assert isinstance(net2, family_lib.TrunkedNet) and names == rec["classes"]
  np.testing.assert_allclose(net2.apply({"params": p2}, images, emb2), logits, atol=1e-4)
