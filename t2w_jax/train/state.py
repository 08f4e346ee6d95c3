"""Train state and what only training needs: the discriminator and the optimisers.

What defines the trained generator itself (``GeneratorSpec``, the DiT, the denoiser) lives
in ``t2w_jax.generator``, which inference uses without importing this module.
"""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from t2w_jax.generator import GeneratorSpec, dummy_inputs, init_dit_params
from t2w_jax.models import WeightDiscriminator
from t2w_jax.train.adamw import clipped_adamw


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


def build_disc(spec: GeneratorSpec) -> WeightDiscriminator:
  """The spec's weight-space discriminator (training only)."""
  d = spec.config["disc"]
  tok = spec.tokenizer
  return WeightDiscriminator(width=d["width"], depth=d["depth"], num_heads=d["num_heads"],
                             mlp_ratio=d["mlp_ratio"], block_size=tok.block_size,
                             num_layers=tok.num_layers,
                             max_blocks=int(tok.block_ids.max()) + 1, text_dim=spec.text_dim,
                             text_conditioned=d["text_conditioned"])


# The generator's AdamW moment decays.
ADAMW_BETAS = dict(b1=0.9, b2=0.99)


def learning_rate_schedule(config) -> optax.Schedule:
  """The generator's learning rate: linear warmup, then cosine decay to 5 % of the peak."""
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                            max(config.num_steps, config.warmup_steps + 1),
                                            end_value=0.05 * config.learning_rate)


def build_optimizers(config) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """AdamW with linear warmup + cosine decay and global-norm clipping; Adam for the critic.

  The generator's AdamW is ``adamw.clipped_adamw``: optax's clip + AdamW chain in one pass
  per parameter, with the chain's state tree.
  """
  tx = clipped_adamw(learning_rate_schedule(config), **ADAMW_BETAS,
                     weight_decay=config.weight_decay, max_norm=config.grad_clip)
  disc_tx = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                        optax.adam(config.disc.learning_rate, b1=0.5, b2=0.99))
  return tx, disc_tx


def init_state(spec: GeneratorSpec, config, rng) -> TrainState:
  """A fresh TrainState whose params keep their ``nn.Partitioned`` boxes (for specs)."""
  disc = build_disc(spec)
  tx, disc_tx = build_optimizers(config)
  r_dit, r_disc, r_run = jax.random.split(rng, 3)
  x, _, text = dummy_inputs(spec)
  lids, bids = jnp.asarray(spec.tokenizer.layer_ids), jnp.asarray(spec.tokenizer.block_ids)
  params = init_dit_params(spec, r_dit)
  disc_params = disc.init(r_disc, x, lids, bids, text["fused"])["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=tx.init(params), disc_params=disc_params,
                    disc_opt_state=disc_tx.init(disc_params), rng=r_run)


def unbox(tree):
  """The params without their ``nn.Partitioned`` boxes."""
  return nn.meta.unbox(tree)
