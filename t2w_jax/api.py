"""The public API: ``load(workdir)``, ``generate(generator, text, ...)``, and the
applications ``few_shot`` (the generated net fine-tuned on a few labelled images),
``enhance`` (noise a net and denoise it with its text) and ``fuse(generator, text_a,
text_b, ...)`` (one net for two tasks together).

    import jax
    from t2w_jax import load, generate, load_net
    gen = load("runs/default")
    net = generate(gen, "red circle, blue star and green heart", rng=jax.random.PRNGKey(0))
    net.predict(images)             # one class name per image (any size: resized)
    net(images)                     # (N, 3) logits
    net.save("net.npz")             # load_net("net.npz") reads it back

Every function that makes nets returns ``t2w_jax.net.Net`` objects (``generate`` with
``num_samples > 1``: a ``NetBatch``, indexable and iterable); ``net.params`` is the Flax
params pytree and ``net.module`` what runs it. ``generate`` is a pure function of
(generator, text, rng, settings): no state is kept between calls except compiled
functions. The whole reverse chain runs in one ``lax.scan`` under ``jit``.

The same lines serve both subtask families (``t2w_jax.zoo.family``): for an adapter-family
corpus the generated params are the adapter's, and the net's module is the frozen trunk
composed with the adapter (a ``TrunkedNet``), so the net still takes images.

Earlier names kept as thin aliases: ``subtask_net(gen)`` and ``class_embeddings(gen,
text)`` (the module and embeddings a ``Net`` holds), ``take(nets, i)`` (the i-th net's
params), ``save_net(path, gen, params, text)`` (``Net.save``).
"""
import dataclasses
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t2w_jax import generator as generator_lib
from t2w_jax import shots as shots_lib
from t2w_jax import net as net_lib
from t2w_jax import text as text_lib
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.errors import ConfigError, MissingError
from t2w_jax.generator import check_sample_args  # noqa: F401  (part of the public API)
from t2w_jax.net import Net, NetBatch, load_net  # noqa: F401  (part of the public API)
from t2w_jax.weights import ParamLayout
from t2w_jax.zoo import family as family_lib
from t2w_jax.zoo import masstrain


@dataclasses.dataclass(eq=False)
class Generator:
  """What ``generate`` needs: the spec (config, layout, tokenizer, normalisation), the EMA
  DiT parameters, and the text encoder (loaded lazily on first text)."""
  spec: generator_lib.GeneratorSpec
  params: Any
  workdir: str | None = None
  step: int | None = None
  _encoder: Any = None
  _cache: dict = dataclasses.field(default_factory=dict)

  @property
  def encoder(self):
    if self._encoder is None:
      self._encoder = text_lib.get_encoder(self.spec.encoder)
    return self._encoder

  @property
  def config(self) -> dict:
    return self.spec.config

  @property
  def sampling_params(self):
    """``params`` as sampling reads them (``generator.inference_params``), made once per
    ``params`` object."""
    held = self._cache.get("sampling_params")
    if held is None or held[0] is not self.params:
      held = (self.params, generator_lib.inference_params(
          self.params, self.spec.config["model"]["dtype"]))
      self._cache["sampling_params"] = held
    return held[1]

  @property
  def layout(self) -> ParamLayout:
    return self.spec.layout


def load(workdir: str, *, step: int | None = None, encoder=None) -> Generator:
  """Loads a trained generator (EMA parameters of the latest or given checkpoint).

  Only what inference needs is read: ``generator.json`` and the checkpoint's EMA
  parameters; the discriminator and the optimiser states stay on disk.

  Args:
    workdir: the training run's directory.
    step: a checkpoint step; None for the latest.
    encoder: an already loaded text encoder to use (must have the spec's name).

  Returns:
    The ``Generator`` that ``generate(generator, text, ...)`` takes.

  Raises:
    FileNotFoundError: no generator or no checkpoint in ``workdir``.
    ValueError: the checkpoint was written with another config.
  """
  if not os.path.isdir(workdir):
    raise MissingError(f"workdir {workdir!r} does not exist")
  spec = generator_lib.GeneratorSpec.load(workdir)
  params, restored_step = generator_lib.restore_ema_params(workdir, spec, step)
  if encoder is not None and encoder.name != spec.encoder:
    raise ValueError(f"generator was trained with text encoder {spec.encoder!r}, "
                     f"got {encoder.name!r}")
  return Generator(spec, params, workdir, restored_step, encoder)


