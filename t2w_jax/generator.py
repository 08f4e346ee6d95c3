"""What a trained generator is, independent of how it was trained.

Inference (``t2w_jax.api``), evaluation and training all build on this module; it imports
nothing from ``t2w_jax.train``:

* ``GeneratorSpec``: everything about a generator except its parameters (the DiT config,
  the tokenizer, the normalisation statistics, the text encoder's name and the subtask net
  it generates for), written as ``workdir/generator.json`` when training starts;
* ``build_dit`` and ``make_denoiser``: the network and the one place its output becomes an
  x0 prediction;
* ``resolve_sampling``: the one place a sampling default (sampler, steps, guidance,
  temperature) is filled in from the generator's config;
* ``make_sample_fn``: the one sampling path, text -> condition -> reverse chain -> weights,
  from pure noise (generation) or from a noised net (enhancement);
* ``restore_ema_params``: reads only the EMA parameters out of a training checkpoint
  (through ``t2w_jax.checkpoints``, which owns the checkpoint format).
"""
import dataclasses
import json
import math
import numbers
import os
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2w_jax import checkpoints
from t2w_jax import io as io_lib
from t2w_jax.checkpoints import CHECKPOINT_DIR
from t2w_jax.diffusion import denoise_from, get_sampler, get_schedule, q_sample
from t2w_jax.errors import ConfigError, MissingError
from t2w_jax.models import DiT
from t2w_jax.models import dit as dit_lib
from t2w_jax.models import layers
from t2w_jax.text.condition import text_condition
from t2w_jax.weights import BlockTokenizer, LayerNorms, ParamLayout

SPEC_FILE = "generator.json"
SAMPLERS = ("ddim", "ddpm")

# Dit config keys added after generator.json files were first written, with the value the
# runs before each key actually used: normalisation by one mean per layer (before the mean
# net centred it), x0-prediction (the only parameterisation then), unscaled starting noise.
# ``GeneratorSpec.from_json`` fills them into an older spec's config, so that everything
# else reads the config's keys directly and every other default lives in configs/dit.py.
PRE_KEY_VALUES = {"norm_center": "layer", "parameterization": "x0", "sample_temperature": 1.0}
# Likewise for keys of the config's ``model``: those runs' DiTs had no text head, one
# adaLN modulation per block and per-token projections.
PRE_KEY_MODEL_VALUES = {"text_head": 0, "text_head_depth": 2, "adaln": "block",
                        "token_proj": "per_token",
                        "token_proj_rank": layers.TOKEN_PROJ_RANK}
