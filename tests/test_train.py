"""Generator training: loss goes down, exact resume, 8-device == 1-device, API, errors."""
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dit as dit_config
from t2w_jax import api
from t2w_jax.train import loop
from t2w_jax.train import mesh as mesh_lib

from conftest import tiny_trained_config


@pytest.fixture(scope="module")
def corpus_dir(tiny_corpus_dir):
  return tiny_corpus_dir


def tiny(corpus_dir, **overrides):
  c = dit_config.get_config("tiny")
  c.corpus_dir = corpus_dir
  c.mesh.data = 2  # 2 of the 8 simulated devices: cheaper to compile than 8
  for k, v in overrides.items():
    c[k] = v
  return c


def _leaves_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.fixture(scope="module")
def trained(tiny_trained_dir):
  """The conftest's tiny trained generator (``tiny_trained_config``): read only."""
  return tiny_trained_dir


@pytest.mark.slow
def test_loss_goes_down(corpus_dir, tmp_path):
  config = tiny(corpus_dir, num_steps=60, log_every=60, adv_weight=0.0, learning_rate=3e-3)
  corpus = loop.open_training_corpus(config, str(tmp_path))
  spec = loop.load_or_make_spec(config, str(tmp_path), corpus)
  mesh = mesh_lib.make_mesh(1, 1)
  state, shardings = loop.create_sharded_state(spec, config, mesh)
  step = loop.compile_step(spec, config, mesh, shardings)
  batches = loop.CorpusBatches(corpus, config.max_classes, config.batch_size, 0)
  data = loop.put_task_images(config, corpus, mesh)
  losses, no_vote = [], loop.put_stop_votes(None, mesh)
  with mesh_lib.activate(mesh):
    for i in range(config.num_steps):
      state, m, _ = step(state, loop.put_batch(batches(i), mesh), data, no_vote)
      losses.append(float(m["diffusion_loss"]))
  first, last = np.mean(losses[:10]), np.mean(losses[-10:])
  assert last < 0.9 * first, (first, last)


@pytest.mark.slow
def test_resume_reaches_same_state(corpus_dir, tiny_trained_dir, tmp_path):
  # The uninterrupted run is the session's (tiny_trained_config: 20 steps, checkpoints
  # every 10); this one is "killed" after the step-10 checkpoint, then resumed.
  b = str(tmp_path / "b")
  config = tiny_trained_config(corpus_dir)
  assert (config.num_steps, config.checkpoint_every) == (20, 10)
  loop.train(config, b, stop_after=10)
  loop.train(config, b)
  ga, gb = api.load(tiny_trained_dir), api.load(b)
  assert ga.step == gb.step == 20
  _leaves_close(ga.params, gb.params, atol=1e-6)


@pytest.mark.slow
def test_eight_devices_match_one(corpus_dir, tmp_path):
  """Two train steps on a (4 data x 2 model) mesh equal the steps on one device, with
  every loss on: diffusion, task (functional, with fresh tasks), adversarial, FGSM and
  permutations."""
  assert len(jax.devices()) >= 8
  config = tiny(corpus_dir, adv_weight=0.01, adv_start=0, perturb_eps=0.01, permute_aug=True,
                task_loss_weight=1.0, fresh_tasks=4)
  corpus = loop.open_training_corpus(config, str(tmp_path))
  spec = loop.load_or_make_spec(config, str(tmp_path), corpus)
  batch = loop.CorpusBatches(corpus, config.max_classes, config.batch_size, 0)(0)
  out = {}
  for shape in ((1, 1), (4, 2)):
    mesh = mesh_lib.make_mesh(*shape)
    state, shardings = loop.create_sharded_state(spec, config, mesh)
    step = loop.compile_step(spec, config, mesh, shardings)
    data = loop.put_task_images(config, corpus, mesh)
    # The stop agreement: the largest vote of any device, whatever its place in the mesh;
    # it leaves the training alone.
    one_votes = np.zeros(mesh.devices.size, np.int32)
    one_votes[-1] = signal.SIGTERM
    one_votes = jax.device_put(one_votes, mesh_lib.per_device(mesh))
    with mesh_lib.activate(mesh):
      state, metrics, first = step(state, loop.put_batch(batch, mesh), data,
                                   loop.put_stop_votes(None, mesh))
      state, metrics, second = step(state, loop.put_batch(batch, mesh), data, one_votes)
    assert (int(first), int(second)) == (0, signal.SIGTERM)
    out[shape] = (jax.device_get(state), jax.device_get(metrics))
  (s1, m1), (s8, m8) = out[(1, 1)], out[(4, 2)]
  assert m1["task_loss"] > 0
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], atol=1e-5, rtol=1e-5)
  _leaves_close(s1.params, s8.params, atol=1e-5)
  _leaves_close(s1.disc_params, s8.disc_params, atol=1e-5)