def class_names(text: str | Sequence[str]) -> list[str]:
  """A description ("a, b and c") or a list of class names -> cleaned class names.

  Args:
    text: one str, or a list/tuple of str (numpy str arrays too).

  Returns:
    The cleaned class names.

  Raises:
    ConfigError (a ValueError): anything else (bytes, numbers, None, a list holding
      non-strings), or no class name.
  """
  if isinstance(text, str):
    try:  # one class is enough here (one side of fuse); the nets need two (_checked_embeddings)
      names = text_lib.parse_description(text, min_classes=1)
    except ValueError as e:  # empty or separators only: the user's text, so a user error
      raise ConfigError(f"text: {e}") from None
  elif isinstance(text, (list, tuple, np.ndarray)):
    for i, n in enumerate(text):
      if not isinstance(n, str):  # bytes iterate as ints, numbers are not names
        raise ConfigError(f"text[{i}] must be a str (a class name), got "
                          f"{type(n).__name__} {n!r}")
    names = [text_lib.clean_class_name(str(n)) for n in text]
  else:
    raise ConfigError(f"text must be a str or a list of str, got {type(text).__name__} "
                      f"{text!r}" + (" (decode it first)" if isinstance(text, bytes) else ""))
  if not names or any(not n.strip() for n in names):
    raise ConfigError(f"empty description: need at least one class name, got {text!r}")
  return names


def class_embeddings(gen: Generator, text: str | Sequence[str]) -> np.ndarray:
  """(K, d) embeddings of the described classes, with the generator's prompt template
  (what a generated ``Net`` holds as ``class_emb``)."""
  names = class_names(text)
  return gen.encoder.encode(text_lib.apply_template(names, gen.spec.template))


def subtask_net(gen: Generator, conv_impl: str = "lax", *, trunk_params=None):
  """The module whose ``apply({"params": generated}, images, class_emb)`` gives logits
  (what a generated ``Net`` holds as ``module``; a ``Net`` is the simpler way in).

  Args:
    gen: from ``load``.
    conv_impl: "lax" or "im2col" (the CNN family; same function either way).
    trunk_params: adapter family only: the frozen trunk's params; default: read from the
      corpus the generator was trained on (``config.corpus_dir``, else
      ``WORKDIR/corpus``), file ``trunk.npz``.

  Returns:
    CNN family: the ``SubtaskCNN`` module. Adapter family: a ``family.TrunkedNet`` that runs
    the frozen trunk on the images and the generated adapter on its features; its
    ``apply(variables, images, class_emb)`` (and ``method="embed"``) mirror the module's.

  Raises:
    FileNotFoundError: adapter family, no ``trunk_params`` and no trunk in the corpus.
  """
  c = gen.spec.cnn
  net = family_lib.build_subtask_net(c, int(c["embed_dim"]), conv_impl)
  if family_lib.family_of(c) != "adapter":
    return net
  if trunk_params is None:
    trunk_params = trunk_of(gen)
  return family_lib.TrunkedNet(family_lib.build_trunk(c, int(c["embed_dim"]), conv_impl),
                               trunk_params, net)


def trunk_of(gen: Generator):
  """The frozen trunk's params of an adapter-family generator, read once from its corpus."""
  if "trunk" not in gen._cache:
    corpus_dir = gen.config.get("corpus_dir") or (
        os.path.join(gen.workdir, "corpus") if gen.workdir else None)
    if corpus_dir is None:
      raise FileNotFoundError("generator has no workdir or corpus_dir to find its trunk in; "
                              "pass trunk_params")
    gen._cache["trunk"] = family_lib.load_trunk(corpus_dir)
  return gen._cache["trunk"]


def _checked_embeddings(gen: Generator, text: str | Sequence[str]) -> np.ndarray:
  """``class_embeddings``, after checking the generator has class slots for them all."""
  kmax = int(gen.spec.config["max_classes"])
  names = class_names(text)
  text_lib.require_classes(names, text)
  k = len(names)
  if k > kmax:
    raise ConfigError(f"text names {k} classes; this generator was trained on tasks of at "
                      f"most {kmax} classes (its max_classes)")
  return class_embeddings(gen, text)


