"""The application API's contracts: ``api.enhance`` and ``api.few_shot`` on a tiny generator."""
import inspect
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from configs import dit as dit_config
from t2w_jax import api
from t2w_jax import cli
from t2w_jax import generator as generator_lib
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.errors import ConfigError
from t2w_jax.evaluate.context import EvalContext
from t2w_jax.train import state as state_lib

TEXT = "red circle and blue star"


@pytest.fixture(scope="module")
def ctx(tiny_corpus_dir):
  """The tiny corpus with a freshly initialised tiny generator (its contracts, not its
  quality, are under test)."""
  context = EvalContext.create(tiny_corpus_dir)
  spec = generator_lib.spec_from_corpus(dit_config.get_config("tiny"), context.corpus)
  dit = generator_lib.build_dit(spec)
  x, t, text = generator_lib.dummy_inputs(spec)
  params = jax.jit(lambda r: dit.init(r, x, t, spec.tokenizer.layer_ids,
                                      spec.tokenizer.block_ids, text)["params"])(
                                          jax.random.PRNGKey(0))
  context.gen = api.Generator(spec, state_lib.unbox(params))
  return context


def _leaves_close(a, b, atol):
  """The parameters of two nets (``Net``, ``NetBatch`` or params) agree within atol."""
  a, b = getattr(a, "params", a), getattr(b, "params", b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_enhance_at_zero_is_the_identity_and_matches_enhance_flat(ctx):
  gen = ctx.gen
  # The generalist, not a generated net: the untrained DiT decodes every input to the
  # same net, which a generated net already is.
  net = gen.layout.unflatten(np.asarray(ctx.corpus.base, np.float32))
  _leaves_close(api.enhance(gen, net, TEXT, t=0, rng=jax.random.PRNGKey(5)), net, atol=0)
  # Level t noises the net and runs the denoiser: the net enhance_flat gives for the key.
  half = gen.config["num_timesteps"] // 2
  out = api.enhance(gen, net, TEXT, t=half, rng=jax.random.PRNGKey(5))
  flat = gen.layout.flatten(net)[None]
  emb, mask = api.pad_classes(api.class_embeddings(gen, TEXT), gen.config["max_classes"])
  den, noised = api.enhance_flat(gen, flat, emb[None], mask[None], t=half,
                                 rng=jax.random.PRNGKey(5))
  np.testing.assert_allclose(np.asarray(gen.layout.flatten(out)), np.asarray(den[0]),
                             atol=1e-6)
  assert not np.allclose(np.asarray(den), np.asarray(flat), atol=1e-3)
  # The noise at a low level is a sliver; at half the chain it swamps much of the net.
  _, low = api.enhance_flat(gen, flat, emb[None], mask[None], t=1, rng=jax.random.PRNGKey(5))
  low_dev = float(np.abs(np.asarray(low) - np.asarray(flat)).max())
  assert low_dev < float(np.abs(np.asarray(noised) - np.asarray(flat)).max()) / 5
  # A batch of nets comes back as a batch, each net enhanced as it would be alone.
  batch = api.generate(gen, TEXT, rng=jax.random.PRNGKey(1), num_samples=3)
  zero = api.enhance(gen, batch, TEXT, t=0, rng=jax.random.PRNGKey(5))
  _leaves_close(zero, batch, atol=0)
  out = api.enhance(gen, batch, TEXT, t=2, rng=jax.random.PRNGKey(5))
  assert isinstance(out, api.NetBatch) and len(out) == 3
  assert all(a.shape[0] == 3 for a in jax.tree.leaves(out.params))


def test_enhance_refuses_bad_input(ctx):
  gen = ctx.gen
  net = api.take(api.generate(gen, TEXT, rng=jax.random.PRNGKey(0)), 0)
  with pytest.raises(ConfigError, match="not a net of this generator's layout"):
    api.enhance(gen, {"conv_0": {"kernel": np.zeros((3, 3, 3, 2))}}, TEXT, t=1,
                rng=jax.random.PRNGKey(0))
  with pytest.raises(ConfigError, match="empty description"):
    api.enhance(gen, net, "", t=1, rng=jax.random.PRNGKey(0))
  with pytest.raises(ConfigError, match="names no class"):
    api.enhance(gen, net, " , and ", t=1, rng=jax.random.PRNGKey(0))
  num_t = gen.config["num_timesteps"]
  for bad in (-1, num_t + 1, 2.5, True):
    with pytest.raises(ConfigError, match=r"noise level t must be a whole number in \[0, "):
      api.enhance(gen, net, TEXT, t=bad, rng=jax.random.PRNGKey(0))
  too_many = ", ".join(ctx.corpus.class_names[:gen.config["max_classes"] + 1])
  with pytest.raises(ConfigError, match="max_classes"):
    api.enhance(gen, net, too_many, t=1, rng=jax.random.PRNGKey(0))


def _shots(ctx, names, per_class):
  ds = ctx.dataset
  ids = [ctx.corpus.class_names.index(n) for n in names]
  images, labels = [], []
  for i, c in enumerate(ids):
    rows = np.flatnonzero(ds.train_labels == c)[:per_class]
    images.append(ds.train_images[rows])
    labels += [i] * len(rows)
  return np.concatenate(images), np.array(labels)


def test_few_shot_trains_on_the_shots_and_keeps_its_best_check(ctx):
  gen = ctx.gen
  names = list(ctx.corpus.class_names[:3])
  images, labels = _shots(ctx, names, 6)
  net, info = api.few_shot(gen, names, images, labels, rng=jax.random.PRNGKey(0),
                           max_steps=40, eval_every=10, patience=2)
  # 6 images per class: 5 train, 1 validates (data.tasks.shot_split).
  assert tasks_lib.shot_split(6) == (5, 1)
  assert info["train_images"] == 15 and info["val_images"] == 3
  assert 0 <= info["kept_step"] <= info["steps_run"] <= 40 and info["kept_step"] % 10 == 0
  assert api.ParamLayout.from_params(net.params) == gen.layout
  # From a given start with no step budget to speak of, training keeps a check of its own;
  # with the start kept (kept_step 0) the net is the start itself.
  start = api.take(api.generate(gen, names, rng=jax.random.PRNGKey(3)), 0)
  again, info0 = api.few_shot(gen, names, images, labels, rng=jax.random.PRNGKey(0),
                              init=start, max_steps=10, eval_every=10, patience=1)
  if info0["kept_step"] == 0:
    _leaves_close(again, start, atol=0)
  else:
    assert not np.allclose(np.asarray(gen.layout.flatten(again.params)),
                           np.asarray(gen.layout.flatten(start)))
  # One image per class: nothing to hold out, the shot validates itself.
  one_img, one_lab = _shots(ctx, names, 1)
  _, info1 = api.few_shot(gen, names, one_img, one_lab, rng=jax.random.PRNGKey(0),
                          max_steps=20, eval_every=10)
  assert info1["train_images"] == 3 and info1["val_images"] == 3


@pytest.mark.slow
def test_few_shot_flat_trains_each_task_as_few_shot_does_alone(ctx):
  """The batched core and the one-task call are one path: two tasks of different class
  counts, one from the generated start and one from a given net, come out of few_shot_flat
  exactly as few_shot makes each alone."""
  gen = ctx.gen
  names = [list(ctx.corpus.class_names[:3]), list(ctx.corpus.class_names[3:5])]
  shots = [_shots(ctx, names[0], 6), _shots(ctx, names[1], 4)]
  start = api.generate(gen, names[1], rng=jax.random.PRNGKey(3))
  inits = [None, start]
  rngs = [jax.random.PRNGKey(0), jax.random.PRNGKey(1)]
  kw = dict(max_steps=30, eval_every=10, patience=2)
  out = api.few_shot_flat(gen, names, [x for x, _ in shots], [y for _, y in shots], rngs=rngs,
                          inits=inits, **kw)
  np.testing.assert_array_equal(out["start"][1], np.asarray(gen.layout.flatten(start.params)))
  for i in range(2):
    net, info = api.few_shot(gen, names[i], *shots[i], rng=rngs[i], init=inits[i], **kw)
    np.testing.assert_array_equal(out["params"][i],
                                  np.asarray(gen.layout.flatten(net.params)))
    assert info == {k: int(out[k][i]) for k in info}
    assert net.class_names == tuple(names[i])
  assert out["kept_step"].max() > 0  # something trained: the equality is not the starts'
  with pytest.raises(ConfigError, match="one entry per task"):
    api.few_shot_flat(gen, names, [x for x, _ in shots], [shots[0][1]], rngs=rngs)


def test_few_shot_defaults_are_the_corpus_trainers_recipe():
  """The recipe's defaults live in masstrain.TrainerSpec: the corpus config, api.few_shot,
  its batched core and the few-shot study all take them from there."""
  from configs import corpus as corpus_config
  from t2w_jax.evaluate import registry
  from t2w_jax.zoo import masstrain
  spec, trainer = masstrain.TrainerSpec(), corpus_config.get_config().trainer
  recipe = ("batch_size", "learning_rate", "patience")
  assert ({k: getattr(api.FEW_SHOT, k) for k in recipe} == {k: getattr(spec, k) for k in recipe}
          == {k: trainer[k] for k in recipe})
  for fn in (api.few_shot, api.few_shot_flat):
    params = inspect.signature(fn).parameters
    assert {k: params[k].default for k in api.FEW_SHOT._fields} == api.FEW_SHOT._asdict()
  study = registry.get("fewshot").options
  assert {k: study[k] for k in recipe} == {k: getattr(api.FEW_SHOT, k) for k in recipe}
  assert (study["train_steps"], study["eval_every"]) == (api.FEW_SHOT.max_steps,
                                                         api.FEW_SHOT.eval_every)


def test_few_shot_refuses_bad_input(ctx):
  gen = ctx.gen
  names = list(ctx.corpus.class_names[:2])
  images, labels = _shots(ctx, names, 2)
  rng = jax.random.PRNGKey(0)
  with pytest.raises(ConfigError, match="images must be"):
    api.few_shot(gen, names, images[:, :8], labels, rng=rng)
  with pytest.raises(ConfigError, match=r"labels must be .* ints in \[0, 2\)"):
    api.few_shot(gen, names, images, labels + 1, rng=rng)
  with pytest.raises(ConfigError, match=r"class 1 \('.*'\) has no images"):
    api.few_shot(gen, names, images[labels == 0], labels[labels == 0], rng=rng)
  with pytest.raises(ConfigError, match="empty description"):
    api.few_shot(gen, "", images, labels, rng=rng)
  with pytest.raises(ConfigError, match="not a net of this generator's layout"):
    api.few_shot(gen, names, images, labels, rng=rng, init={"w": np.zeros(3)})
  with pytest.raises(ConfigError, match="multiple of eval_every"):
    api.few_shot(gen, names, images, labels, rng=rng, max_steps=15, eval_every=10)
  with pytest.raises(ValueError, match="at least 1 labelled image"):
    tasks_lib.shot_split(0)


def test_generate_reads_descriptions_as_people_write_them(ctx, tmp_path):
  gen = ctx.gen
  names = list(ctx.corpus.class_names[:3])
  rng = jax.random.PRNGKey(2)
  want = api.generate(gen, names, rng=rng, steps=2)
  text = f"a classifier for {names[0]} vs {names[1]} vs {names[2].upper()}"
  assert api.class_names(text) == names[:2] + [names[2].upper()]
  _leaves_close(api.generate(gen, text, rng=rng, steps=2), want, atol=0)
  for one in (f"a classifier for {names[0]}", [names[0]]):
    with pytest.raises(ConfigError, match=rf"parsed as 1 class \['{names[0]}'\]"):
      api.generate(gen, one, rng=rng)
  # The command line parses with the corpus's class names, read from the generator's config.
  assert cli.corpus_class_names(SimpleNamespace(
      config={"corpus_dir": ctx.corpus.path}, workdir=None)) == list(ctx.corpus.class_names)
  assert cli.corpus_class_names(SimpleNamespace(
      config={"corpus_dir": None}, workdir=str(tmp_path))) is None