# How the projection kernels of generators written before the spec recorded it were stored.
PRE_KEY_KERNEL_LAYOUT = "in_out"


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
  """What a generator is, apart from its parameters."""
  config: dict              # the dit config (ConfigDict.to_dict())
  tokenizer: BlockTokenizer
  norms: LayerNorms
  encoder: str              # text encoder name
  template: str             # prompt template the class embeddings were made with
  cnn: dict                 # subtask net settings (family, widths, logit_scale, embed_dim)
  image_size: int
  corpus_fingerprint: str   # layout fingerprint of the corpus it was trained on
  # How its checkpoints store projection kernels (models/layers.py's KERNEL_LAYOUT when it
  # was trained); inference reads an older layout and moves the kernels.
  kernel_layout: str = layers.KERNEL_LAYOUT

  @property
  def layout(self) -> ParamLayout:
    return self.tokenizer.layout

  @property
  def text_dim(self) -> int:
    return int(self.cnn["embed_dim"])

  def to_json(self) -> dict:
    return {"config": self.config, "tokenizer": self.tokenizer.to_json(),
            "norms": self.norms.to_json(), "encoder": self.encoder, "template": self.template,
            "cnn": self.cnn, "image_size": self.image_size,
            "corpus_fingerprint": self.corpus_fingerprint, "kernel_layout": self.kernel_layout}

  @classmethod
  def from_json(cls, d: dict) -> "GeneratorSpec":
    tok = BlockTokenizer.from_json(d["tokenizer"])
    config = {**PRE_KEY_VALUES, **d["config"]}
    config["model"] = {**PRE_KEY_MODEL_VALUES, **config["model"]}
    return cls(config, tok, LayerNorms.from_json(d["norms"], tokenizer=tok), d["encoder"],
               d["template"], d["cnn"], int(d["image_size"]), d["corpus_fingerprint"],
               d.get("kernel_layout", PRE_KEY_KERNEL_LAYOUT))

  def save(self, workdir: str) -> None:
    io_lib.atomic_write_json(os.path.join(workdir, SPEC_FILE), self.to_json())

  @classmethod
  def load(cls, workdir: str) -> "GeneratorSpec":
    path = os.path.join(workdir, SPEC_FILE)
    if not os.path.exists(path):
      raise MissingError(f"no generator in {workdir} (missing {SPEC_FILE}); train one "
                         "with launch/train.py")
    with open(path) as f:
      return cls.from_json(json.load(f))

  def identity(self) -> dict:
    """What a checkpoint must match to be restored into this spec's models.

    A model setting still at the value older runs had (``PRE_KEY_MODEL_VALUES``, and the
    kernel layout at ``PRE_KEY_KERNEL_LAYOUT``) is left out, so their checkpoints, written
    before the setting existed, still match.
    """
    c = self.config
    return canonical_identity({
        "model": c["model"], "disc": c["disc"], "block_size": c["block_size"],
        "token_group": c["token_group"], "max_classes": c["max_classes"],
        "norm_center": c["norm_center"], "parameterization": c["parameterization"],
        "layout": self.corpus_fingerprint, "encoder": self.encoder,
        "kernel_layout": self.kernel_layout})


def canonical_identity(identity: dict) -> dict:
  """A checkpoint identity with its model settings at their pre-key values
  (``PRE_KEY_MODEL_VALUES``) and the kernel layout at ``PRE_KEY_KERNEL_LAYOUT`` left out.

  Applied to the spec's identity and to the one a checkpoint stored, so that a checkpoint
  written before a setting existed and one written while the identity still listed it at
  that value both match a spec that has it at that value.
  """
  model = {k: v for k, v in identity["model"].items()
           if k not in PRE_KEY_MODEL_VALUES or v != PRE_KEY_MODEL_VALUES[k]}
  out = {**identity, "model": model}
  if out.get("kernel_layout") == PRE_KEY_KERNEL_LAYOUT:
    del out["kernel_layout"]
  return out


def training_rows(config, corpus) -> np.ndarray:
  """The corpus rows a generator learns weights from: the seen split, or its first
  ``config.seen_limit`` rows (the scaling curve's smaller corpora; 0: all)."""
  seen = corpus.indices("seen")
  limit = int(config.seen_limit)
  return seen[:limit] if limit > 0 else seen


def spec_from_corpus(config: ml_collections.ConfigDict, corpus) -> GeneratorSpec:
  """Builds the tokenizer and fits the per-layer normalisation on the seen split.

  Args:
    config: the dit config (configs/dit.py).
    corpus: an opened ``zoo.corpus.Corpus``.

  Returns:
    The spec of a generator trained with ``config`` on ``corpus``.
  """
  tok = BlockTokenizer(corpus.layout, config.block_size, group=config.token_group)
  seen = training_rows(config, corpus)
  if len(seen) == 0:
    raise ValueError(f"corpus at {corpus.path} has no seen tasks to train on")
  norms = LayerNorms.fit(np.asarray(corpus.weights[seen]), tok,
                         center=config.norm_center)
  meta = corpus.meta
  cnn = dict(meta["model"], embed_dim=int(corpus.class_emb.shape[1]))
  return GeneratorSpec(config.to_dict(), tok, norms, meta["encoder"], meta["template"], cnn,
                       int(meta["image_size"]), corpus.layout.fingerprint())