def pad_classes(class_emb: np.ndarray, max_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """(K, d) -> (K', d) zero-padded to at least max_classes, and the (K',) mask: one task's
  list through ``data.tasks.pad_classes``, the one padding of class lists."""
  padded, mask = tasks_lib.pad_classes([np.asarray(class_emb, np.float32)], max_classes)
  return padded[0], mask[0]


def _net_module(gen: Generator):
  """(module, jitted apply) of the generator's nets, built once per generator so that every
  net it makes shares one compiled program per image shape."""
  if "net_module" not in gen._cache:
    module = subtask_net(gen)
    gen._cache["net_module"] = (module, net_lib.jit_apply(module))
  return gen._cache["net_module"]


def as_nets(gen: Generator, params, names: Sequence[str], class_emb: np.ndarray, *,
            batch: bool):
  """Wraps generated params of this generator as a ``Net`` (one) or ``NetBatch`` (a
  leading axis).

  Args:
    gen: from ``load``.
    params: one net's params, or (``batch``) several with a leading axis.
    names: the task's cleaned class names; class_emb: their (K, d) embeddings.
    batch: whether params carry a leading axis.

  Returns:
    The ``Net`` or ``NetBatch``.
  """
  module, apply_fn = _net_module(gen)
  info = {"cnn": gen.spec.cnn, "encoder": gen.spec.encoder, "template": gen.spec.template}
  cls = net_lib.NetBatch if batch else net_lib.Net
  return cls(params, module, names, class_emb, int(gen.spec.image_size), info, apply_fn)


def _sample_fn(gen: Generator, sampling: generator_lib.Sampling, start_t: int | None = None):
  """``generator.make_sample_fn`` for these settings, compiled once per generator."""
  key = (sampling.sampler, sampling.steps, sampling.guidance != 1.0, start_t)
  if key not in gen._cache:
    gen._cache[key] = generator_lib.make_sample_fn(
        gen.spec, sampler=sampling.sampler, steps=sampling.steps, guided=key[2],
        start_t=start_t)
  return gen._cache[key]


def sample_flat(gen: Generator, class_emb, class_mask, *, rng, steps: int | None = None,
                guidance: float | None = None, sampler: str | None = None,
                temperature: float | None = None) -> jax.Array:
  """Batched core of ``generate``: (B, K, d) embeddings + (B, K) masks -> (B, D) weights.

  Args:
    gen: from ``load``.
    class_emb: (B, K, d) class embeddings, zero-padded to K >= max_classes slots.
    class_mask: (B, K) True for real classes.
    rng: PRNG key.
    steps, guidance, sampler, temperature: as ``generate``; None: the generator's
      defaults (``generator.resolve_sampling``).

  Returns:
    (B, D) flat weights.
  """
  s = generator_lib.resolve_sampling(gen.spec.config, sampler=sampler, steps=steps,
                                     guidance=guidance, temperature=temperature)
  return _sample_fn(gen, s)(gen.sampling_params, jnp.asarray(class_emb, jnp.float32),
                            jnp.asarray(class_mask, bool), rng, jnp.float32(s.guidance),
                            jnp.float32(s.temperature))


def enhance_flat(gen: Generator, flat, class_emb, class_mask, *, t: int, rng,
                 steps: int | None = None, guidance: float | None = None):
  """Weight enhancement: noise (B, D) nets to noise level ``t`` and denoise them with DDIM.

  Args:
    gen: from ``load``.
    flat: (B, D) the nets to enhance.
    class_emb, class_mask: (B, K, d) and (B, K), as ``sample_flat``.
    t: the noise level, 0 <= t <= T (the generator's ``num_timesteps``): level t is the
      diffusion's t-th noising step (schedule index t - 1). At t = 0 nothing is added and
      nothing is denoised: the nets come back unchanged. Each value compiles its own chain.
    rng: PRNG key for the noise and the chain.
    steps: DDIM steps over the levels [1, t] (all of them when t < steps); None: the
      config's.
    guidance: None: the config's.

  Returns:
    (denoised, noised): both (B, D) flat weights.

  Raises:
    ConfigError (a ValueError): t not a whole number in [0, T].
  """
  num_t = int(gen.spec.config["num_timesteps"])
  if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t <= num_t:
    raise ConfigError(f"enhancement noise level t must be a whole number in [0, {num_t}] "
                      f"(this generator's num_timesteps), got {t!r}")
  flat = jnp.asarray(flat, jnp.float32)
  if t == 0:
    return flat, flat
  s = generator_lib.resolve_sampling(gen.spec.config, sampler="ddim", steps=steps,
                                     guidance=guidance)
  return _sample_fn(gen, s, int(t) - 1)(
      gen.sampling_params, jnp.asarray(class_emb, jnp.float32), jnp.asarray(class_mask, bool), rng,
      jnp.float32(s.guidance), jnp.float32(s.temperature), flat)


def _nets_as_flat(gen: Generator, params, what: str = "params") -> tuple[jax.Array, bool]:
  """(B, D) flat weights of one net or a batch of nets of the generator's layout (a
  ``Net``, a ``NetBatch``, or their params), and whether a batch (a leading axis on every
  leaf) was given."""
  if isinstance(params, (net_lib.Net, net_lib.NetBatch)):
    params = params.params
  got = ParamLayout.from_params(params)
  want = gen.layout
  if got == want:
    return want.flatten(params)[None], False
  if (got.paths == want.paths and all(len(g) == len(w) + 1 and g[1:] == w
                                      for g, w in zip(got.shapes, want.shapes))
      and len({g[0] for g in got.shapes}) == 1):
    return jax.vmap(want.flatten)(params), True
  raise ConfigError(f"{what} are not a net of this generator's layout ({want.describe()}); "
                    f"got {got.describe()}")


def enhance(gen: Generator, params, text: str | Sequence[str] | None = None, *, t: int, rng,
            steps: int | None = None, guidance: float | None = None):
  """Weight enhancement of an existing net: noise it to level ``t``, denoise it with the text.

  It helps where the generator's estimate for the text is better than the net (an
  under-trained or few-shot net) and costs accuracy where the net is better than that
  estimate (a converged specialist); t = 0 returns the net unchanged. The enhancement
  study (docs/results.md, "Applications") gives the measured level per kind of net.

  Args:
    gen: from ``load``.
    params: a ``Net`` or ``NetBatch`` of this generator's layout, or params: one net's, or a
      batch with a leading axis.
    text: the net's task: class names, or one string split on commas and "and"; None (a
      ``Net`` or ``NetBatch`` only): its own class names.
    t: the noise level, 0 <= t <= the generator's ``num_timesteps``.
    rng: PRNG key for the noise.
    steps: DDIM steps from t (default: the config's); guidance: likewise.

  Returns:
    The enhanced net(s), in the form given: a ``Net`` or ``NetBatch`` (for ``text``'s
    classes) for one, params (one net, or a batch) for params.

  Raises:
    ConfigError (a ValueError): a net of another layout, an empty description (or none,
      for bare params), more classes than the generator's ``max_classes``, or a t outside
      [0, T].
  """
  check_sample_args(steps=steps, guidance=guidance)
  is_net = isinstance(params, (net_lib.Net, net_lib.NetBatch))
  if text is None:
    if not is_net:
      raise ConfigError("text is needed to enhance bare params (a Net knows its classes)")
    text = list(params.class_names)
  flat, batched = _nets_as_flat(gen, params)
  emb = _checked_embeddings(gen, text)
  padded, mask = pad_classes(emb, gen.spec.config["max_classes"])
  b = flat.shape[0]
  out, _ = enhance_flat(gen, flat, np.repeat(padded[None], b, 0), np.repeat(mask[None], b, 0),
                        t=t, rng=rng, steps=steps, guidance=guidance)
  out = gen.layout.unflatten(out)
  if not batched:
    out = jax.tree.map(lambda a: a[0], out)
  return as_nets(gen, out, class_names(text), emb, batch=batched) if is_net else out


def check_shots(gen: Generator, text: str | Sequence[str], images, labels):
  """A task's labelled images, checked: ((K, d) class embeddings, images, labels).

  Args:
    gen: from ``load``.
    text: the task's class names (label i is the i-th class), or one description.
    images: (N, S, S, 3) uint8 or float in [0, 1], at the generator's image size S
      (``Net``'s image rules, without resizing: ``net.prepare_images``, ``strict``).
    labels: (N,) ints in [0, number of classes); every class needs an image.

  Raises:
    ConfigError (a ValueError): an empty description, more classes than the generator
      takes, images of another shape, size, channel count or value range, labels that are
      not one int in [0, K) per image, or a class without images.
  """
  emb = _checked_embeddings(gen, text)
  k = emb.shape[0]
  images, labels = np.asarray(images), np.asarray(labels)
  size = int(gen.spec.image_size)
  if images.ndim != 4 or images.shape[1:] != (size, size, 3):
    raise ConfigError(f"images must be (N, {size}, {size}, 3) (this generator's image size), "
                      f"got {images.shape}")
  images, _ = net_lib.prepare_images(images, size, strict=True)  # dtype and value range
  if (labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer)
      or labels.min(initial=0) < 0 or labels.max(initial=0) >= k):
    raise ConfigError(f"labels must be ({images.shape[0]},) ints in [0, {k}) (one per image, "
                      f"{k} classes named), got {labels.dtype} {labels.shape}")
  counts = np.bincount(labels, minlength=k)
  if (counts == 0).any():
    raise ConfigError(f"class {int(np.argmin(counts))} "
                      f"({class_names(text)[int(np.argmin(counts))]!r}) has no images")
  return emb, images, labels.astype(np.int32)