def test_generate_plugs_into_apply(trained):
  workdir = trained
  gen = api.load(workdir)
  text = "red circle, blue star and green heart"
  params = api.generate(gen, text, rng=jax.random.PRNGKey(0), num_samples=3, steps=5).params
  net, emb = api.subtask_net(gen), api.class_embeddings(gen, text)
  images = jnp.zeros((4, gen.spec.image_size, gen.spec.image_size, 3), jnp.uint8)
  logits = net.apply({"params": api.take(params, 1)}, images, emb)
  assert logits.shape == (4, 3) and np.all(np.isfinite(logits))
  again = api.generate(gen, ["red circle", "blue star", "green heart"],
                       rng=jax.random.PRNGKey(0), num_samples=3, steps=5).params
  _leaves_close(params, again, atol=0)  # same rng, same nets
  avg = api.generate(gen, text, rng=jax.random.PRNGKey(0), num_samples=3, steps=5,
                     average=True).params  # one net: no leading axis
  _leaves_close(avg, jax.tree.map(lambda a: a.mean(0), params), atol=1e-6)
  # DDIM from x_T = 0: the same net whatever the key.
  cold = [api.generate(gen, text, rng=jax.random.PRNGKey(i), steps=5, temperature=0.0).params
          for i in (0, 1)]
  _leaves_close(cold[0], cold[1], atol=0)
  other = api.generate(gen, text, rng=jax.random.PRNGKey(1), num_samples=3, steps=5).params
  assert not np.allclose(params["head"]["kernel"], other["head"]["kernel"])
  guided = api.generate(gen, text, rng=jax.random.PRNGKey(0), steps=5, guidance=3.0).params
  assert np.all(np.isfinite(guided["head"]["kernel"]))


def test_saved_net_round_trip(trained, tmp_path):
  workdir = trained
  gen = api.load(workdir)
  params = api.take(api.generate(gen, "red circle and blue star", rng=jax.random.PRNGKey(0),
                                 steps=3), 0)
  path = str(tmp_path / "net.npz")
  api.save_net(path, gen, params, "red circle and blue star")
  loaded = api.load_net(path)
  back, net, names, emb = (loaded.params, loaded.module, list(loaded.class_names),
                           loaded.class_emb)
  assert names == ["red circle", "blue star"]
  _leaves_close(params, back, atol=0)
  x = jnp.ones((2, gen.spec.image_size, gen.spec.image_size, 3))
  np.testing.assert_allclose(net.apply({"params": back}, x, emb),
                             api.subtask_net(gen).apply({"params": params}, x, emb), atol=1e-6)


def test_errors(trained, corpus_dir, tmp_path):
  workdir = trained
  gen = api.load(workdir)
  for empty in ("", "  ,  and ", []):
    with pytest.raises(ValueError, match="empty description|names no class"):
      api.generate(gen, empty, rng=jax.random.PRNGKey(0))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    api.load(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="no generator"):
    api.load(str(tmp_path))
  # A checkpoint written with another config is refused by name, both when resuming
  # training and when loading.
  other = str(tmp_path / "other")
  shutil.copytree(workdir, other)
  bigger = tiny(corpus_dir, num_steps=70)
  bigger.model.width = 48
  with pytest.raises(ValueError, match="another config.*model"):
    loop.train(bigger, other)
  spec_path = os.path.join(other, "generator.json")
  import json
  with open(spec_path) as f:
    spec = json.load(f)
  spec["config"]["model"]["depth"] = 3
  with open(spec_path, "w") as f:
    json.dump(spec, f)
  with pytest.raises(ValueError, match="another config.*model"):
    api.load(other)