def build_dit(spec: GeneratorSpec) -> DiT:
  """The spec's DiT module (unbound)."""
  m = spec.config["model"]
  tok = spec.tokenizer
  return DiT(width=m["width"], depth=m["depth"], num_heads=m["num_heads"],
             mlp_ratio=m["mlp_ratio"], block_size=tok.block_size, num_layers=tok.num_layers,
             max_blocks=int(tok.block_ids.max()) + 1, text_dim=spec.text_dim,
             cond_adaln=m["cond_adaln"], cross_attention=m["cross_attention"],
             prior_bias=m["prior_bias"], text_as_token=m["text_as_token"],
             text_head=m["text_head"], text_head_depth=m["text_head_depth"],
             adaln=m["adaln"], token_proj=m["token_proj"],
             token_proj_rank=m["token_proj_rank"], dtype=jnp.dtype(m["dtype"]))


def inference_params(params, dtype):
  """The DiT's parameters as sampling reads them: every projection kernel
  (``layers.projection_kernel_inputs``) that computes in the compute ``dtype`` cast once to
  it; the rest, the conditioning path's kernels among it (``dit.on_conditioning_path``:
  they compute in float32), stays float32.

  The DiT casts each of those kernels to its compute dtype before every product
  (``models.layers.einsum``), so its outputs are bit-identical; what changes is that a call
  no longer reads every float32 weight to write its cast copy, which in bf16 at batch 1
  cost more than the products it fed. In float32 it returns ``params`` itself.
  """
  if jnp.dtype(dtype) == jnp.float32:
    return params
  return jax.tree_util.tree_map_with_path(
      lambda path, x: (x.astype(dtype) if layers.projection_kernel_inputs(path, x.shape)
                       and not dit_lib.on_conditioning_path(path) else x),
      params)


def dummy_inputs(spec: GeneratorSpec, batch: int = 1):
  """Inputs of the right shapes for init (and for shape-only tracing): (x, t, text)."""
  tok = spec.tokenizer
  k, d = spec.config["max_classes"], spec.text_dim
  x = jnp.zeros((batch,) + tok.token_shape, jnp.float32)
  t = jnp.zeros((batch,), jnp.int32)
  text = {"class_emb": jnp.zeros((batch, k, d)), "class_mask": jnp.ones((batch, k), bool),
          "fused": jnp.zeros((batch, d)), "log_prior": jnp.zeros((batch, k)),
          "drop": jnp.zeros((batch,), bool)}
  return x, t, text


def init_dit_params(spec: GeneratorSpec, rng):
  """Fresh DiT params, keeping their ``nn.Partitioned`` boxes (for sharding specs)."""
  x, t, text = dummy_inputs(spec)
  tok = spec.tokenizer
  return build_dit(spec).init(rng, x, t, jnp.asarray(tok.layer_ids), jnp.asarray(tok.block_ids),
                              text)["params"]


def make_denoiser(spec: GeneratorSpec):
  """``denoise(params, x_t, t, text) -> x0`` for this spec: the one place the DiT's output
  is turned into an x0 prediction (training, sampling, enhancement all call this).

  ``parameterization`` (dit config):
    "x0": x0 = DiT(x_t) (G.pt and the PyTorch T2W); a zero DiT decodes to the mean net at
      every t, so at small t it must rebuild its input through its narrow width.
    "v": x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) DiT(x_t) (v-prediction). With unit-variance
      normalised tokens, sqrt(abar_t) x_t is the posterior mean under a unit Gaussian prior:
      a zero DiT is the identity at small t and the mean net at large t, and the network
      only learns the correction.
  """
  dit = build_dit(spec)
  tok = spec.tokenizer
  lids, bids = jnp.asarray(tok.layer_ids), jnp.asarray(tok.block_ids)
  how = spec.config["parameterization"]
  if how not in ("x0", "v"):
    raise ValueError(f"unknown parameterization {how!r}; use 'x0' or 'v'")
  schedule = get_schedule(spec.config["schedule"], spec.config["num_timesteps"])

  def denoise(params, x_t, t, text):
    out = dit.apply({"params": params}, x_t, t, lids, bids, text)
    if how == "x0":
      return out
    a = schedule.alphas_cumprod[t][:, None, None]
    return jnp.sqrt(a) * x_t - jnp.sqrt(1.0 - a) * out

  return denoise