class FewShotSettings(NamedTuple):
  """How ``few_shot`` fine-tunes (its defaults: ``FEW_SHOT``).

  max_steps, eval_every: the step cap and the steps between validation checks (a few
    images: short runs, frequent checks).
  patience, batch_size, learning_rate: the corpus trainer's recipe (``masstrain.TrainerSpec``
    holds its defaults, which the corpus config reads too).
  """
  max_steps: int
  eval_every: int
  patience: int
  batch_size: int
  learning_rate: float


_RECIPE = masstrain.TrainerSpec()
FEW_SHOT = FewShotSettings(max_steps=500, eval_every=25, patience=_RECIPE.patience,
                           batch_size=_RECIPE.batch_size, learning_rate=_RECIPE.learning_rate)


def few_shot_flat(gen: Generator, texts: Sequence, images: Sequence, labels: Sequence, *,
                  rngs: Sequence, inits: Sequence | None = None,
                  max_steps: int = FEW_SHOT.max_steps, eval_every: int = FEW_SHOT.eval_every,
                  patience: int = FEW_SHOT.patience, batch_size: int = FEW_SHOT.batch_size,
                  learning_rate: float = FEW_SHOT.learning_rate, steps: int | None = None,
                  guidance: float | None = None, sampler: str | None = None,
                  nets_per_chunk: int = 1) -> dict:
  """Batched core of ``few_shot``: B tasks, each fine-tuned as ``few_shot`` does it alone.

  Each task gets its own start, validation split and batches from its own key, exactly as
  in ``few_shot``; the tasks are then trained together by the corpus trainer's compiled
  loop (``masstrain.make_trainer``: ``vmap`` over ``nets_per_chunk`` nets, ``lax.map``
  over chunks, early stopping in a ``lax.while_loop``). Their images share one pool and
  every task's classes get their own ids in it, so no task sees another's images.

  Args:
    gen: from ``load``.
    texts, images, labels: B tasks' class names (or descriptions), labelled images and
      labels, as ``few_shot`` takes them (one entry per task).
    rngs: B PRNG keys, one per task (its generated start, its split, its batches).
    inits: None, or B entries: None (the generated net) or a net to start from (a ``Net``
      or its params).
    max_steps, eval_every, patience, batch_size, learning_rate: as ``few_shot``.
    steps, guidance, sampler: sampling of the generated starts; None: the generator's
      defaults.
    nets_per_chunk: tasks trained side by side under ``vmap`` (speed; results only up to
      float rounding).

  Returns:
    {"params": (B, D) the kept nets, "start": (B, D) their starts, "class_emb": B (K, d)
    class embeddings, and (B,) int arrays "kept_step", "steps_run", "train_images",
    "val_images"}.

  Raises:
    ConfigError (a ValueError): lists of different lengths, or anything ``few_shot``
      refuses.
  """
  n = len(texts)
  inits = [None] * n if inits is None else list(inits)
  if not n or not len(images) == len(labels) == len(rngs) == len(inits) == n:
    raise ConfigError(f"need one entry per task in texts, images, labels, rngs and inits; "
                      f"got {n}, {len(images)}, {len(labels)}, {len(rngs)}, {len(inits)}")
  if max_steps < 1 or eval_every < 1 or max_steps % eval_every or patience < 1:
    raise ConfigError(f"need max_steps a multiple of eval_every, both >= 1, and patience >= "
                      f"1; got {max_steps}, {eval_every}, {patience}")
  check_sample_args(steps=steps, guidance=guidance, sampler=sampler)
  checked = [check_shots(gen, t, x, y) for t, x, y in zip(texts, images, labels)]
  kmax_gen = gen.spec.config["max_classes"]
  starts, train, val, seeds = [], [], [], []
  for (emb, _, lab), rng, init in zip(checked, rngs, inits):
    k_init, k_split, k_train = jax.random.split(rng, 3)
    if init is None:
      padded, mask = pad_classes(emb, kmax_gen)
      starts.append(sample_flat(gen, padded[None], mask[None], rng=k_init, steps=steps,
                                guidance=guidance, sampler=sampler)[0])
    else:
      flat, batched = _nets_as_flat(gen, init, "init")
      if batched:
        raise ConfigError("init must be one net, not a batch")
      starts.append(flat[0])
    # A class with one image has nothing to hold out: it validates on its training image.
    t, v = shots_lib.split_shots(
        lab, int(jax.random.randint(k_split, (), 0, np.iinfo(np.int32).max)))
    train.append(t)
    val.append(v)
    seeds.append(jax.random.randint(k_train, (), 0, np.iinfo(np.int32).max))
  # One pool of images; task i's class c is pool class offset[i] + c.
  ks = np.array([e.shape[0] for e, _, _ in checked])
  offset = np.concatenate([[0], np.cumsum(ks)[:-1]])
  total, kmax = int(ks.sum()), int(ks.max())
  pool_labels = np.concatenate([lab + o for (_, _, lab), o in zip(checked, offset)])
  ci, cc = masstrain.index_by_class(pool_labels, total, keep=np.concatenate(train))
  vi, vc = masstrain.index_by_class(pool_labels, total, keep=np.concatenate(val))
  pool = np.concatenate([x for _, x, _ in checked])
  data = masstrain.DeviceData(
      jnp.asarray(pool), jnp.asarray(ci), jnp.asarray(cc), jnp.asarray(pool[:1]),
      jnp.zeros((total, 1), jnp.int32), jnp.zeros((total,), jnp.int32),
      jnp.asarray(np.concatenate([e for e, _, _ in checked]), jnp.float32), jnp.asarray(vi),
      jnp.asarray(vc))
  slots = np.arange(kmax)[None, :]
  classes = np.minimum(offset[:, None] + slots, total - 1).astype(np.int32)
  mask = slots < ks[:, None]
  chunk = max(1, min(int(nets_per_chunk), n))
  pad = -n % chunk  # repeat the last task: whole chunks, one compile per shape

  def padded(a):
    a = np.asarray(a)
    return np.concatenate([a, np.repeat(a[-1:], pad, 0)]) if pad else a

  spec = masstrain.TrainerSpec(steps=int(max_steps), batch_size=int(batch_size),
                               learning_rate=float(learning_rate), nets_per_chunk=chunk,
                               eval_every=int(eval_every), patience=int(patience))
  key = ("few_shot", spec)
  if key not in gen._cache:
    gen._cache[key] = masstrain.make_trainer(_net_module(gen)[0], spec, own_starts=True)
  start = jnp.stack(starts)
  out = gen._cache[key](data, jax.vmap(gen.layout.unflatten)(jnp.asarray(padded(start))),
                        masstrain.TaskBatch(jnp.asarray(padded(classes)),
                                            jnp.asarray(padded(mask)),
                                            jnp.asarray(padded(jnp.stack(seeds)), jnp.uint32)))
  return {"params": np.asarray(jax.vmap(gen.layout.flatten)(out.params))[:n],
          "start": np.asarray(start), "class_emb": [e for e, _, _ in checked],
          "kept_step": np.asarray(out.steps)[:n].astype(int),
          "steps_run": np.asarray(out.steps_run)[:n].astype(int),
          "train_images": np.array([int(t.sum()) for t in train]),
          "val_images": np.array([int(v.sum()) for v in val])}


