"""Train state and the pieces a run is built from (tokenizer, models, optimisers).

``GeneratorSpec`` is everything about a trained generator except its parameters: the DiT
config, the tokenizer, the normalisation statistics, the text encoder's name and the
subtask CNN it generates for. It is written as ``workdir/generator.json`` when training
starts, and ``api.load`` reads it back.
"""
import dataclasses
import json
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from t2w_jax import io as io_lib
from t2w_jax.errors import MissingError
from t2w_jax.models import DiT, WeightDiscriminator
from t2w_jax.weights import BlockTokenizer, LayerNorms, ParamLayout

SPEC_FILE = "generator.json"


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training; a pytree, so it shards and checkpoints.

  Attributes:
    step: number of updates applied.
    params / ema_params: DiT parameters and their exponential moving average.
    opt_state: the DiT optimiser state.
    disc_params / disc_opt_state: the weight-space discriminator and its optimiser.
    rng: the run's PRNG key (split every step).
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  disc_params: Any
  disc_opt_state: Any
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
  """What a generator is, apart from its parameters."""
  config: dict              # the dit config (ConfigDict.to_dict())
  tokenizer: BlockTokenizer
  norms: LayerNorms
  encoder: str              # text encoder name
  template: str             # prompt template the class embeddings were made with
  cnn: dict                 # SubtaskCNN settings (widths, strides, logit_scale, embed_dim)
  image_size: int
  corpus_fingerprint: str   # layout fingerprint of the corpus it was trained on

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
            "corpus_fingerprint": self.corpus_fingerprint}

  @classmethod
  def from_json(cls, d: dict) -> "GeneratorSpec":
    tok = BlockTokenizer.from_json(d["tokenizer"])
    return cls(d["config"], tok, LayerNorms.from_json(d["norms"], tokenizer=tok), d["encoder"],
               d["template"], d["cnn"], int(d["image_size"]), d["corpus_fingerprint"])

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
    """What a checkpoint must match to be restored into this spec's models."""
    c = self.config
    return {"model": c["model"], "disc": c["disc"], "block_size": c["block_size"],
            "token_group": c["token_group"], "max_classes": c["max_classes"],
            "norm_center": c.get("norm_center", "layer"),
            "parameterization": c.get("parameterization", "x0"),
            "layout": self.corpus_fingerprint, "encoder": self.encoder}


def spec_from_corpus(config: ml_collections.ConfigDict, corpus) -> GeneratorSpec:
  """Builds the tokenizer and fits the per-layer normalisation on the seen split."""
  tok = BlockTokenizer(corpus.layout, config.block_size, group=config.token_group)
  seen = corpus.indices("seen")
  if len(seen) == 0:
    raise ValueError(f"corpus at {corpus.path} has no seen tasks to train on")
  norms = LayerNorms.fit(np.asarray(corpus.weights[seen]), tok,
                         center=config.get("norm_center", "layer"))
  meta = corpus.meta
  cnn = dict(meta["model"], embed_dim=int(corpus.class_emb.shape[1]))
  return GeneratorSpec(config.to_dict(), tok, norms, meta["encoder"], meta["template"], cnn,
                       int(meta["image_size"]), corpus.layout.fingerprint())


def build_dit(spec: GeneratorSpec) -> DiT:
  m = spec.config["model"]
  tok = spec.tokenizer
  return DiT(width=m["width"], depth=m["depth"], num_heads=m["num_heads"],
             mlp_ratio=m["mlp_ratio"], block_size=tok.block_size, num_layers=tok.num_layers,
             max_blocks=int(tok.block_ids.max()) + 1, text_dim=spec.text_dim,
             cond_adaln=m["cond_adaln"], cross_attention=m["cross_attention"],
             prior_bias=m["prior_bias"], text_as_token=m["text_as_token"],
             dtype=jnp.dtype(m["dtype"]))


def build_disc(spec: GeneratorSpec) -> WeightDiscriminator:
  d = spec.config["disc"]
  tok = spec.tokenizer
  return WeightDiscriminator(width=d["width"], depth=d["depth"], num_heads=d["num_heads"],
                             mlp_ratio=d["mlp_ratio"], block_size=tok.block_size,
                             num_layers=tok.num_layers,
                             max_blocks=int(tok.block_ids.max()) + 1, text_dim=spec.text_dim,
                             text_conditioned=d["text_conditioned"])


def build_optimizers(config) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """AdamW with linear warmup + cosine decay and global-norm clipping; Adam for the critic."""
  lr = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                          max(config.num_steps, config.warmup_steps + 1),
                                          end_value=0.05 * config.learning_rate)
  tx = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                   optax.adamw(lr, b1=0.9, b2=0.99, weight_decay=config.weight_decay))
  disc_tx = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                        optax.adam(config.disc.learning_rate, b1=0.5, b2=0.99))
  return tx, disc_tx


def dummy_inputs(spec: GeneratorSpec, batch: int = 1):
  """Inputs of the right shapes for init (and for shape-only tracing)."""
  tok = spec.tokenizer
  k, d = spec.config["max_classes"], spec.text_dim
  x = jnp.zeros((batch,) + tok.token_shape, jnp.float32)
  t = jnp.zeros((batch,), jnp.int32)
  text = {"class_emb": jnp.zeros((batch, k, d)), "class_mask": jnp.ones((batch, k), bool),
          "fused": jnp.zeros((batch, d)), "log_prior": jnp.zeros((batch, k)),
          "drop": jnp.zeros((batch,), bool)}
  return x, t, text


def init_state(spec: GeneratorSpec, config, rng) -> TrainState:
  """A fresh TrainState whose params keep their ``nn.Partitioned`` boxes (for specs)."""
  dit, disc = build_dit(spec), build_disc(spec)
  tx, disc_tx = build_optimizers(config)
  r_dit, r_disc, r_run = jax.random.split(rng, 3)
  x, t, text = dummy_inputs(spec)
  lids, bids = jnp.asarray(spec.tokenizer.layer_ids), jnp.asarray(spec.tokenizer.block_ids)
  params = dit.init(r_dit, x, t, lids, bids, text)["params"]
  disc_params = disc.init(r_disc, x, lids, bids, text["fused"])["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=tx.init(params), disc_params=disc_params,
                    disc_opt_state=disc_tx.init(disc_params), rng=r_run)


def unbox(tree):
  return nn.meta.unbox(tree)


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
  from t2w_jax.diffusion import get_schedule  # local: keeps state.py import-light
  dit = build_dit(spec)
  tok = spec.tokenizer
  lids, bids = jnp.asarray(tok.layer_ids), jnp.asarray(tok.block_ids)
  how = spec.config.get("parameterization", "x0")
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
