"""Tests for t2w_jax.models: the prior-attention DiT and the weight discriminator."""
import itertools

import chex
import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from t2w_jax import models
from t2w_jax.models import DiT, LOGICAL_AXIS_RULES, WeightDiscriminator, layers

B, L, P, K, D = 4, 6, 8, 5, 16
LAYER_IDS = jnp.array([0, 0, 1, 1, 1, 2], jnp.int32)
BLOCK_IDS = jnp.array([0, 1, 0, 1, 2, 0], jnp.int32)


def make_model(**switches):
  kw = dict(width=32, depth=1, num_heads=4, mlp_ratio=2.0, block_size=P, num_layers=3,
            max_blocks=3, text_dim=D)
  kw.update(switches)
  return DiT(**kw)


def make_inputs(seed=0, drop=None):
  ks = jax.random.split(jax.random.key(seed), 5)
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]],
                   bool)
  class_emb = jax.random.normal(ks[0], (B, K, D))
  logits = jax.random.normal(ks[1], (B, K))
  log_prior = jnp.where(mask, jax.nn.log_softmax(jnp.where(mask, logits, -1e9)), -1e9)
  prior = jnp.exp(log_prior)
  text = {
      "class_emb": class_emb,
      "class_mask": mask,
      "log_prior": log_prior,
      "fused": jnp.einsum("bk,bkd->bd", prior, class_emb),
      "drop": jnp.zeros((B,), bool) if drop is None else jnp.asarray(drop),
  }
  x_t = jax.random.normal(ks[2], (B, L, P))
  t = jax.random.randint(ks[3], (B,), 0, 1000)
  return x_t, t, text


def perturb(variables, seed=1, scale=0.1):
  """Random params (unboxed) so that zero-init gates open and the output depends on inputs."""
  params = models.unbox(variables)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def init_apply(model, x_t, t, text, variables=None):
  if variables is None:
    variables = model.init(jax.random.key(0), x_t, t, LAYER_IDS, BLOCK_IDS, text)
  return variables, model.apply(variables, x_t, t, LAYER_IDS, BLOCK_IDS, text)


VALID_SWITCHES = [
    dict(cond_adaln=a, cross_attention=c, prior_bias=p, text_as_token=tt)
    for a, c, p, tt in itertools.product([False, True], repeat=4) if not (p and not c)
] + [dict(cond_adaln=True, cross_attention=c, prior_bias=c, adaln="single")
     for c in (False, True)] + [dict(cond_adaln=True, cross_attention=True, prior_bias=True,
                                     adaln="single", token_proj="shared"),
                     dict(cond_adaln=True, cross_attention=True, prior_bias=True,
                          token_proj="low_rank", token_proj_rank=2)]


@pytest.mark.parametrize("switches", VALID_SWITCHES, ids=lambda s: "-".join(
    k if v is True else str(v) for k, v in s.items() if v) or "none")
def test_shapes_and_zero_at_init(switches):
  model = make_model(**switches)
  x_t, t, text = make_inputs(drop=[False, True, False, True])
  variables, out = init_apply(model, x_t, t, text)
  chex.assert_shape(out, (B, L, P))
  chex.assert_type(out, jnp.float32)
  # adaLN-Zero invariant: exactly zero at init, for any input.
  np.testing.assert_array_equal(np.asarray(out), 0.0)
  out_p = model.apply(perturb(variables), x_t, t, LAYER_IDS, BLOCK_IDS, text)
  chex.assert_shape(out_p, (B, L, P))
  chex.assert_tree_all_finite(out_p)
  assert float(jnp.abs(out_p).max()) > 1e-3


@pytest.mark.parametrize("cross", [False, True])
def test_adaln_single_shares_one_modulation(cross):
  """adaLN-single: one modulation Dense plus per-block offsets, (depth - 1) Dense fewer."""
  depth, width = 3, 32
  switches = dict(cond_adaln=True, cross_attention=cross, prior_bias=cross, depth=depth)
  x_t, t, text = make_inputs()
  block, _ = init_apply(make_model(**switches), x_t, t, text)
  single_model = make_model(adaln="single", **switches)
  single, _ = init_apply(single_model, x_t, t, text)
  mods = 3 * (3 if cross else 2) * width
  assert models.param_count(block) - models.param_count(single) == (
      depth * (width * mods + mods) - (width * mods + mods) - depth * mods)
  params = models.unbox(single)["params"]
  assert "adaLN_modulation" not in params["block_0"]
  chex.assert_shape(params["block_1"]["adaLN_offsets"], (mods,))
  # The offsets are the blocks' own: moving the last block's moves the output.
  p = perturb(single)
  out = single_model.apply(p, x_t, t, LAYER_IDS, BLOCK_IDS, text)
  p2 = jax.tree_util.tree_map(lambda x: x, p)
  p2["params"]["block_2"]["adaLN_offsets"] += 0.5
  out2 = single_model.apply(p2, x_t, t, LAYER_IDS, BLOCK_IDS, text)
  assert float(jnp.abs(out - out2).max()) > 1e-4
  with pytest.raises(ValueError, match="adaln"):
    make_model(adaln="per_layer").init(jax.random.key(0), x_t, t, LAYER_IDS, BLOCK_IDS, text)