def few_shot(gen: Generator, text: str | Sequence[str], images, labels, *, rng,
             init=None, max_steps: int = FEW_SHOT.max_steps,
             eval_every: int = FEW_SHOT.eval_every, patience: int = FEW_SHOT.patience,
             batch_size: int = FEW_SHOT.batch_size,
             learning_rate: float = FEW_SHOT.learning_rate, steps: int | None = None,
             guidance: float | None = None, sampler: str | None = None):
  """Few-shot initialisation: the generated net for ``text``, fine-tuned on a few images.

  The corpus trainer's recipe (Adam with a cosine decay, class-balanced batches) and its
  early stopping, on validation images carved from the given ones only
  (``data.tasks.shot_split``: a fifth of each class's images, at least one; a class with
  one image validates on it). One task of ``few_shot_flat``, which the few-shot studies
  call for many tasks at once.

  Args:
    gen: from ``load``.
    text: the task's class names (label i is the i-th class).
    images: (N, H, W, 3) uint8 or float in [0, 1], at the generator's image size
      (``Net``'s image rules, without resizing: ``net.prepare_images``, ``strict``).
    labels: (N,) ints in [0, number of classes); every class needs an image.
    rng: PRNG key (the generated start, which images validate, the batches).
    init: a net (a ``Net``, or its params) to start from instead of the generated one
      (e.g. to compare starts).
    max_steps: the step cap (a multiple of ``eval_every``).
    eval_every, patience: checks between validation measurements; checks without gain
      before stopping.
    batch_size, learning_rate: the recipe.
    steps, guidance, sampler: sampling of the generated start (as ``generate``); None:
      the generator's defaults.

  Returns:
    (net, info): the kept net (a ``Net``), and {"kept_step", "steps_run", "train_images",
    "val_images"}.

  Raises:
    ConfigError (a ValueError): an empty description, images of the wrong shape, labels out
      of range or a class without images, a net of another layout as ``init``, a step
      cap that ``eval_every`` does not divide.
  """
  out = few_shot_flat(gen, [text], [images], [labels], rngs=[rng], inits=[init],
                      max_steps=max_steps, eval_every=eval_every, patience=patience,
                      batch_size=batch_size, learning_rate=learning_rate, steps=steps,
                      guidance=guidance, sampler=sampler)
  info = {k: int(out[k][0]) for k in ("kept_step", "steps_run", "train_images", "val_images")}
  return as_nets(gen, gen.layout.unflatten(jnp.asarray(out["params"][0])), class_names(text),
                 out["class_emb"][0], batch=False), info


