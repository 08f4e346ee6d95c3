"""Shot-conditioned generation: the generator as a prior, a few labelled images as evidence.

Given a task's text and k labelled images per class, the net is the generator's zero-shot
net refined on the shots' cross-entropy, held near the generator's nets for that text by a
prior term, in the generator's normalised token space z:

    J(z) = CE(shots; decode(z)) + prior_weight * R(z)

* ``prior="diffusion"`` (the generative prior): R's gradient is z - D(z_t, t, text), the
  generator's own denoising residual at a random noise level t, drawn uniformly from
  ``t_range`` (fractions of the schedule's T), with z_t = q(z_t | z) (score
  distillation). The pull is toward the nets the generator would
  make for this text, so it is strong along directions in which the corpus's nets for
  similar tasks do not vary and weak along those in which they do: a learned metric.
* ``prior="l2"`` (its deterministic counterpart): R = |z - z0|^2 / 2 around the zero-shot
  net z0, the same pull in every direction.
* ``prior="none"``: plain fine-tuning of z from z0.

Choices are made on the shots alone: a fifth of each class's shots (at least one) validate
(``data.tasks.shot_split``), and the kept z is the one with the lowest validation
cross-entropy over the checks (the start z0 is the first check, so "do nothing" can win).
With a single shot of some class nothing is held out to choose with, and z0 is returned. Everything is batched over tasks: one call
refines B tasks at once, each with its own shots.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from t2w_jax import generator as generator_lib
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.diffusion import get_schedule, q_sample
from t2w_jax.errors import ConfigError
from t2w_jax.text.condition import text_condition
from t2w_jax.zoo import masstrain

PRIORS = ("diffusion", "l2", "none")


class Shots(NamedTuple):
  """B tasks' labelled images, M per task (padded), and which of them train and validate.

  images: (B, M, H, W, C) uint8 images (or float features for the adapter family).
  labels: (B, M) int32 class slot of each image in its task.
  train_w / val_w: (B, M) float32 weights of each image in the training / validation
    cross-entropy, each summing to 1 per task (class-balanced); 0 for padding.
  held_out: (B,) bool, True where every class has a validation image it does not train
    on. Where it is False no check can be chosen honestly, and the start is returned: on
    seen tasks' validation rows, refining on single shots lowered accuracy under every
    setting tried (docs/results/shots.md).
  """
  images: Any
  labels: Any
  train_w: Any
  val_w: Any
  held_out: Any


def balanced_weights(labels: np.ndarray, use: np.ndarray) -> np.ndarray:
  """(M,) weights over the used images: each class present counts alike, total 1."""
  w = np.zeros(len(labels), np.float32)
  classes = np.unique(labels[use])
  for c in classes:
    sel = use & (labels == c)
    w[sel] = 1.0 / (sel.sum() * len(classes))
  return w


def split_shots(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train, val) boolean masks over one task's images: ``tasks.shot_split`` per class, the
  held-out ones drawn with ``seed``; a class with one image trains and validates on it."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  val = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == c))
    n_train, _ = tasks_lib.shot_split(len(rows))
    val[rows[n_train:]] = True
  single = np.bincount(labels)[labels] == 1
  return ~val, val | single


class ShotConfig(NamedTuple):
  """How the refinement runs (defaults: ``DEFAULTS``)."""
  prior: str
  prior_weight: float
  steps: int
  check_every: int
  learning_rate: float
  t_range: tuple[float, float]  # noise levels of the diffusion prior, fractions of T


# Chosen on seen tasks' validation rows (never a test image; docs/results/shots.md).
DEFAULTS = ShotConfig(prior="diffusion", prior_weight=30.0, steps=200, check_every=20,
                      learning_rate=0.05, t_range=(0.05, 0.5))


def check_config(cfg: ShotConfig, num_timesteps: int) -> None:
  """Refuses settings that cannot work, naming them (a ValueError)."""
  if cfg.prior not in PRIORS:
    raise ValueError(f"prior must be one of {PRIORS}, got {cfg.prior!r}")
  if cfg.steps < 0 or cfg.check_every < 1 or cfg.steps % cfg.check_every:
    raise ValueError(f"steps must be a multiple of check_every >= 1 (0: no refinement), got "
                     f"steps={cfg.steps}, check_every={cfg.check_every}")
  if not (cfg.prior_weight >= 0 and cfg.learning_rate > 0):
    raise ValueError(f"need prior_weight >= 0 and learning_rate > 0, got "
                     f"{cfg.prior_weight}, {cfg.learning_rate}")
  lo, hi = cfg.t_range
  if not 0 <= lo < hi <= 1:
    raise ValueError(f"t_range must be fractions of the schedule, 0 <= lo < hi <= 1, got "
                     f"{cfg.t_range}")


def timestep_range(cfg: ShotConfig, num_timesteps: int) -> tuple[int, int]:
  """[lo, hi) integer timesteps of the diffusion prior (at least one)."""
  lo = min(int(cfg.t_range[0] * num_timesteps), num_timesteps - 1)
  return lo, max(lo + 1, int(cfg.t_range[1] * num_timesteps))


def make_refiner(spec: generator_lib.GeneratorSpec, model, cfg: ShotConfig = DEFAULTS):
  """``refine(params, z0, class_emb, class_mask, shots, rng) -> (z, info)``, jitted.

  Args:
    spec: the generator's spec (tokenizer, normalisation, schedule, denoiser).
    model: the subtask net (``task_loss.subtask_model`` form, so it maps over tasks).
    cfg: the refinement settings.

  Returns:
    A jitted function of the generator's (EMA) params, z0 (B, L, P) normalised tokens of
    the starting nets, (B, K, d) class embeddings and (B, K) mask, a ``Shots`` and a PRNG
    key; it returns the kept z (B, L, P) and {"kept_check": (B,) int32 (0 = the start),
    "val_loss": (B,) at the kept check, "start_val_loss": (B,)}.
  """
  check_config(cfg, int(spec.config["num_timesteps"]))
  tok, norms = spec.tokenizer, spec.norms
  layout = spec.layout
  tmask = jnp.asarray(tok.mask, jnp.float32)
  n_valid = jnp.maximum(jnp.sum(tmask), 1.0)
  denoise = generator_lib.make_denoiser(spec)
  schedule = get_schedule(spec.config["schedule"], spec.config["num_timesteps"])
  prior_temperature = spec.config["prior_temperature"]
  tx = optax.adam(cfg.learning_rate)
  num_checks = cfg.steps // cfg.check_every
  t_lo, t_hi = timestep_range(cfg, int(spec.config["num_timesteps"]))

  def task_ce(z, images, labels, weights, emb, mask):
    """(B,) weighted cross-entropy of the decoded nets on their shots."""
    nets = tok.detokenize(norms.denormalize(z))

    def one(flat, x, y, w, e, m):
      logits = masstrain.masked_logits(model, layout.unflatten(flat), x, e, m)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      # Padded images are labelled with padded (-inf) classes: weight 0 must not meet inf.
      return jnp.sum(jnp.where(w > 0, w * ce, 0.0))

    return jax.vmap(one)(nets, images, labels, weights, emb, mask)

  def refine(params, z0, class_emb, class_mask, shots: Shots, rng):
    cond = text_condition(class_emb, class_mask, prior_temperature)
    b = z0.shape[0]

    def val_loss(z):
      return task_ce(z, shots.images, shots.labels, shots.val_w, class_emb, class_mask)

    def objective(z, key):
      ce = task_ce(z, shots.images, shots.labels, shots.train_w, class_emb, class_mask)
      if cfg.prior == "diffusion":
        k_t, k_n = jax.random.split(key)
        t = jax.random.randint(k_t, (b,), t_lo, t_hi)
        noise = jax.random.normal(k_n, z.shape) * tmask
        z_t = q_sample(schedule, jax.lax.stop_gradient(z), t, noise)
        target = jax.lax.stop_gradient(denoise(params, z_t, t, cond))
      elif cfg.prior == "l2":
        target = z0
      else:
        target = None
      prior = (jnp.zeros((b,)) if target is None else
               0.5 * jnp.sum(((z - target) * tmask) ** 2, axis=(1, 2)) / n_valid)
      # A sum over tasks: each task's gradient is its own objective's.
      return jnp.sum(ce + cfg.prior_weight * prior)

    grad = jax.grad(objective)

    def check(carry, i):
      z, opt, best_z, best_val, kept = carry

      def step(c, j):
        z, opt = c
        g = grad(z, jax.random.fold_in(rng, i * cfg.check_every + j))
        upd, opt = tx.update(g, opt, z)
        return (optax.apply_updates(z, upd) * tmask, opt), None

      (z, opt), _ = jax.lax.scan(step, (z, opt), jnp.arange(cfg.check_every))
      v = val_loss(z)
      better = v < best_val  # strict: a tie keeps the earlier (closer to the prior) net
      best_z = jnp.where(better[:, None, None], z, best_z)
      return (z, opt, best_z, jnp.where(better, v, best_val),
              jnp.where(better, i + 1, kept)), None

    z0 = z0 * tmask
    v0 = val_loss(z0)
    carry = (z0, tx.init(z0), z0, v0, jnp.zeros((b,), jnp.int32))
    if num_checks:
      carry, _ = jax.lax.scan(check, carry, jnp.arange(num_checks))
    _, _, best_z, best_val, kept = carry
    keep = jnp.asarray(shots.held_out, bool)
    best_z = jnp.where(keep[:, None, None], best_z, z0)
    return best_z, {"kept_check": jnp.where(keep, kept, 0),
                    "val_loss": jnp.where(keep, best_val, v0), "start_val_loss": v0}

  return jax.jit(refine)


def to_tokens(spec: generator_lib.GeneratorSpec, flat) -> jax.Array:
  """(B, D) flat weights -> (B, L, P) normalised tokens (the refiner's space)."""
  return spec.norms.normalize(spec.tokenizer.tokenize(jnp.asarray(flat, jnp.float32)))


def from_tokens(spec: generator_lib.GeneratorSpec, z) -> jax.Array:
  """(B, L, P) normalised tokens -> (B, D) flat weights."""
  return spec.tokenizer.detokenize(spec.norms.denormalize(z))


# --------------------------------------------------------------------------- the user's call
def generate_with_shots(gen, text, images, labels, *, rng, prior: str = DEFAULTS.prior,
                        prior_weight: float = DEFAULTS.prior_weight,
                        steps: int = DEFAULTS.steps, check_every: int = DEFAULTS.check_every,
                        learning_rate: float = DEFAULTS.learning_rate,
                        t_range: tuple[float, float] = DEFAULTS.t_range):
  """The generator's net for ``text``, conditioned on a few labelled images of the task.

  The zero-shot net (one DDIM step) is refined on the images' cross-entropy with the
  generator's own denoiser as the prior (module docstring); a fifth of each class's images
  (at least one) validate, and the best-validating check is kept, the zero-shot net
  included.

  Args:
    gen: from ``api.load``.
    text: the task's class names (label i is the i-th class), or one description.
    images, labels: the labelled images (``api.check_shots``): (N, S, S, 3) uint8 or float
      in [0, 1] at the generator's image size S, and (N,) ints in [0, number of classes),
      every class with an image.
    rng: PRNG key (the zero-shot net, the validation split, the prior's noise).
    prior: "diffusion" (default), "l2" or "none" (``PRIORS``).
    prior_weight, steps, check_every, learning_rate, t_range: ``ShotConfig``.

  Returns:
    (net, info): the net (an ``api.Net``), and {"kept_step" (0: the zero-shot net), "val_loss",
    "zero_shot_val_loss", "train_images", "val_images", "refined"}. With one image of
    some class there is nothing to validate on, and the zero-shot net is returned
    ("refined": False).

  Raises:
    ConfigError (a ValueError): bad text, images or labels (``api.check_shots``), or
      settings that cannot work.
  """
  from t2w_jax import api  # local: api is the user's layer above this module
  emb, images, labels = api.check_shots(gen, text, images, labels)
  cfg = ShotConfig(prior, float(prior_weight), int(steps), int(check_every),
                   float(learning_rate), tuple(float(t) for t in t_range))
  try:
    check_config(cfg, int(gen.spec.config["num_timesteps"]))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  k_gen, k_split, k_ref = jax.random.split(rng, 3)
  padded, mask = api.pad_classes(emb, gen.spec.config["max_classes"])
  z0 = to_tokens(gen.spec, api.sample_flat(gen, padded[None], mask[None], rng=k_gen))
  train, val = split_shots(labels, int(jax.random.randint(k_split, (), 0, 2**31 - 1)))
  held_out = bool(np.bincount(labels).min() >= 2)
  shots = Shots(images[None], labels[None], balanced_weights(labels, train)[None],
                balanced_weights(labels, val)[None], np.array([held_out]))
  key = ("shots",) + tuple(cfg)
  if key not in gen._cache:
    from t2w_jax import task_loss  # local: the subtask net in its vmappable form
    gen._cache[key] = make_refiner(gen.spec, task_loss.subtask_model(gen.spec.cnn,
                                                                      gen.spec.text_dim), cfg)
  z, info = gen._cache[key](gen.params, z0, jnp.asarray(padded[None]), jnp.asarray(mask[None]),
                            shots, k_ref)
  params = gen.layout.unflatten(from_tokens(gen.spec, z)[0])
  net = api.as_nets(gen, params, api.class_names(text), emb, batch=False)
  return net, {"kept_step": int(info["kept_check"][0]) * cfg.check_every,
                  "val_loss": float(info["val_loss"][0]),
                  "zero_shot_val_loss": float(info["start_val_loss"][0]),
                  "train_images": int(train.sum()), "val_images": int(val.sum()),
                  "refined": held_out}