def test_shared_token_projection_has_one_map_and_per_token_biases():
  """token_proj="shared": one (P -> width) and one (width -> P) map for every token, so
  2 (L - 1) P width fewer parameters plus the per-token biases; each token's bias is its
  own (moving one token's output bias moves that token's output only)."""
  x_t, t, text = make_inputs()
  per_token, _ = init_apply(make_model(), x_t, t, text)
  shared_model = make_model(token_proj="shared")
  shared, _ = init_apply(shared_model, x_t, t, text)
  width = 32
  # per-token: kernels L*P*w in and out, biases L*w and L*P; shared: kernels P*w twice
  # (no bias of their own), per-token biases L*w and L*P.
  assert models.param_count(per_token) - models.param_count(shared) == 2 * (L - 1) * P * width
  params = models.unbox(shared)["params"]
  chex.assert_shape(params["embed"]["in_proj"]["kernel"], (width, P))
  chex.assert_shape(params["final"]["out_proj"]["kernel"], (P, width))
  chex.assert_shape(params["final"]["token_bias"], (L, P))
  p = perturb(shared)
  out = shared_model.apply(p, x_t, t, LAYER_IDS, BLOCK_IDS, text)
  p["params"]["final"]["token_bias"] = p["params"]["final"]["token_bias"].at[2].add(0.5)
  moved = shared_model.apply(p, x_t, t, LAYER_IDS, BLOCK_IDS, text)
  diff = np.asarray(jnp.abs(moved - out).max(axis=(0, 2)))
  np.testing.assert_allclose(diff[2], 0.5, rtol=1e-5)
  np.testing.assert_array_equal(np.delete(diff, 2), 0.0)
  with pytest.raises(ValueError, match="token_proj"):
    make_model(token_proj="per_layer").init(jax.random.key(0), x_t, t, LAYER_IDS, BLOCK_IDS,
                                            text)


def test_low_rank_token_projection_is_a_per_token_map_of_shared_plus_low_rank():
  """token_proj="low_rank": token l is mapped by W + U_l D_l (plus its bias), so the model
  computes what the per-token model computes with kernel[l] = (W + U_l D_l)^T; it has
  2 (L - 1) P width - 2 L r (P + width) fewer parameters than the per-token model; at
  init U is zero, so it computes the shared model's function."""
  rank, width = 3, 32
  x_t, t, text = make_inputs()
  per_token_model = make_model()
  per_token, _ = init_apply(per_token_model, x_t, t, text)
  low_model = make_model(token_proj="low_rank", token_proj_rank=rank)
  low, _ = init_apply(low_model, x_t, t, text)
  assert models.param_count(per_token) - models.param_count(low) == (
      2 * (L - 1) * P * width - 2 * L * rank * (P + width))
  lp = perturb(low)["params"]
  chex.assert_shape(lp["embed"]["token_down"], (L, rank, P))
  chex.assert_shape(lp["embed"]["token_up"], (L, width, rank))
  chex.assert_shape(lp["final"]["token_up"], (L, P, rank))
  np.testing.assert_array_equal(np.asarray(models.unbox(low)["params"]["embed"]["token_up"]),
                                0.0)
  # The same network written as per-token maps.
  pp = jax.tree_util.tree_map(lambda x: x, models.unbox(per_token)["params"])
  for owner, proj in (("embed", "in_proj"), ("final", "out_proj")):
    w = lp[owner][proj]["kernel"]  # (out, in)
    delta = jnp.einsum("lor,lri->loi", lp[owner]["token_up"], lp[owner]["token_down"])
    pp[owner][proj] = {"kernel": jnp.swapaxes(w[None] + delta, 1, 2),
                       "bias": lp[owner]["token_bias"]}
  for name, sub in lp.items():
    if name not in ("embed", "final"):
      pp[name] = sub
  for key in ("layer_embed", "block_embed"):
    pp["embed"][key] = lp["embed"][key]
  pp["final"]["adaLN_modulation"] = lp["final"]["adaLN_modulation"]
  out_low = low_model.apply({"params": lp}, x_t, t, LAYER_IDS, BLOCK_IDS, text)
  out_per = per_token_model.apply({"params": pp}, x_t, t, LAYER_IDS, BLOCK_IDS, text)
  assert float(jnp.abs(out_low).max()) > 1e-2
  np.testing.assert_allclose(np.asarray(out_low), np.asarray(out_per), rtol=1e-4, atol=1e-5)
  # With U at zero it is the shared model.
  shared_model = make_model(token_proj="shared")
  sp = {k: v for k, v in lp.items()}
  sp["embed"] = {k: v for k, v in lp["embed"].items() if k not in ("token_down", "token_up")}
  sp["final"] = {k: v for k, v in lp["final"].items() if k not in ("token_down", "token_up")}
  zero_up = jax.tree_util.tree_map(lambda x: x, lp)
  for owner in ("embed", "final"):
    zero_up[owner]["token_up"] = jnp.zeros_like(lp[owner]["token_up"])
  np.testing.assert_array_equal(
      np.asarray(low_model.apply({"params": zero_up}, x_t, t, LAYER_IDS, BLOCK_IDS, text)),
      np.asarray(shared_model.apply({"params": sp}, x_t, t, LAYER_IDS, BLOCK_IDS, text)))
  with pytest.raises(ValueError, match="token_proj_rank"):
    make_model(token_proj="low_rank", token_proj_rank=0).init(
        jax.random.key(0), x_t, t, LAYER_IDS, BLOCK_IDS, text)