def generate(gen: Generator, text: str | Sequence[str], *, rng, num_samples: int = 1,
             steps: int | None = None, guidance: float | None = None,
             sampler: str | None = None, temperature: float | None = None,
             average: bool = False) -> net_lib.Net | net_lib.NetBatch:
  """Generates the net (or nets) for the described task.

  Args:
    gen: from ``load``.
    text: class names, or one string split on commas and "and".
    rng: PRNG key; the same key gives the same nets.
    num_samples: nets to generate.
    steps: sampler steps (DDIM); default from the config (1: the one-step estimate).
    guidance: classifier-free guidance scale (1.0 = conditional only).
    sampler: "ddim" or "ddpm".
    temperature: scale of the starting noise (default: the config's ``sample_temperature``,
      1.0). Lower gives nets nearer the conditional mode and less diverse; DDIM at 0 is
      deterministic (docs/results.md, "Sampler study", measures the trade-off).
    average: return ONE net, the weight average of the ``num_samples`` samples. Corpus
      nets share their base net's basin, so this cancels part of each sample's noise
      (measured in docs/results.md).

  Returns:
    A ``Net`` when ``num_samples`` is 1 or ``average`` is set: ``net(images)`` gives logits,
    ``net.predict(images)`` class names, ``net.save(path)`` writes it. Otherwise a
    ``NetBatch`` of ``num_samples`` nets: ``nets[i]``, ``len(nets)``, ``for net in nets``.

  Raises:
    ConfigError (a ValueError): an argument that cannot work, named: text that is not a
      str or list of str, more classes than the generator has class slots (its config's
      ``max_classes``, which bounds every task it was trained on), steps < 1, a NaN or
      infinite guidance or temperature, a num_samples that is not a whole number >= 1.
  """
  check_sample_args(steps=steps, guidance=guidance, sampler=sampler, temperature=temperature,
                    num_samples=num_samples)
  emb = _checked_embeddings(gen, text)
  padded, mask = pad_classes(emb, gen.spec.config["max_classes"])
  flat = sample_flat(gen, np.repeat(padded[None], num_samples, 0),
                     np.repeat(mask[None], num_samples, 0), rng=rng, steps=steps,
                     guidance=guidance, sampler=sampler, temperature=temperature)
  if average:
    flat = flat.mean(0, keepdims=True)
  if flat.shape[0] == 1:
    return as_nets(gen, gen.layout.unflatten(flat[0]), class_names(text), emb, batch=False)
  return as_nets(gen, gen.layout.unflatten(flat), class_names(text), emb, batch=True)


