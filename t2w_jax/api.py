"""The public functional API: ``load(workdir)``, ``generate(generator, text, ...)`` and
``fuse(generator, text_a, text_b, ...)`` (one net for two tasks together).

    import jax
    from t2w_jax import api          # or: from t2w_jax import load, generate
    gen = api.load("runs/default")
    params = api.generate(gen, "red circle, blue star and green heart",
                          rng=jax.random.PRNGKey(0), num_samples=4)
    net, emb = api.subtask_net(gen), api.class_embeddings(gen, "red circle, blue star ...")
    logits = net.apply({"params": api.take(params, 0)}, images, emb)

``generate`` is a pure function of (generator, text, rng, settings): no state is kept
between calls except compiled functions. The whole reverse chain runs in one ``lax.scan``
under ``jit``.

The same lines serve both subtask families (``t2w_jax.zoo.family``): for an adapter-family
corpus the generated params are the adapter's, and ``subtask_net(gen)`` returns the frozen
trunk composed with the adapter (a ``TrunkedNet``), so ``net.apply`` still takes images.
"""
import dataclasses
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t2w_jax import generator as generator_lib
from t2w_jax import text as text_lib
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.errors import ConfigError, MissingError
from t2w_jax.generator import check_sample_args  # noqa: F401  (part of the public API)
from t2w_jax.weights import ParamLayout
from t2w_jax.zoo import family as family_lib


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
    try:
      names = text_lib.split_description(text)
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
  """(K, d) embeddings of the described classes, with the generator's prompt template."""
  names = class_names(text)
  return gen.encoder.encode(text_lib.apply_template(names, gen.spec.template))