def test_prior_bias_without_cross_attention_rejected():
  x_t, t, text = make_inputs()
  with pytest.raises(ValueError, match="prior_bias"):
    make_model(cross_attention=False, prior_bias=True).init(
        jax.random.key(0), x_t, t, LAYER_IDS, BLOCK_IDS, text)


TEXT_SWITCHES = {
    "adaln": dict(cond_adaln=True, cross_attention=False, prior_bias=False),
    "cross": dict(cond_adaln=False, cross_attention=True, prior_bias=False),
    "cross_prior": dict(cond_adaln=False, cross_attention=True, prior_bias=True),
    "token": dict(cond_adaln=False, cross_attention=False, prior_bias=False,
                  text_as_token=True),
    "all": dict(cond_adaln=True, cross_attention=True, prior_bias=True),
}


@pytest.mark.parametrize("name", sorted(TEXT_SWITCHES))
def test_output_depends_on_text_and_t_but_not_when_dropped(name):
  model = make_model(**TEXT_SWITCHES[name])
  x_t, t, text = make_inputs(drop=[False, False, True, True])
  variables, _ = init_apply(model, x_t, t, text)
  params = perturb(variables)
  out = model.apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, text)

  _, _, other = make_inputs(seed=7, drop=[False, False, True, True])
  other["class_mask"] = text["class_mask"]
  out_text = model.apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, other)
  diff = jnp.abs(out_text - out).max(axis=(1, 2))
  assert float(diff[:2].min()) > 1e-4, "conditional examples ignore the text"
  np.testing.assert_allclose(out_text[2:], out[2:], atol=1e-6,
                             err_msg="dropped examples must not see the text")

  out_t = model.apply(params, x_t, (t + 137) % 1000, LAYER_IDS, BLOCK_IDS, text)
  assert float(jnp.abs(out_t - out).max(axis=(1, 2)).min()) > 1e-4, "output ignores t"


def test_prior_changes_output_only_with_prior_bias():
  x_t, t, text = make_inputs()
  flipped = dict(text, log_prior=jnp.where(text["class_mask"], -text["log_prior"], -1e9))
  for prior_bias, should_change in [(True, True), (False, False)]:
    model = make_model(cond_adaln=False, cross_attention=True, prior_bias=prior_bias)
    variables, _ = init_apply(model, x_t, t, text)
    params = perturb(variables)
    a = model.apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, text)
    b = model.apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, flipped)
    assert (float(jnp.abs(a - b).max()) > 1e-4) == should_change


@pytest.mark.slow
def test_masked_class_tokens_do_not_matter():
  model = make_model(cond_adaln=True, cross_attention=True, prior_bias=True)
  x_t, t, text = make_inputs()
  variables, _ = init_apply(model, x_t, t, text)
  params = perturb(variables)
  out = model.apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, text)
  mask = text["class_mask"][..., None]
  garbage = 50.0 * jax.random.normal(jax.random.key(3), text["class_emb"].shape)
  changed = dict(text,
                 class_emb=jnp.where(mask, text["class_emb"], garbage),
                 log_prior=jnp.where(text["class_mask"], text["log_prior"], -jnp.inf))
  out2 = model.apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, changed)
  np.testing.assert_array_equal(np.asarray(out2), np.asarray(out))
  # -inf padding in the log prior must not poison gradients.
  grads = jax.grad(lambda p: jnp.sum(
      model.apply(p, x_t, t, LAYER_IDS, BLOCK_IDS, changed) ** 2))(params)
  chex.assert_tree_all_finite(grads)


