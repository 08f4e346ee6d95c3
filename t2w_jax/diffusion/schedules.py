"""Discrete-time noise schedules and the forward (noising) process.

A ``Schedule`` holds every per-timestep constant the losses and samplers need, as (T,)
float32 arrays indexed by an integer timestep t in [0, T). Invariants (checked by tests):

* ``betas`` lie in (0, 1); ``alphas_cumprod`` (ᾱ) is strictly decreasing inside (0, 1).
* ``alphas_cumprod_prev[0] == 1``, so ``posterior_variance[0] == 0`` and
  ``posterior_mean_coef1[0] == 1``, ``posterior_mean_coef2[0] == 0``: the last reverse step
  of an ancestral sampler returns the predicted x0 with no noise.

All constants are computed in float64 numpy and then cast, so long products such as ᾱ do
not accumulate float32 round-off.
"""
import math
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Schedule:
  """Per-timestep constants of a discrete diffusion with ``num_timesteps`` steps.

  A pytree: the arrays are leaves (so a schedule can be passed into ``jit``), while
  ``num_timesteps`` is static metadata. Build one with ``Schedule.from_betas`` or the
  ``*_schedule`` constructors below rather than by hand.

  Attributes:
    num_timesteps: T, the number of diffusion steps (static).
    betas: β_t, the per-step noise variance.
    alphas: α_t = 1 - β_t.
    alphas_cumprod: ᾱ_t = ∏_{s<=t} α_s; x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε.
    alphas_cumprod_prev: ᾱ_{t-1}, with ᾱ_{-1} = 1.
    sqrt_alphas_cumprod: sqrt(ᾱ_t).
    sqrt_one_minus_alphas_cumprod: sqrt(1 - ᾱ_t).
    posterior_variance: variance of q(x_{t-1} | x_t, x0), β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t).
    posterior_log_variance_clipped: its log, with the t=0 entry (log 0) replaced by t=1's.
    posterior_mean_coef1: coefficient of x0 in the posterior mean.
    posterior_mean_coef2: coefficient of x_t in the posterior mean.
  """
  num_timesteps: int = flax.struct.field(pytree_node=False)
  betas: jax.Array
  alphas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  posterior_variance: jax.Array
  posterior_log_variance_clipped: jax.Array
  posterior_mean_coef1: jax.Array
  posterior_mean_coef2: jax.Array

  @classmethod
  def from_betas(cls, betas) -> "Schedule":
    """Derives every constant from a (T,) array of betas.

    Args:
      betas: (T,) values in (0, 1); T >= 2.

    Returns:
      The schedule, arrays in float32.

    Raises:
      ValueError: if betas is not 1-D with T >= 2 or has values outside (0, 1).
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] < 2:
      raise ValueError(f"betas must be a 1-D array of length >= 2, got shape {betas.shape}")
    if not np.all((betas > 0) & (betas < 1)):
      raise ValueError(f"betas must lie in (0, 1); got min {betas.min()}, max {betas.max()}")
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    # post_var[0] == 0 exactly; log(0) is useless, so borrow t=1's value (as in DDPM code).
    post_log_var = np.log(np.append(post_var[1], post_var[1:]))
    coef1 = betas * np.sqrt(ac_prev) / (1.0 - ac)
    coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
    f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
    return cls(
        num_timesteps=int(betas.shape[0]),
        betas=f32(betas),
        alphas=f32(alphas),
        alphas_cumprod=f32(ac),
        alphas_cumprod_prev=f32(ac_prev),
        sqrt_alphas_cumprod=f32(np.sqrt(ac)),
        sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - ac)),
        posterior_variance=f32(post_var),
        posterior_log_variance_clipped=f32(post_log_var),
        posterior_mean_coef1=f32(coef1),
        posterior_mean_coef2=f32(coef2),
    )


def linear_schedule(T: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02) -> Schedule:
  """Linear betas from ``beta_start`` to ``beta_end`` (Ho et al., 2020).

  Args:
    T: number of timesteps.
    beta_start: β_0.
    beta_end: β_{T-1}.

  Returns:
    The schedule.
  """
  _check_T(T)
  if not 0 < beta_start <= beta_end < 1:
    raise ValueError("need 0 < beta_start <= beta_end < 1, got "
                     f"beta_start={beta_start}, beta_end={beta_end}")
  return Schedule.from_betas(np.linspace(beta_start, beta_end, T, dtype=np.float64))


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
  """Cosine schedule of Nichol & Dhariwal (2021): ᾱ(u) ∝ cos²((u + s) / (1 + s) · π/2).

  Args:
    T: number of timesteps.
    s: small offset that keeps β_0 from being vanishingly small.
    max_beta: betas are clipped to this to avoid the singularity at u = 1.

  Returns:
    The schedule.
  """
  _check_T(T)
  if not 0 < max_beta < 1:
    raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
  f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
  betas = [min(1.0 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
  return Schedule.from_betas(np.asarray(betas, dtype=np.float64))


_SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "linear": linear_schedule,
    "cosine": cosine_schedule,
}


def get_schedule(name: str, T: int = 1000, **kwargs) -> Schedule:
  """Schedule by name (``"linear"`` or ``"cosine"``).

  Args:
    name: schedule name.
    T: number of timesteps.
    **kwargs: passed on to the constructor (e.g. ``beta_end`` or ``s``).

  Returns:
    The schedule.

  Raises:
    ValueError: for an unknown name.
  """
  if name not in _SCHEDULES:
    raise ValueError(f"unknown noise schedule {name!r}; known: {sorted(_SCHEDULES)}")
  return _SCHEDULES[name](T, **kwargs)


def _check_T(T) -> None:
  if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 2:
    raise ValueError(f"T (number of timesteps) must be an int >= 2, got {T!r}")


def extract(values: jax.Array, t, ndim: int) -> jax.Array:
  """Gathers ``values[t]`` and reshapes it to broadcast against a rank-``ndim`` array.

  Args:
    values: (T,) per-timestep constants.
    t: () or (B,) integer timesteps.
    ndim: rank of the array the result will multiply, whose leading axis is B.

  Returns:
    ``values[t]`` with shape (B, 1, ..., 1) (or (1, ..., 1) for scalar t).
  """
  t = jnp.asarray(t)
  out = jnp.take(values, t)
  if t.ndim == 0:
    return out.reshape((1,) * ndim)
  return out.reshape(out.shape + (1,) * (ndim - out.ndim))


def _check_t(x: jax.Array, t) -> jax.Array:
  t = jnp.asarray(t)
  if not jnp.issubdtype(t.dtype, jnp.integer):
    raise ValueError(f"timesteps t must be integers, got dtype {t.dtype}")
  if t.ndim > 1 or (t.ndim == 1 and (x.ndim == 0 or t.shape[0] != x.shape[0])):
    raise ValueError(f"t must be a scalar or have shape (B,) with B = x.shape[0]; "
                     f"got t.shape={t.shape}, x.shape={x.shape}")
  return t


def q_sample(schedule: Schedule, x0: jax.Array, t, noise: jax.Array) -> jax.Array:
  """Samples x_t ~ q(x_t | x0) = N(sqrt(ᾱ_t) x0, (1 - ᾱ_t) I) with the given noise.

  Args:
    schedule: the noise schedule.
    x0: (B, ...) clean data.
    t: (B,) integer timesteps (or a scalar, shared by the batch).
    noise: standard normal noise, same shape as x0.

  Returns:
    x_t, same shape and dtype as x0.
  """
  x0 = jnp.asarray(x0)
  noise = jnp.asarray(noise)
  if noise.shape != x0.shape:
    raise ValueError(f"noise shape {noise.shape} != x0 shape {x0.shape}")
  t = _check_t(x0, t)
  a = extract(schedule.sqrt_alphas_cumprod, t, x0.ndim)
  b = extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim)
  return (a * x0 + b * noise).astype(x0.dtype)


def eps_from_x0(schedule: Schedule, x_t: jax.Array, t, x0: jax.Array) -> jax.Array:
  """The noise ε implied by x_t and a (predicted) x0: (x_t - sqrt(ᾱ_t) x0) / sqrt(1 - ᾱ_t).

  Args:
    schedule: the noise schedule.
    x_t: (B, ...) noisy data at timestep t.
    t: (B,) or scalar integer timesteps.
    x0: (B, ...) clean (or predicted clean) data.

  Returns:
    ε, same shape as x_t.
  """
  t = _check_t(x_t, t)
  a = extract(schedule.sqrt_alphas_cumprod, t, x_t.ndim)
  b = extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim)
  return (x_t - a * x0) / b