# --------------------------------------------------------------------------- sampling
class Sampling(NamedTuple):
  """Resolved sampling settings (no None left)."""
  sampler: str
  steps: int         # DDPM: the whole chain (num_timesteps)
  guidance: float
  temperature: float


def _finite(name: str, value, *, minimum: float | None = None) -> float:
  """value as a float, refusing non-numbers, NaN, inf and (if given) values < minimum."""
  if (not isinstance(value, numbers.Real) or isinstance(value, bool)
      or not math.isfinite(value)):
    raise ConfigError(f"{name} must be a finite number, got {value!r}")
  if minimum is not None and value < minimum:
    raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")
  return float(value)


def check_sample_args(*, steps=None, guidance=None, sampler=None, temperature=None,
                      num_samples=1) -> None:
  """Refuses a sampling argument that cannot work, naming it.

  Args:
    steps: None or a whole number >= 1.
    guidance: None or a finite number.
    sampler: None, "ddim" or "ddpm".
    temperature: None or a finite number >= 0.
    num_samples: a whole number >= 1.

  Raises:
    ConfigError (a ValueError) naming the argument.
  """
  if steps is not None and (not isinstance(steps, numbers.Integral)
                            or isinstance(steps, bool) or steps < 1):
    raise ConfigError(f"steps must be a whole number >= 1 (or None for the config's "
                      f"default), got {steps!r}")
  if guidance is not None:
    _finite("guidance", guidance)
  if temperature is not None:
    _finite("temperature", temperature, minimum=0.0)
  if sampler is not None and sampler not in SAMPLERS:
    raise ConfigError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
  if (not isinstance(num_samples, numbers.Integral) or isinstance(num_samples, bool)
      or num_samples < 1):
    raise ConfigError(f"num_samples must be a whole number >= 1, got {num_samples!r}")


def resolve_sampling(config: dict, *, sampler: str | None = None, steps: int | None = None,
                     guidance: float | None = None,
                     temperature: float | None = None) -> Sampling:
  """The one place sampling defaults come from: each None takes the generator's config.

  Args:
    config: the generator's dit config (``spec.config``).
    sampler: "ddim" or "ddpm"; None: ``config["sampler"]``.
    steps: DDIM steps; None: ``config["sample_steps"]``. DDPM always walks the whole chain,
      so for DDPM the resolved value is ``num_timesteps`` whatever is asked.
    guidance: classifier-free guidance scale; None: ``config["guidance"]``.
    temperature: starting-noise scale; None: ``config["sample_temperature"]``.

  Returns:
    The resolved ``Sampling``.

  Raises:
    ConfigError: an argument that cannot work (see ``check_sample_args``).
  """
  check_sample_args(steps=steps, guidance=guidance, sampler=sampler, temperature=temperature)
  sampler = sampler or config["sampler"]
  steps = int(config["sample_steps"] if steps is None else steps)
  if sampler == "ddpm":
    steps = int(config["num_timesteps"])
  guidance = float(config["guidance"] if guidance is None else guidance)
  temperature = float(config["sample_temperature"] if temperature is None else temperature)
  return Sampling(sampler, steps, guidance, temperature)