def test_class_permutation_invariance():
  model = make_model(cond_adaln=True, cross_attention=True, prior_bias=True)
  x_t, t, text = make_inputs()
  variables, _ = init_apply(model, x_t, t, text)
  params = perturb(variables)
  out = model.apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, text)
  perm = jnp.array([3, 0, 4, 2, 1])
  permuted = dict(text, class_emb=text["class_emb"][:, perm],
                  class_mask=text["class_mask"][:, perm], log_prior=text["log_prior"][:, perm])
  out2 = model.apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, permuted)
  np.testing.assert_allclose(out2, out, atol=1e-5)
  # ...whereas permuting embeddings alone (not the prior with them) changes the output.
  wrong = dict(text, class_emb=text["class_emb"][:, perm])
  out3 = model.apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, wrong)
  assert float(jnp.abs(out3 - out).max()) > 1e-4


def test_jit_matches_eager_and_bf16_runs():
  model = make_model()
  x_t, t, text = make_inputs(drop=[True, False, False, True])
  variables, _ = init_apply(model, x_t, t, text)
  params = perturb(variables)
  eager = model.apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, text)
  jitted = jax.jit(model.apply)(params, x_t, t, LAYER_IDS, BLOCK_IDS, text)
  np.testing.assert_allclose(jitted, eager, atol=1e-5)
  out16 = make_model(dtype=jnp.bfloat16).apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, text)
  chex.assert_type(out16, jnp.float32)
  np.testing.assert_allclose(out16, eager, atol=0.1 * float(jnp.abs(eager).max()))


def test_bad_inputs_raise():
  model = make_model()
  x_t, t, text = make_inputs()
  variables, _ = init_apply(model, x_t, t, text)
  with pytest.raises(ValueError, match="x_t"):
    model.apply(variables, x_t[..., :4], t, LAYER_IDS, BLOCK_IDS, text)
  with pytest.raises(ValueError, match="layer_ids"):
    model.apply(variables, x_t, t, LAYER_IDS.at[0].set(9), BLOCK_IDS, text)
  with pytest.raises(ValueError, match="block_ids"):
    model.apply(variables, x_t, t, LAYER_IDS, BLOCK_IDS[:3], text)
  with pytest.raises(KeyError, match="class_emb"):
    model.apply(variables, x_t, t, LAYER_IDS, BLOCK_IDS,
                {k: v for k, v in text.items() if k != "class_emb"})
  with pytest.raises(ValueError, match="fused"):
    model.apply(variables, x_t, t, LAYER_IDS, BLOCK_IDS, dict(text, fused=text["fused"][:, :3]))


def test_param_specs_have_logical_names():
  model = make_model()
  x_t, t, text = make_inputs()
  variables, _ = init_apply(model, x_t, t, text)
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["embed"]["in_proj"]["kernel"]) == ("tokens", "block", "embed")
  assert tuple(specs["final"]["out_proj"]["kernel"]) == ("tokens", "embed", "block")
  # Projection kernels are stored (*out, *in) (layers.projection_kernel).
  assert tuple(specs["block_0"]["attn"]["query_kernel"]) == ("heads", "kv", "embed")
  assert tuple(specs["block_0"]["attn"]["out_kernel"]) == ("embed", "heads", "kv")
  assert tuple(specs["block_0"]["mlp"]["fc1"]["kernel"]) == ("mlp", "embed")
  shapes = jax.tree_util.tree_map(jnp.shape, models.unbox(variables))["params"]
  assert shapes["embed"]["in_proj"]["kernel"] == (L, P, 32)
  assert shapes["final"]["out_proj"]["kernel"] == (L, 32, P)
  assert shapes["block_0"]["mlp"]["fc1"]["kernel"] == (64, 32)