def subtask_net(gen: Generator, conv_impl: str = "lax", *, trunk_params=None):
  """The net whose ``apply({"params": generated}, images, class_emb)`` gives logits.

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


def pad_classes(class_emb: np.ndarray, max_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """(K, d) -> (K', d) zero-padded to at least max_classes, and the (K',) mask."""
  k = class_emb.shape[0]
  kp = max(k, max_classes)
  out = np.zeros((kp, class_emb.shape[1]), np.float32)
  out[:k] = class_emb
  return out, np.arange(kp) < k


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
  return _sample_fn(gen, s)(gen.params, jnp.asarray(class_emb, jnp.float32),
                            jnp.asarray(class_mask, bool), rng, jnp.float32(s.guidance),
                            jnp.float32(s.temperature))


def enhance_flat(gen: Generator, flat, class_emb, class_mask, *, t: int, rng,
                 steps: int | None = None, guidance: float | None = None):
  """Weight enhancement: noise (B, D) nets to timestep ``t`` and denoise them with DDIM.

  Args:
    gen: from ``load``.
    flat: (B, D) the nets to enhance.
    class_emb, class_mask: (B, K, d) and (B, K), as ``sample_flat``.
    t: the timestep to noise to, 0 <= t < T (each value compiles its own chain).
    rng: PRNG key for the noise and the chain.
    steps: DDIM steps over [0, t] (all of them when t + 1 < steps); None: the config's.
    guidance: None: the config's.

  Returns:
    (denoised, noised): both (B, D) flat weights.
  """
  s = generator_lib.resolve_sampling(gen.spec.config, sampler="ddim", steps=steps,
                                     guidance=guidance)
  return _sample_fn(gen, s, int(t))(
      gen.params, jnp.asarray(class_emb, jnp.float32), jnp.asarray(class_mask, bool), rng,
      jnp.float32(s.guidance), jnp.float32(s.temperature), jnp.asarray(flat, jnp.float32))


def generate(gen: Generator, text: str | Sequence[str], *, rng, num_samples: int = 1,
             steps: int | None = None, guidance: float | None = None,
             sampler: str | None = None, temperature: float | None = None,
             average: bool = False) -> dict:
  """Generates subtask-CNN parameters for the described task.

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
      deterministic (the README's sampler ablation measures the trade-off).
    average: return ONE net, the weight average of the ``num_samples`` samples. Corpus
      nets share their base net's basin, so this cancels part of each sample's noise
      (measured in the README's evaluation table).

  Returns:
    A params pytree with a leading ``num_samples`` axis (1 if ``average``);
    ``take(params, i)`` is the i-th net, ready for
    ``subtask_net(gen).apply({"params": ...}, images, class_emb)``.

  Raises:
    ConfigError (a ValueError): an argument that cannot work, named: text that is not a
      str or list of str, more classes than the generator has class slots (its config's
      ``max_classes``, which bounds every task it was trained on), steps < 1, a NaN or
      infinite guidance or temperature, a num_samples that is not a whole number >= 1.
  """
  check_sample_args(steps=steps, guidance=guidance, sampler=sampler, temperature=temperature,
                    num_samples=num_samples)
  kmax = int(gen.spec.config["max_classes"])
  k = len(class_names(text))
  if k > kmax:
    raise ConfigError(f"text names {k} classes; this generator was trained on tasks of at "
                      f"most {kmax} classes (its max_classes)")
  emb = class_embeddings(gen, text)
  padded, mask = pad_classes(emb, gen.spec.config["max_classes"])
  flat = sample_flat(gen, np.repeat(padded[None], num_samples, 0),
                     np.repeat(mask[None], num_samples, 0), rng=rng, steps=steps,
                     guidance=guidance, sampler=sampler, temperature=temperature)
  if average:
    flat = flat.mean(0, keepdims=True)
  return gen.layout.unflatten(flat)


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
         average: bool = False) -> dict:
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
    As ``generate``: params with a leading ``num_samples`` axis (1 if ``average``).

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
  """The i-th net of a batched params pytree."""
  return jax.tree.map(lambda a: a[i], params)


def save_net(path: str, gen: Generator, params, text: str | Sequence[str]) -> None:
  """Writes one generated net as a standalone .npz (weights, layout, net settings, class
  texts; for the adapter family also the frozen trunk, as ``trunk/<param path>`` arrays)."""
  from t2w_jax.io import atomic_save_npz  # local: writing a net is rare
  from flax import traverse_util
  names = class_names(text)
  flat = np.asarray(gen.layout.flatten(params))
  meta = {"layout": gen.layout.to_json(), "cnn": gen.spec.cnn, "classes": names,
          "encoder": gen.spec.encoder, "template": gen.spec.template,
          "image_size": gen.spec.image_size}
  trunk = {}
  if family_lib.family_of(gen.spec.cnn) == "adapter":
    trunk = {f"trunk/{k}": np.asarray(v) for k, v in
             traverse_util.flatten_dict(jax.device_get(trunk_of(gen)), sep="/").items()}
  atomic_save_npz(path, weights=flat, class_emb=class_embeddings(gen, names),
                  meta=np.array(json.dumps(meta)), **trunk)


def load_net(path: str):
  """Reads a net written by ``save_net``: (params, net, class names, class_emb).

  ``net.apply({"params": params}, images, class_emb)`` gives logits: ``net`` is the
  SubtaskCNN, or for the adapter family the trunk + adapter ``TrunkedNet``.
  """
  from flax import traverse_util
  with np.load(path) as z:
    meta = json.loads(str(z["meta"]))
    layout = ParamLayout.from_json(meta["layout"])
    params = layout.unflatten(jnp.asarray(z["weights"]))
    c = meta["cnn"]
    net = family_lib.build_subtask_net(c, int(c["embed_dim"]))
    if family_lib.family_of(c) == "adapter":
      trunk = traverse_util.unflatten_dict(
          {k[len("trunk/"):]: jnp.asarray(z[k]) for k in z.files if k.startswith("trunk/")},
          sep="/")
      net = family_lib.TrunkedNet(family_lib.build_trunk(c, int(c["embed_dim"])), trunk, net)
    return params, net, meta["classes"], z["class_emb"]