def make_sample_fn(spec: GeneratorSpec, *, sampler: str, steps: int, guided: bool,
                   start_t: int | None = None):
  """The one sampling path: class embeddings -> text condition (and the null condition for
  guidance) -> reverse chain of the spec's denoiser -> de-normalised, de-tokenised weights.

  Args:
    spec: the generator's spec.
    sampler: "ddim" or "ddpm".
    steps: DDIM steps (over the whole chain, or over [0, start_t]).
    guided: whether classifier-free guidance runs (guidance != 1); the unguided chain runs
      the conditional model alone.
    start_t: None: generate from pure noise. An int in [0, T): enhancement, i.e. tokenise
      and normalise the given nets, noise them to ``start_t`` with ``q_sample`` (pad
      positions stay 0, as in the training data) and run the chain from there.

  Returns:
    A jitted ``fn(params, class_emb (B, K, d), mask (B, K), rng, guidance, temperature,
    start=None)``. Generation returns (B, D) flat weights (``temperature`` scales the
    starting noise; ``start`` is unused). Enhancement takes ``start`` (B, D) flat weights
    and returns (denoised, noised), both (B, D) (``temperature`` is unused).
  """
  num_t = int(spec.config["num_timesteps"])
  if start_t is not None and not 0 <= start_t < num_t:
    raise ValueError(f"enhancement timestep t={start_t} out of range [0, {num_t}) for this "
                     "generator's schedule")
  model = make_denoiser(spec)
  tok, norms = spec.tokenizer, spec.norms
  schedule = get_schedule(spec.config["schedule"], num_t)
  smp = get_sampler(sampler, num_steps=int(steps)) if sampler == "ddim" else get_sampler(sampler)
  prior_temperature = spec.config["prior_temperature"]

  def back(tokens):
    return tok.detokenize(norms.denormalize(tokens))

  def run(params, class_emb, mask, rng, guidance, temperature, start=None):
    b = class_emb.shape[0]
    cond = text_condition(class_emb, mask, prior_temperature)
    null = dict(cond, drop=jnp.ones((b,), bool))
    null_cond = null if guided else None
    guidance = guidance if guided else 1.0

    def denoise(x_t, t, c):
      return model(params, x_t, t, c)

    if start_t is None:
      tokens = smp(denoise, schedule, rng, (b,) + tok.token_shape, cond, null_cond=null_cond,
                   guidance=guidance, temperature=temperature)
      return back(tokens)
    x0 = norms.normalize(tok.tokenize(start))
    k_noise, k_chain = jax.random.split(rng)
    noise = jnp.where(tok.mask, jax.random.normal(k_noise, x0.shape), 0.0)
    x_t = q_sample(schedule, x0, jnp.full((b,), start_t, jnp.int32), noise)
    out = denoise_from(smp, denoise, schedule, k_chain, x_t, start_t, cond,
                       null_cond=null_cond, guidance=guidance)
    return back(out), back(x_t)

  return jax.jit(run)


# --------------------------------------------------------------------------- checkpoints
def restore_ema_params(workdir: str, spec: GeneratorSpec, step: int | None = None):
  """Reads the EMA parameters (and the step) of a training checkpoint, nothing else.

  The checkpoint format, its digests and its checks are ``t2w_jax.checkpoints``'s; this
  only gives it the structure of this spec's DiT parameters.

  Args:
    workdir: the training run's directory (checkpoints in ``workdir/checkpoints``).
    spec: the generator's spec; the checkpoint's meta must match ``spec.identity()``.
    step: a checkpoint step; None for the latest.

  Returns:
    (ema_params, step).

  Raises:
    MissingError: no checkpoint.
    CorruptError: the step is damaged (step, file and an intact older step named), or its
      parameters are not finite.
    ConfigError: the checkpoint was written with another config (keys named).
  """
  ema = jax.eval_shape(lambda r: nn.meta.unbox(init_dit_params(spec, r)),
                       jax.random.PRNGKey(0))
  ema = layers.move_projection_kernels(ema, layers.KERNEL_LAYOUT, spec.kernel_layout)
  params, restored = checkpoints.restore_ema(os.path.join(workdir, CHECKPOINT_DIR),
                                             spec.identity(), ema, step,
                                             canonical=canonical_identity)
  return layers.move_projection_kernels(params, spec.kernel_layout, layers.KERNEL_LAYOUT), restored