def test_mesh_sharded_apply_matches_unsharded():
  assert jax.device_count() >= 8, "conftest should provide 8 CPU devices"
  # Auto axis types (the Mesh constructor's default; jax.make_mesh defaults to Explicit),
  # so that logical rules and sharding constraints steer XLA's propagation.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
  model = make_model(cond_adaln=True, cross_attention=True, prior_bias=True,
                     text_as_token=True)
  x_t, t, text = make_inputs(drop=[False, True, False, False])
  variables, _ = init_apply(model, x_t, t, text)
  params = perturb(variables)
  expected = model.apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, text)

  specs = nn.get_partition_spec(variables)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)
  mlp_spec = shardings["params"]["block_0"]["mlp"]["fc1"]["kernel"].spec
  assert tuple(mlp_spec) == ("model", None)
  sharded_params = jax.device_put(params, shardings)
  assert len(sharded_params["params"]["block_0"]["mlp"]["fc1"]["kernel"]
             .addressable_shards) == 8
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  x_s, t_s, text_s = jax.device_put((x_t, t, text), batch)

  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    fn = jax.jit(model.apply, in_shardings=(shardings, batch, None, None, None, batch),
                 out_shardings=batch)
    out = fn(sharded_params, x_s, t_s, LAYER_IDS, BLOCK_IDS, text_s)
    hlo = fn.lower(sharded_params, x_s, t_s, LAYER_IDS, BLOCK_IDS, text_s).as_text()
  # The activation constraints are real under the rules (not silently dropped).
  assert "sharding_constraint" in hlo or "@Sharding" in hlo
  assert out.sharding.is_equivalent_to(batch, out.ndim)
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5)


@pytest.mark.parametrize("text_conditioned", [False, True])
def test_discriminator(text_conditioned):
  disc = WeightDiscriminator(width=32, depth=2, num_heads=4, mlp_ratio=2.0, block_size=P,
                             num_layers=3, max_blocks=3, text_dim=D,
                             text_conditioned=text_conditioned)
  x_t, _, text = make_inputs()
  variables = disc.init(jax.random.key(0), x_t, LAYER_IDS, BLOCK_IDS, text["fused"])
  logits = jax.jit(disc.apply)(variables, x_t, LAYER_IDS, BLOCK_IDS, text["fused"])
  chex.assert_shape(logits, (B,))
  chex.assert_type(logits, jnp.float32)
  other = disc.apply(variables, x_t, LAYER_IDS, BLOCK_IDS, -text["fused"])
  changed = float(jnp.abs(other - logits).max()) > 1e-5
  assert changed == text_conditioned
  shapes = jax.tree_util.tree_map(jnp.shape, models.unbox(variables))["params"]
  assert shapes["embed"]["in_proj"]["kernel"] == (L, P, 32)
  if text_conditioned:
    with pytest.raises(ValueError, match="fused"):
      disc.apply(variables, x_t, LAYER_IDS, BLOCK_IDS)


def _matmul_flops(jaxpr) -> int:
  """2 x multiply-adds of every dot_general in a jaxpr, nested jaxprs included."""
  import jax.extend
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(
          np.prod([lhs[i] for i in contract]))
    for v in eqn.params.values():
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        total += _matmul_flops(v.jaxpr)
      elif isinstance(v, jax.extend.core.Jaxpr):
        total += _matmul_flops(v)
  return total


def test_param_count_and_flops_estimate():
  model = make_model(cond_adaln=True, cross_attention=True, prior_bias=True)
  x_t, t, text = make_inputs()
  variables, _ = init_apply(model, x_t, t, text)
  n = models.param_count(variables)
  assert n == sum(x.size for x in jax.tree_util.tree_leaves(models.unbox(variables)))
  assert n > L * P * 32 * 2
  est = models.model_flops_per_example(model, num_tokens=L, max_classes=K, training=False)
  # The estimate counts matmuls only, so it must equal, exactly, the FLOPs of every
  # dot_general in the traced forward, for each conditioning variant.
  for kw in (dict(cond_adaln=True, cross_attention=True, prior_bias=True),
             dict(cond_adaln=False, cross_attention=False, prior_bias=False),
             dict(cond_adaln=True, cross_attention=False, prior_bias=False),
             dict(text_as_token=True, cond_adaln=False, cross_attention=False,
                  prior_bias=False),
             dict(cond_adaln=True, cross_attention=True, prior_bias=True, adaln="single"),
             dict(cond_adaln=False, cross_attention=False, prior_bias=False, adaln="single",
                  depth=3)):
    m = make_model(**kw)
    v, _ = init_apply(m, x_t, t, text)
    traced = jax.make_jaxpr(m.apply)(v, x_t, t, LAYER_IDS, BLOCK_IDS, text)
    assert models.model_flops_per_example(m, num_tokens=L, max_classes=K, training=False) == (
        _matmul_flops(traced.jaxpr) / B), kw
  # XLA's count of the compiled forward adds the elementwise ops, norms and softmax the
  # estimate leaves out: a little more, never less.
  compiled = jax.jit(model.apply).lower(
      variables, x_t, t, LAYER_IDS, BLOCK_IDS, text).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla = float(cost["flops"]) / B
  assert 0.85 < est / xla <= 1.0, (est, xla)
  assert models.model_flops_per_example(model, num_tokens=L, max_classes=K) == 3 * est
  with pytest.raises(KeyError, match="num_tokens"):
    models.model_flops_per_example(model)