def union_classes(text_a: str | Sequence[str], text_b: str | Sequence[str]) -> list[str]:
  """The class names of the task "A and B": A's, then those of B that A lacks.

  Args:
    text_a, text_b: two task descriptions, as ``class_names`` takes.

  Returns:
    The union's cleaned class names.

  Raises:
    ConfigError (a ValueError): an empty or malformed description (named text_a or
      text_b), or one task that adds no class to the other (nothing to fuse).
  """
  names = []
  for label, text in (("text_a", text_a), ("text_b", text_b)):
    try:
      names.append(class_names(text))
    except ConfigError as e:  # class_names names its argument "text"
      msg = str(e)
      raise ConfigError(label + msg[4:] if msg.startswith("text") else f"{label}: {msg}"
                        ) from None
  a, b = names
  if set(b) <= set(a) or set(a) <= set(b):
    inner, outer = ("text_b", "text_a") if set(b) <= set(a) else ("text_a", "text_b")
    raise ConfigError(f"{inner} ({', '.join(b if inner == 'text_b' else a)}) adds no class "
                      f"to {outer}: fusing needs two different tasks; use generate() for one")
  return tasks_lib.ordered_union(a, b)


def fuse(gen: Generator, text_a: str | Sequence[str], text_b: str | Sequence[str], *, rng,
         num_samples: int = 1, steps: int | None = None, guidance: float | None = None,
         sampler: str | None = None, temperature: float | None = None,
         average: bool = False) -> net_lib.Net | net_lib.NetBatch:
  """Text-guided fusion: one net for task A and task B together, from their descriptions.

  The generator is asked for the union of the two class lists (``union_classes``: A's
  classes, then B's that A lacks), so this is ``generate`` on that list; no net of A or of
  B is needed (the "fusion" evaluator, ``evaluate/fusion.py``, compares it with merging
  such nets and with training on the union).

  Args:
    gen: from ``load``.
    text_a, text_b: the two tasks' descriptions (a string such as "tulip, rose and bus",
      or a list of class names).
    rng, num_samples, steps, guidance, sampler, temperature, average: as ``generate``.

  Returns:
    As ``generate``: a ``Net`` for the union's classes (a ``NetBatch`` for several samples).

  Raises:
    ConfigError (a ValueError): an empty or malformed description, a task that adds no
      class to the other, a union of more classes than the generator's ``max_classes``
      (both numbers named), or a bad sampling argument (as ``generate``).
  """
  union = union_classes(text_a, text_b)
  kmax = int(gen.spec.config["max_classes"])
  if len(union) > kmax:
    raise ConfigError(f"text_a and text_b together name {len(union)} different classes; "
                      f"this generator makes nets of at most {kmax} classes (its max_classes)")
  return generate(gen, union, rng=rng, num_samples=num_samples, steps=steps,
                  guidance=guidance, sampler=sampler, temperature=temperature,
                  average=average)


