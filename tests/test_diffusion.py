"""Tests for t2w_jax.diffusion: schedules, q_sample, the x0 loss, samplers and guidance."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2w_jax import diffusion
from t2w_jax.diffusion import DDIMSampler
from t2w_jax.diffusion import DDPMSampler


# ---------------------------------------------------------------------------
# Schedules.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_invariants(name):
  s = diffusion.get_schedule(name, 1000)
  assert s.num_timesteps == 1000
  for f in ("betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod", "posterior_variance",
            "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
    a = getattr(s, f)
    assert a.shape == (1000,) and a.dtype == jnp.float32, f
    assert np.all(np.isfinite(np.asarray(a))), f
  ac = np.asarray(s.alphas_cumprod)
  assert np.all(np.diff(ac) < 0)
  assert np.all((ac > 0) & (ac < 1))
  # The last ancestral step returns x0 exactly.
  assert float(s.posterior_variance[0]) == 0.0
  np.testing.assert_allclose(float(s.posterior_mean_coef1[0]), 1.0, rtol=1e-6)
  assert float(s.posterior_mean_coef2[0]) == 0.0
  assert float(s.alphas_cumprod_prev[0]) == 1.0


def test_linear_schedule_endpoints():
  s = diffusion.linear_schedule(1000, 1e-4, 0.02)
  np.testing.assert_allclose(float(s.betas[0]), 1e-4, rtol=1e-6)
  np.testing.assert_allclose(float(s.betas[-1]), 0.02, rtol=1e-6)
  np.testing.assert_allclose(np.diff(np.asarray(s.betas, np.float64)), (0.02 - 1e-4) / 999,
                             rtol=1e-3)


def test_cosine_schedule_endpoints():
  s = diffusion.cosine_schedule(1000)
  assert float(s.alphas_cumprod[0]) > 0.9999
  assert float(s.alphas_cumprod[-1]) < 1e-4
  assert float(jnp.max(s.betas)) <= 0.999 + 1e-6
  # The cosine form: ᾱ_t = f(t+1)/f(0) with f(u) = cos²((u/T + s)/(1 + s) π/2), clipping aside.
  f = lambda u: np.cos((u / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
  for t in (0, 100, 500):
    np.testing.assert_allclose(float(s.alphas_cumprod[t]), f(t + 1) / f(0), rtol=1e-5)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_coefficients_match_numpy(name):
  T = 1000
  s = diffusion.get_schedule(name, T)
  b = np.asarray(s.betas, np.float64)
  ac = np.cumprod(1 - b)
  for t in (1, 7, 500, 999):
    ac_prev = ac[t - 1]
    np.testing.assert_allclose(float(s.posterior_variance[t]),
                               b[t] * (1 - ac_prev) / (1 - ac[t]), rtol=1e-4)
    np.testing.assert_allclose(float(s.posterior_mean_coef1[t]),
                               b[t] * np.sqrt(ac_prev) / (1 - ac[t]), rtol=1e-4)
    np.testing.assert_allclose(float(s.posterior_mean_coef2[t]),
                               (1 - ac_prev) * np.sqrt(1 - b[t]) / (1 - ac[t]), rtol=1e-4)
    np.testing.assert_allclose(float(s.posterior_log_variance_clipped[t]),
                               np.log(b[t] * (1 - ac_prev) / (1 - ac[t])), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(s.alphas_cumprod[t]), ac[t], rtol=1e-4)


def test_schedule_is_a_pytree_with_static_T():
  s = diffusion.linear_schedule(50)
  leaves = jax.tree_util.tree_leaves(s)
  assert len(leaves) == 10
  out = jax.jit(lambda sch: sch.alphas_cumprod[sch.num_timesteps - 1])(s)
  assert float(out) == float(s.alphas_cumprod[49])


def test_schedule_bad_input():
  with pytest.raises(ValueError, match="unknown noise schedule"):
    diffusion.get_schedule("quadratic", 10)
  with pytest.raises(ValueError, match="T"):
    diffusion.linear_schedule(1)
  with pytest.raises(ValueError, match="betas"):
    diffusion.Schedule.from_betas(np.array([0.1, 1.5]))


def test_q_sample_statistics():
  s = diffusion.linear_schedule(1000)
  n = 20000
  x0 = jnp.full((n, 4), 1.5)
  for t in (0, 250, 999):
    noise = jax.random.normal(jax.random.key(t), x0.shape)
    x_t = diffusion.q_sample(s, x0, jnp.full((n,), t, jnp.int32), noise)
    ac = float(s.alphas_cumprod[t])
    np.testing.assert_allclose(float(x_t.mean()), np.sqrt(ac) * 1.5, atol=0.02)
    np.testing.assert_allclose(float(x_t.var()), 1 - ac, rtol=0.05, atol=1e-5)


def test_q_sample_per_example_timesteps_and_errors():
  s = diffusion.linear_schedule(100)
  x0 = jnp.ones((3, 2, 5))
  noise = jnp.ones_like(x0)
  t = jnp.array([0, 50, 99])
  x_t = diffusion.q_sample(s, x0, t, noise)
  for i in range(3):
    expect = float(s.sqrt_alphas_cumprod[t[i]] + s.sqrt_one_minus_alphas_cumprod[t[i]])
    np.testing.assert_allclose(np.asarray(x_t[i]), expect, rtol=1e-6)
  with pytest.raises(ValueError, match="t must"):
    diffusion.q_sample(s, x0, jnp.array([0, 1]), noise)
  with pytest.raises(ValueError, match="integers"):
    diffusion.q_sample(s, x0, jnp.array([0.0, 1.0, 2.0]), noise)
  with pytest.raises(ValueError, match="noise shape"):
    diffusion.q_sample(s, x0, t, noise[:2])
  # eps_from_x0 inverts q_sample.
  np.testing.assert_allclose(np.asarray(diffusion.eps_from_x0(s, x_t, t, x0)), 1.0, rtol=1e-4)


# ---------------------------------------------------------------------------
# Loss.
# ---------------------------------------------------------------------------


def _loss_data():
  k1, k2 = jax.random.split(jax.random.key(0))
  pred = jax.random.normal(k1, (2, 3, 4))
  x0 = jax.random.normal(k2, (2, 3, 4))
  mask = np.ones((3, 4), bool)
  mask[2, 2:] = False  # last block of the last layer is half padding
  return pred, x0, jnp.asarray(mask)


def test_x0_loss_is_masked_mse():
  pred, x0, mask = _loss_data()
  se = np.square(np.asarray(pred) - np.asarray(x0))
  m = np.broadcast_to(np.asarray(mask), se.shape)
  expect = se[m].mean()
  np.testing.assert_allclose(float(diffusion.x0_loss(pred, x0, mask)), expect, rtol=1e-6)
  # Masked positions are ignored: garbage there changes nothing.
  garbage = jnp.where(mask, pred, 1e6)
  np.testing.assert_allclose(float(diffusion.x0_loss(garbage, x0, mask)), expect, rtol=1e-6)
  # A per-example (B, L, P) mask works the same.
  np.testing.assert_allclose(
      float(diffusion.x0_loss(pred, x0, jnp.broadcast_to(mask, pred.shape))), expect,
      rtol=1e-6)
  # Zero when the prediction is exact.
  assert float(diffusion.x0_loss(x0, x0, mask)) == 0.0


def test_x0_loss_layer_weights():
  pred, x0, mask = _loss_data()
  plain = float(diffusion.x0_loss(pred, x0, mask))
  for c in (1.0, 3.7):
    np.testing.assert_allclose(
        float(diffusion.x0_loss(pred, x0, mask, layer_weights=jnp.full((3,), c))), plain,
        rtol=1e-6)
  # Weight only on token 0 -> the MSE of token 0 alone.
  w = jnp.array([1.0, 0.0, 0.0])
  only0 = float(np.square(np.asarray(pred[:, 0]) - np.asarray(x0[:, 0])).mean())
  np.testing.assert_allclose(float(diffusion.x0_loss(pred, x0, mask, w)), only0, rtol=1e-6)
  # Non-uniform weights change the value.
  w = jnp.array([1.0, 2.0, 5.0])
  assert abs(float(diffusion.x0_loss(pred, x0, mask, w)) - plain) > 1e-4


def test_x0_loss_grad_and_errors():
  pred, x0, mask = _loss_data()
  g = jax.grad(diffusion.x0_loss)(pred, x0, mask)
  assert np.all(np.asarray(g)[:, 2, 2:] == 0)
  assert np.all(np.asarray(g)[:, 0] != 0)
  empty = jnp.zeros_like(mask)
  assert float(diffusion.x0_loss(pred, x0, empty)) == 0.0
  assert np.all(np.isfinite(np.asarray(jax.grad(diffusion.x0_loss)(pred, x0, empty))))
  with pytest.raises(ValueError, match="mask"):
    diffusion.x0_loss(pred, x0, mask[:2])
  with pytest.raises(ValueError, match="layer_weights"):
    diffusion.x0_loss(pred, x0, mask, jnp.ones((4,)))
  with pytest.raises(ValueError, match="pred_x0"):
    diffusion.x0_loss(pred[:, :2], x0, mask)


def test_snr():
  s = diffusion.linear_schedule(100)
  t = jnp.array([0, 10, 99])
  ac = np.asarray(s.alphas_cumprod)[np.asarray(t)]
  np.testing.assert_allclose(np.asarray(diffusion.snr(s, t)), ac / (1 - ac), rtol=1e-5)
  assert np.all(np.diff(np.asarray(diffusion.snr(s, jnp.arange(100)))) < 0)


# ---------------------------------------------------------------------------
# Samplers.
# ---------------------------------------------------------------------------

B, SHAPE = 3, (3, 4, 5)


def _oracle(x0_star):
  return lambda x_t, t, cond: jnp.broadcast_to(x0_star, x_t.shape)


def _cond_denoiser(x_t, t, cond):
  """A denoiser that depends on x_t, t and a dict cond, to exercise every input."""
  tt = t.astype(jnp.float32)[:, None, None] / 100.0
  return 0.3 * x_t + cond["emb"][:, :, None] * (1 + tt) + cond["scale"][:, None, None]


def _cond(b=B, v=1.0):
  return {"emb": jnp.full((b, 4), v) + jnp.arange(4.0), "scale": jnp.full((b,), 0.5 * v)}


SAMPLERS = [DDPMSampler(), DDIMSampler(num_steps=10), DDIMSampler(num_steps=10, eta=0.5)]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=["ddpm", "ddim", "ddim_eta"])
def test_sampler_deterministic_for_fixed_rng(sampler):
  s = diffusion.linear_schedule(100)
  run = jax.jit(lambda rng: sampler(_cond_denoiser, s, rng, SHAPE, _cond(),
                                    _cond(v=0.0), guidance=2.0))
  a = np.asarray(run(jax.random.key(1)))
  b = np.asarray(run(jax.random.key(1)))
  c = np.asarray(run(jax.random.key(2)))
  assert a.shape == SHAPE and a.dtype == np.float32
  assert np.all(np.isfinite(a))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_oracle_denoiser_recovers_x0(name):
  s = diffusion.get_schedule(name, 100)
  x0_star = jax.random.normal(jax.random.key(3), SHAPE)
  fn = _oracle(x0_star)

  @jax.jit  # one compile for the three chains
  def run(r):
    return (DDIMSampler(num_steps=10)(fn, s, r, SHAPE, None),
            DDIMSampler(num_steps=1)(fn, s, r, SHAPE, None),
            DDPMSampler()(fn, s, r, SHAPE, None))

  ddim10, ddim1, ddpm = run(jax.random.key(0))
  np.testing.assert_allclose(np.asarray(ddim10), np.asarray(x0_star), atol=1e-5)
  np.testing.assert_allclose(np.asarray(ddim1), np.asarray(x0_star), atol=1e-5)
  np.testing.assert_allclose(np.asarray(ddpm), np.asarray(x0_star), atol=1e-4)


def test_ddim_eta1_all_steps_equals_ddpm():
  # Same update and same noise draws: an algebraic cross-check of both samplers.
  s = diffusion.cosine_schedule(60)
  args = (_cond_denoiser, s, jax.random.key(7), SHAPE, _cond())
  a, b, c = jax.jit(lambda: (DDPMSampler()(*args), DDIMSampler(num_steps=60, eta=1.0)(*args),
                             DDIMSampler(num_steps=60, eta=0.0)(*args)))()
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
  assert not np.allclose(np.asarray(a), np.asarray(c), atol=1e-2)  # eta matters


@pytest.mark.parametrize("sampler", [DDPMSampler(), DDIMSampler(num_steps=25)],
                         ids=["ddpm", "ddim"])
def test_sampler_matches_gaussian_data(sampler):
  """With the exact posterior-mean denoiser of N(mu, sd²) data, samples follow N(mu, sd²)."""
  # ᾱ_{T-1} must be ~0, or the N(0, I) start is not the true x_T law and DDIM shows it.
  s = diffusion.cosine_schedule(100)
  mu, sd = 2.0, 0.5

  def exact(x_t, t, cond):
    ac = s.alphas_cumprod[t][:, None]
    gain = jnp.sqrt(ac) * sd**2 / (ac * sd**2 + 1 - ac)
    return mu + gain * (x_t - jnp.sqrt(ac) * mu)

  out = np.asarray(jax.jit(lambda r: sampler(exact, s, r, (4096, 2), None))(
      jax.random.key(0)))
  np.testing.assert_allclose(out.mean(), mu, atol=0.03)
  np.testing.assert_allclose(out.std(), sd, rtol=0.05)


def test_guidance_one_and_zero():
  s = diffusion.linear_schedule(50)
  cond, null = _cond(), _cond(v=0.0)
  sampler = DDIMSampler(num_steps=8)
  rng = jax.random.key(4)
  seen_static1, seen_traced = [], []  # batch sizes the denoiser is traced with

  def counting(log):
    def fn(x_t, t, c):
      log.append(x_t.shape[0])
      return _cond_denoiser(x_t, t, c)
    return fn

  @jax.jit  # one compile for all five chains
  def run(g):
    return (sampler(_cond_denoiser, s, rng, SHAPE, cond),
            sampler(_cond_denoiser, s, rng, SHAPE, null),
            sampler(counting(seen_static1), s, rng, SHAPE, cond, null, guidance=1.0),
            sampler(_cond_denoiser, s, rng, SHAPE, cond, null, guidance=0.0),
            sampler(counting(seen_traced), s, rng, SHAPE, cond, null, guidance=g))

  cond_only, uncond_only, g1, g0, traced1 = map(np.asarray, run(1.0))
  # Python guidance 1.0: one conditional pass of batch B, no doubling, same result.
  assert seen_static1 == [B]
  np.testing.assert_array_equal(g1, cond_only)
  np.testing.assert_allclose(g0, uncond_only, atol=1e-6)
  # Traced guidance: both passes as ONE batched call of size 2B, still exact at 1 and 0.
  assert seen_traced == [2 * B]
  np.testing.assert_allclose(traced1, cond_only, atol=1e-5)
  np.testing.assert_allclose(np.asarray(run(0.0)[4]), uncond_only, atol=1e-5)
  # Guidance > 1 differs from both.
  g3 = np.asarray(run(3.0)[4])
  assert not np.allclose(g3, cond_only, atol=1e-3)
  assert not np.allclose(g3, uncond_only, atol=1e-3)
  assert len(seen_traced) == 1  # no retrace for a new guidance value


def test_guided_x0_formula_and_null_broadcast():
  x_t = jax.random.normal(jax.random.key(0), SHAPE)
  t = jnp.array([3, 10, 40])
  cond = _cond()
  null1 = {"emb": jnp.zeros((1, 4)), "scale": jnp.zeros((1,))}  # broadcast to B
  xc = _cond_denoiser(x_t, t, cond)
  xu = _cond_denoiser(x_t, t, jax.tree_util.tree_map(lambda a: jnp.broadcast_to(
      a, (B,) + a.shape[1:]), null1))
  got = diffusion.guided_x0(_cond_denoiser, x_t, t, cond, null1, 3.0)
  np.testing.assert_allclose(np.asarray(got), np.asarray(xu + 3.0 * (xc - xu)), rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match="null_cond"):
    diffusion.guided_x0(_cond_denoiser, x_t, t, cond, None, 2.0)
  with pytest.raises(ValueError, match="structure"):
    diffusion.guided_x0(_cond_denoiser, x_t, t, cond, {"emb": jnp.zeros((B, 4))}, 2.0)
  with pytest.raises(ValueError, match="does not match"):
    diffusion.guided_x0(_cond_denoiser, x_t, t, cond,
                        {"emb": jnp.zeros((B, 5)), "scale": jnp.zeros((B,))}, 2.0)


def test_reverse_chain_is_one_scan():
  s = diffusion.linear_schedule(1000)
  calls = []

  def fn(x_t, t, c):
    calls.append(1)
    return 0.5 * x_t

  for sampler, length in ((DDPMSampler(), 1000), (DDIMSampler(num_steps=37), 37)):
    calls.clear()
    jaxpr = jax.make_jaxpr(lambda r: sampler(fn, s, r, (2, 3), None))(jax.random.key(0))
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == length
    assert len(calls) == 1  # the denoiser is traced once, not once per step


def test_ddim_timesteps():
  ts = DDIMSampler(num_steps=10).timesteps(1000)
  assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 10
  assert np.all(np.diff(ts) < 0)
  np.testing.assert_array_equal(DDIMSampler(num_steps=1000).timesteps(1000),
                                np.arange(999, -1, -1))
  ts = DDIMSampler(num_steps=5).timesteps(1000, t_start=200)
  np.testing.assert_array_equal(ts, [200, 150, 100, 50, 0])
  np.testing.assert_array_equal(DDIMSampler(num_steps=5).timesteps(1000, t_start=2), [2, 1, 0])
  np.testing.assert_array_equal(DDPMSampler().timesteps(10, t_start=3), [3, 2, 1, 0])
  with pytest.raises(ValueError, match="exceeds"):
    DDIMSampler(num_steps=11).timesteps(10)
  with pytest.raises(ValueError, match="num_steps"):
    DDIMSampler(num_steps=0)
  with pytest.raises(ValueError, match="eta"):
    DDIMSampler(num_steps=3, eta=-1.0)


@pytest.mark.parametrize("sampler", [DDPMSampler(), DDIMSampler(num_steps=4)],
                         ids=["ddpm", "ddim"])
def test_denoise_from(sampler):
  s = diffusion.linear_schedule(100)
  x_clean = jax.random.normal(jax.random.key(5), SHAPE)
  rng = jax.random.key(6)
  # t_start = 0: the state is (almost) clean already and an oracle gives it back.
  x_start = diffusion.q_sample(s, x_clean, jnp.zeros((B,), jnp.int32),
                               jax.random.normal(jax.random.key(8), SHAPE))
  out = diffusion.denoise_from(sampler, _oracle(x_clean), s, rng, x_start, 0, None)
  np.testing.assert_allclose(np.asarray(out), np.asarray(x_clean), atol=1e-4)
  np.testing.assert_allclose(np.asarray(out), np.asarray(x_start), atol=0.05)
  # From a mid-chain state, counting the steps the denoiser sees.
  steps = []

  def fn(x_t, t, c):
    steps.append(1)
    return jnp.broadcast_to(x_clean, x_t.shape)

  x_mid = diffusion.q_sample(s, x_clean, jnp.full((B,), 30),
                             jax.random.normal(jax.random.key(9), SHAPE))
  out = jax.jit(lambda x: diffusion.denoise_from(sampler, fn, s, rng, x, 30, None))(x_mid)
  np.testing.assert_allclose(np.asarray(out), np.asarray(x_clean), atol=1e-4)
  jaxpr = jax.make_jaxpr(lambda x: diffusion.denoise_from(sampler, fn, s, rng, x, 30, None))(
      x_mid)
  (scan,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
  assert scan.params["length"] == len(sampler.timesteps(100, 30))
  with pytest.raises(ValueError, match="t_start"):
    diffusion.denoise_from(sampler, fn, s, rng, x_mid, 100, None)
  with pytest.raises(ValueError, match="static"):
    diffusion.denoise_from(sampler, fn, s, rng, x_mid, jnp.int32(3), None)


def test_sampler_bad_input():
  s = diffusion.linear_schedule(20)
  fn = _oracle(jnp.zeros(SHAPE))
  with pytest.raises(ValueError, match="unknown sampler"):
    diffusion.get_sampler("euler")
  with pytest.raises(ValueError, match="unknown"):
    diffusion.get_sampler("ddpm", num_steps=3)
  assert diffusion.get_sampler("ddim", num_steps=7, eta=0.3) == DDIMSampler(7, 0.3)
  assert isinstance(diffusion.get_sampler("ddpm"), DDPMSampler)
  with pytest.raises(ValueError, match="leading batch axis"):
    DDPMSampler()(fn, s, jax.random.key(0), SHAPE, {"emb": jnp.zeros((B + 1, 4))})
  with pytest.raises(ValueError, match="clip_x0"):
    DDPMSampler()(fn, s, jax.random.key(0), SHAPE, None, clip_x0=-1.0)


def test_clip_x0():
  s = diffusion.linear_schedule(20)
  out = DDIMSampler(num_steps=5)(_oracle(jnp.full(SHAPE, 3.0)), s, jax.random.key(0), SHAPE,
                                 None, clip_x0=1.0)
  np.testing.assert_allclose(np.asarray(out), 1.0, atol=1e-5)


def test_ddim_at_temperature_zero_ignores_the_rng():
  """DDIM (eta=0) from x_T = 0 has no randomness left; temperature scales x_T exactly."""
  s = diffusion.linear_schedule(100)
  ddim = DDIMSampler(num_steps=10)
  run = jax.jit(lambda rng, tau: ddim(_cond_denoiser, s, rng, SHAPE, _cond(), temperature=tau))
  np.testing.assert_array_equal(np.asarray(run(jax.random.key(1), 0.0)),
                                np.asarray(run(jax.random.key(2), 0.0)))
  assert not np.allclose(run(jax.random.key(1), 1.0), run(jax.random.key(2), 1.0))
  # The chain is affine in x_T here (the denoiser is affine in x_t): the temperature-0.5
  # sample is the midpoint of the temperature-0 and temperature-1 samples.
  a0, a1, ah = (np.asarray(run(jax.random.key(1), tau)) for tau in (0.0, 1.0, 0.5))
  np.testing.assert_allclose(ah, 0.5 * (a0 + a1), atol=1e-5)
  with pytest.raises(ValueError, match="temperature must be >= 0"):
    ddim(_cond_denoiser, s, jax.random.key(1), SHAPE, _cond(), temperature=-1.0)