@pytest.mark.parametrize("spec,shape_a,shape_b", [
    ("...i,io->...o", (2, 3, 8), (8, 16)),        # Dense
    ("lbi,lio->lbo", (3, 2, 8), (3, 8, 16)),      # per-token projections
    ("bld,dhk->blhk", (2, 3, 8), (8, 2, 4)),      # q/k/v projections
    ("bqhd,bkhd->bhqk", (2, 3, 2, 4), (2, 5, 2, 4)),
    ("bhqk,bkhd->bqhd", (2, 2, 3, 5), (2, 5, 2, 4)),
    ("bqhd,hdo->bqo", (2, 3, 2, 4), (2, 4, 8)),
])
def test_bf16_einsum_and_its_gradients_follow_float32(spec, shape_a, shape_b):
  """The mixed-precision product (bf16 operands and cotangent, f32 accumulation) runs on
  this backend, forward and backward, and stays within bf16 rounding of float32."""
  ka, kb, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  a, b = jax.random.normal(ka, shape_a), jax.random.normal(kb, shape_b)
  out32 = layers.einsum(spec, a, b, jnp.float32)
  g = jax.random.normal(kg, out32.shape)

  def grads(dtype):
    _, vjp = jax.vjp(lambda x, y: layers.einsum(spec, x, y, dtype), a, b)
    return vjp(g.astype(dtype))

  out16 = jax.jit(lambda x, y: layers.einsum(spec, x, y, jnp.bfloat16))(a, b)
  chex.assert_type(out16, jnp.bfloat16)
  np.testing.assert_allclose(out16.astype(jnp.float32), out32, rtol=0.05,
                             atol=0.05 * float(jnp.abs(out32).max()))
  for g16, g32 in zip(jax.jit(lambda: grads(jnp.bfloat16))(), grads(jnp.float32)):
    chex.assert_type(g16, jnp.float32)  # the operands' dtype
    np.testing.assert_allclose(g16, g32, atol=0.05 * float(jnp.abs(g32).max()))
  np.testing.assert_array_equal(out32, jnp.einsum(spec, a, b))  # float32: the plain einsum


@pytest.mark.parametrize("y_shape,bias_shape", [((4, 40, 16), (16,)),       # Dense
                                                ((4, 40, 2, 8), (2, 8)),     # q/k/v
                                                ((4, 3, 16), (3, 16))])      # per token
def test_add_bias_is_the_sum_and_its_bf16_bias_gradient_accumulates_in_float32(
    y_shape, bias_shape):
  """float32: the plain sum, gradients too. bf16: the same forward sum; the cotangent
  passes to y unchanged; the bias's gradient (the cotangent summed over the leading
  dimensions) comes back in float32 and closer to the float32 one than the plain bf16 sum,
  which is rounded to bf16."""
  ky, kb, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  y, bias = jax.random.normal(ky, y_shape), jax.random.normal(kb, bias_shape)
  g = jax.random.normal(kg, y_shape) + 3.0  # a sum of many like terms: rounding shows

  def vjp(fn, y):
    out, f = jax.vjp(fn, y, bias)
    return out, f(g.astype(out.dtype))

  out, (gy, gb) = vjp(lambda y, b: layers.add_bias(y, b, jnp.float32), y)
  ref_out, (ref_gy, ref_gb) = vjp(lambda y, b: y + b, y)
  np.testing.assert_array_equal(out, ref_out)
  np.testing.assert_array_equal(gy, ref_gy)
  np.testing.assert_array_equal(gb, ref_gb)
  y16 = y.astype(jnp.bfloat16)
  out, (gy, gb) = jax.jit(lambda y: vjp(lambda y, b: layers.add_bias(y, b, jnp.bfloat16),
                                        y))(y16)
  plain_out, (plain_gy, plain_gb) = vjp(lambda y, b: y + b.astype(jnp.bfloat16), y16)
  chex.assert_type([out, gy, gb], [jnp.bfloat16, jnp.bfloat16, jnp.float32])
  np.testing.assert_array_equal(out, plain_out)
  np.testing.assert_array_equal(gy, plain_gy)
  exact = g.astype(jnp.bfloat16).astype(jnp.float32).reshape(-1, bias.size).sum(0)
  err, plain_err = (float(jnp.abs(x.reshape(-1) - exact).max()) for x in (gb, plain_gb))
  assert err <= 1e-3 * float(jnp.abs(exact).max()) and err < plain_err, (err, plain_err)
  with pytest.raises(ValueError, match="does not end in the bias's shape"):
    layers.add_bias(y16, jnp.zeros((5,)), jnp.bfloat16)