def take(params, i: int):
  """The i-th net's params: of a ``NetBatch``, of a ``Net`` (i = 0), or of a params pytree
  with a leading axis. Kept for code written against the earlier API, where ``generate``
  returned such a pytree; ``nets[i]`` is the net itself."""
  if isinstance(params, net_lib.NetBatch):
    return params[i].params
  if isinstance(params, net_lib.Net):
    if i not in (0, -1):
      raise IndexError(f"net {i} of a single Net")
    return params.params
  return jax.tree.map(lambda a: a[i], params)


def save_net(path: str, gen: Generator, params, text: str | Sequence[str]) -> None:
  """``Net.save`` for bare params of this generator (kept for code written against the
  earlier API): writes one net with ``text``'s classes as a standalone .npz that
  ``load_net`` reads back as a ``Net``.

  Args:
    path: the file to write.
    gen: from ``load``.
    params: one net's params (or a ``Net``) of the generator's layout.
    text: the net's task.

  Raises:
    ConfigError, MissingError: as ``Net.save``; a net of another layout or a batch.
  """
  flat, batched = _nets_as_flat(gen, params)
  if batched:
    raise ConfigError("save_net writes one net; pick one: nets[i] (or take(params, i))")
  names = class_names(text)
  as_nets(gen, gen.layout.unflatten(flat[0]), names, class_embeddings(gen, names),
          batch=False).save(path)