def test_v_parameterization_is_identity_at_small_t(corpus_dir, tmp_path):
  """At init (DiT output 0) the v-denoiser returns sqrt(abar_t) x_t: ~x_t at t=0 and ~0
  (the mean net) at t=T-1; the x0 denoiser returns 0 everywhere."""
  from t2w_jax import generator as generator_lib
  from t2w_jax.train import state as state_lib
  for how in ("v", "x0"):
    config = tiny(corpus_dir, parameterization=how)
    corpus = loop.open_training_corpus(config, str(tmp_path))
    spec = generator_lib.spec_from_corpus(config, corpus)
    # The DiT's parameters alone (a TrainState's are these), initialised in one compiled
    # program rather than op by op.
    params = jax.jit(lambda r: state_lib.unbox(generator_lib.init_dit_params(spec, r)))(
        jax.random.PRNGKey(0))
    x, _, text = generator_lib.dummy_inputs(spec, batch=2)
    x = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    out = jax.jit(generator_lib.make_denoiser(spec))(
        params, x, jnp.array([0, config.num_timesteps - 1]), text)
    if how == "v":
      np.testing.assert_allclose(out[0], x[0], atol=2e-2)
      assert float(jnp.abs(out[1]).max()) < 0.05 * float(jnp.abs(x[1]).max())
    else:
      np.testing.assert_array_equal(out, 0.0)


def test_disc_accuracy_counts_each_example():
  from t2w_jax.train.step import disc_accuracy
  real = jnp.array([1.0, -1.0, 2.0, -3.0])
  fake = jnp.array([-1.0, -2.0, 1.0, 3.0])
  # real right: 1st, 3rd; fake right: 1st, 2nd -> 4 of 8.
  np.testing.assert_allclose(disc_accuracy(real, fake), 0.5)
  # Both wrong everywhere: 0 (the old formula gave 1 here).
  np.testing.assert_allclose(disc_accuracy(-jnp.ones(3), jnp.ones(3)), 0.0)
  np.testing.assert_allclose(disc_accuracy(jnp.ones(3), -jnp.ones(3)), 1.0)
  np.testing.assert_allclose(disc_accuracy(jnp.ones(2), jnp.ones(2)), 0.5)


def test_load_reads_only_the_ema_params_and_the_public_api(trained):
  """``load`` restores the EMA parameters alone (no discriminator or optimiser is built),
  and they are the ones the full TrainState checkpoint holds."""
  import ml_collections
  from t2w_jax import generate, load  # the API as the model card names it
  from t2w_jax import generator as generator_lib
  from t2w_jax import checkpoints as ckpt_lib
  from t2w_jax.train import state as state_lib
  workdir = trained
  gen = load(workdir)
  spec = generator_lib.GeneratorSpec.load(workdir)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), spec.identity(),
                               save_every=0)
  config = ml_collections.ConfigDict(spec.config)
  full = ckpt.restore(jax.eval_shape(
      lambda r: state_lib.unbox(state_lib.init_state(spec, config, r)), jax.random.PRNGKey(0)))
  ckpt.close()
  assert gen.step == int(full.step) == tiny_trained_config("").num_steps
  _leaves_close(gen.params, full.ema_params, atol=0)
  assert jax.tree.structure(gen.params) == jax.tree.structure(full.ema_params)
  net = generate(gen, "red circle and blue star", rng=jax.random.PRNGKey(0), steps=2)
  assert api.ParamLayout.from_params(net.params) == gen.layout  # one net: no batch axis


def test_seen_limit_learns_from_the_first_seen_rows_only(corpus_dir, tmp_path):
  """The scaling curve's smaller corpora: batches and the normalisation come from the first
  ``seen_limit`` seen rows and from nothing else."""
  from t2w_jax import generator as generator_lib
  config = tiny(corpus_dir, seen_limit=3)
  corpus = loop.open_training_corpus(config, str(tmp_path))
  rows = generator_lib.training_rows(config, corpus)
  np.testing.assert_array_equal(rows, corpus.indices("seen")[:3])
  batches = loop.CorpusBatches(corpus, config.max_classes, config.batch_size, 0, rows)
  allowed = np.asarray(corpus.weights[rows])
  for step in range(3):
    w = batches(step)["weights"]
    assert all(np.any(np.all(allowed == r, axis=1)) for r in w)
  spec = generator_lib.spec_from_corpus(config, corpus)
  full = generator_lib.spec_from_corpus(tiny(corpus_dir), corpus)
  assert not np.allclose(spec.norms.std, full.norms.std)