@pytest.mark.parametrize("num_in", [1, 2])
def test_project_float32_out_is_the_accumulator_unrounded(num_in):
  """bf16 ``project`` with out_dtype=float32 returns the float32 accumulator of the bf16
  product (the bf16 result is that rounded); its gradients are the bf16 ones', and with
  ``add_bias`` on top the bias is a float32 sum."""
  kx, kk, kg, kb = jax.random.split(jax.random.PRNGKey(0), 4)
  x = jax.random.normal(kx, (3, 5, 8) if num_in == 1 else (3, 5, 4, 2))
  in_shape = x.shape[x.ndim - num_in:]
  kernel = jax.random.normal(kk, (6, *in_shape))
  f32 = jax.jit(lambda x, k: layers.project(x, k, num_in, jnp.bfloat16, jnp.float32))(x, kernel)
  b16 = jax.jit(lambda x, k: layers.project(x, k, num_in, jnp.bfloat16))(x, kernel)
  chex.assert_type([f32, b16], [jnp.float32, jnp.bfloat16])
  np.testing.assert_array_equal(f32.astype(jnp.bfloat16), b16)
  assert float(jnp.abs(f32 - b16.astype(jnp.float32)).max()) > 0  # not rounded
  g = jax.random.normal(kg, f32.shape)
  grads = [jax.jit(jax.grad(lambda x, k, o=o: jnp.sum(
      layers.project(x, k, num_in, jnp.bfloat16, o).astype(jnp.float32) * g),
      argnums=(0, 1)))(x, kernel) for o in (jnp.float32, None)]
  for a, b in zip(*grads):
    chex.assert_type(a, jnp.float32)
    np.testing.assert_array_equal(a, b)
  bias = jax.random.normal(kb, (6,))
  np.testing.assert_array_equal(layers.add_bias(f32, bias, jnp.bfloat16), f32 + bias)


def test_einsum_refuses_an_index_summed_inside_one_operand():
  with pytest.raises(ValueError, match=r"\['k'\]"):
    layers.einsum("ij,jk->i", jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.bfloat16)


def test_bf16_dit_gradient_runs_jitted_and_follows_float32():
  """The whole DiT's parameter gradient in bfloat16 compiles and runs on this backend (a
  product layout that XLA's CPU backend cannot run in bf16 x bf16 -> f32 fails here) and
  points where the float32 gradient does."""
  model = make_model()
  x_t, t, text = make_inputs()
  variables, _ = init_apply(model, x_t, t, text)
  params = perturb(variables)

  def grad(dtype):
    m = make_model(dtype=dtype)
    loss = lambda p: jnp.mean(m.apply(p, x_t, t, LAYER_IDS, BLOCK_IDS, text) ** 2)
    return jax.flatten_util.ravel_pytree(jax.jit(jax.grad(loss))(params))[0]

  g32, g16 = grad(jnp.float32), grad(jnp.bfloat16)
  cosine = float(g16 @ g32 / (jnp.linalg.norm(g16) * jnp.linalg.norm(g32)))
  assert cosine > 0.99, cosine


@pytest.mark.parametrize("token_proj", ["per_token", "shared"])
def test_moving_projection_kernels_is_exact_and_leaves_the_rest(token_proj):
  """(*out, *in) -> (*in, *out) -> back is the identity; only projection kernels move (a
  per-token projection's 3-D kernel keeps its layout); the moved kernels are the transposes."""
  x_t, t, text = make_inputs()
  variables, _ = init_apply(make_model(token_proj=token_proj), x_t, t, text)
  params = models.unbox(perturb(variables))["params"]
  old = layers.move_projection_kernels(params, "out_in", "in_out")
  back = layers.move_projection_kernels(old, "in_out", "out_in")
  jax.tree.map(np.testing.assert_array_equal, back, params)
  np.testing.assert_array_equal(old["block_0"]["mlp"]["fc1"]["kernel"],
                                params["block_0"]["mlp"]["fc1"]["kernel"].T)
  np.testing.assert_array_equal(old["block_0"]["attn"]["query_kernel"],
                                np.moveaxis(params["block_0"]["attn"]["query_kernel"], -1, 0))
  np.testing.assert_array_equal(old["block_0"]["attn"]["out_kernel"],
                                np.moveaxis(params["block_0"]["attn"]["out_kernel"], 0, -1))
  in_proj = params["embed"]["in_proj"]["kernel"]
  np.testing.assert_array_equal(old["embed"]["in_proj"]["kernel"],
                                in_proj if token_proj == "per_token" else in_proj.T)
  shapes = jax.eval_shape(lambda: params)
  assert jax.tree.map(jnp.shape, layers.move_projection_kernels(shapes, "out_in", "in_out")) \
      == jax.tree.map(jnp.shape, old)
  with pytest.raises(ValueError, match="kernel layout"):
    layers.move_projection_kernels(params, "out_in", "io")


# Between them the two models hold every module of the conditioning path (adaLN-single and
# the per-block modulations, the text MLP and the text token), so a conditioning module
# that ``dit.CONDITIONING_MODULES`` missed would be cast and change the outputs.
@pytest.mark.parametrize("switches", [dict(adaln="single", text_head=16),
                                      dict(adaln="block", text_as_token=True)])
def test_inference_params_give_bit_identical_outputs_in_bf16(switches):
  """Sampling's params (kernels and tables cast once to bf16) give exactly the outputs of
  the float32 params; in float32 they are the params themselves."""
  from t2w_jax import generator as generator_lib
  model = make_model(dtype=jnp.bfloat16, **switches)
  x_t, t, text = make_inputs(drop=[False, True, False, False])
  variables, _ = init_apply(model, x_t, t, text)
  params = perturb(variables)
  cast = generator_lib.inference_params(params, jnp.bfloat16)
  dtypes = {x.dtype for x in jax.tree.leaves(cast)}
  assert dtypes == {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)}
  # The conditioning path computes in float32: its kernels are not cast.
  for path, x in jax.tree_util.tree_leaves_with_path(cast):
    names = {getattr(k, "key", None) for k in path}
    if names & {"adaLN_single", "adaLN_modulation", "t_embed"}:
      assert x.dtype == jnp.float32, path
    if "query_kernel" in names or names >= {"mlp", "kernel"}:
      assert x.dtype == jnp.bfloat16, path
  np.testing.assert_array_equal(model.apply(cast, x_t, t, LAYER_IDS, BLOCK_IDS, text),
                                model.apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, text))
  assert generator_lib.inference_params(params, jnp.float32) is params


def _dot_operand_dtypes(jaxpr, batch):
  """The operand dtypes of every dot_general in ``jaxpr`` (and the jaxprs within it) whose
  left operand is 2-D with ``batch`` rows: the products with one row per example."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      lhs, rhs = (v.aval for v in eqn.invars)
      if lhs.ndim == 2 and lhs.shape[0] == batch:
        found.append((lhs.dtype, rhs.dtype))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          found += _dot_operand_dtypes(inner, batch)
  return found


@pytest.mark.parametrize("adaln,text_as_token,expected", [
    ("single", False, 6),  # timestep MLP 2, text MLP 2, adaLN-single 1, the final layer's 1
    ("block", True, 2 + 2 + 1 + 2 + 1)])  # ... the text token 1, one per block (depth 2)
def test_bf16_conditioning_path_computes_in_float32(adaln, text_as_token, expected):
  """In bf16 every product with one row per example (the conditioning path:
  ``dit.CONDITIONING_MODULES``) multiplies float32 operands, the token products bf16 ones;
  the output follows the float32 model."""
  model = make_model(dtype=jnp.bfloat16, adaln=adaln, text_as_token=text_as_token, depth=2)
  x_t, t, text = make_inputs()
  variables, _ = init_apply(model, x_t, t, text)
  params = perturb(variables)
  jaxpr = jax.make_jaxpr(lambda p: model.apply(p, x_t, t, LAYER_IDS, BLOCK_IDS, text))(params)
  per_example = _dot_operand_dtypes(jaxpr.jaxpr, B)
  assert per_example == [(jnp.dtype(jnp.float32), jnp.dtype(jnp.float32))] * expected
  token_rows = _dot_operand_dtypes(jaxpr.jaxpr, B * len(LAYER_IDS))
  assert token_rows and all(d == (jnp.dtype(jnp.bfloat16),) * 2 for d in token_rows)
  out16 = model.apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, text)
  out32 = model.clone(dtype=jnp.float32).apply(params, x_t, t, LAYER_IDS, BLOCK_IDS, text)
  np.testing.assert_allclose(out16, out32, atol=0.05 * float(jnp.abs(out32).max()))
