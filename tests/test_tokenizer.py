"""Tests for the block tokenizer and per-layer normalisation."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2w_jax.weights import BlockTokenizer
from t2w_jax.weights import LayerNorms
from t2w_jax.weights import ParamLayout
from t2w_jax.weights import layer_stats


def _random_layout(seed: int) -> ParamLayout:
  """A random nested-dict layout: a few modules, each with 1-3 params of random shape."""
  rng = np.random.default_rng(seed)
  params = {}
  for m in range(rng.integers(1, 5)):
    mod = {}
    for k in range(rng.integers(1, 4)):
      ndim = int(rng.integers(0, 4))
      mod[f"p{k}"] = np.zeros(tuple(int(d) for d in rng.integers(1, 6, size=ndim)), np.float32)
    params[f"mod_{m}"] = mod
  # A parameter at the root (no module prefix) must also work.
  params["scale"] = np.zeros((3,), np.float32)
  return ParamLayout.from_params(params)


def _reference_layers(layout: ParamLayout, group: str):
  """Independent per-layer list of flat positions, in layout order."""
  layers: dict[str, list[int]] = {}
  for path, sl in layout.layer_slices():
    name = path if group == "param" else (path.rsplit("/", 1)[0] if "/" in path else path)
    layers.setdefault(name, []).extend(range(sl.start, sl.stop))
  return layers


_LAYOUT_SEEDS = [0, 1, 2, 3]


def _block_sizes(layout):
  biggest = max(layout.sizes)
  return sorted({1, 3, 7, 16, biggest + 5})


@pytest.mark.parametrize("seed", _LAYOUT_SEEDS)
@pytest.mark.parametrize("group", ["param", "module"])
def test_round_trip_mask_and_layer_purity(seed, group):
  layout = _random_layout(seed)
  d = layout.total
  ref = _reference_layers(layout, group)
  for bs in _block_sizes(layout):
    tok = BlockTokenizer(layout, bs, group)
    chex.assert_shape(tok.mask, (tok.num_tokens, bs))
    chex.assert_shape(tok.layer_ids, (tok.num_tokens,))
    chex.assert_shape(tok.block_ids, (tok.num_tokens,))
    assert tok.layer_names == tuple(ref)
    assert tok.num_layers == len(ref)
    expected_tokens = sum(-(-len(v) // bs) for v in ref.values())
    assert tok.num_tokens == expected_tokens
    assert int(tok.mask.sum()) == d

    # Exact round trip on arbitrary floats.
    x = np.random.default_rng(seed + bs).normal(size=(d,)).astype(np.float32) * 1e3
    tokens = tok.tokenize(x)
    chex.assert_shape(tokens, (tok.num_tokens, bs))
    np.testing.assert_array_equal(np.asarray(tok.detokenize(tokens)), x)
    # Pad positions are exact zeros.
    assert np.all(np.asarray(tokens)[~tok.mask] == 0.0)

    # Positions as values: each token holds one layer's consecutive values, in order.
    pos_tokens = np.asarray(tok.tokenize(jnp.arange(d, dtype=jnp.float32))).astype(np.int64)
    for t in range(tok.num_tokens):
      name = tok.layer_names[tok.layer_ids[t]]
      real = pos_tokens[t][tok.mask[t]]
      b = int(tok.block_ids[t])
      np.testing.assert_array_equal(real, ref[name][b * bs:(b + 1) * bs])
      # Only the last block of a layer may be padded, and only at its end.
      n_real = int(tok.mask[t].sum())
      assert tok.mask[t][:n_real].all() and not tok.mask[t][n_real:].any()
      if n_real < bs:
        assert b == tok.tokens_per_layer[tok.layer_ids[t]] - 1
    # flat_layer_ids agrees with the reference grouping.
    for lid, name in enumerate(tok.layer_names):
      assert np.all(tok.flat_layer_ids[ref[name]] == lid)
      sl = tok.tokens_of_layer(name)
      assert np.all(tok.layer_ids[sl] == lid)


def test_detokenize_ignores_pads():
  layout = _random_layout(5)
  tok = BlockTokenizer(layout, 7)
  assert not tok.mask.all(), "need a layout with padding for this test"
  x = jnp.asarray(np.random.default_rng(0).normal(size=(layout.total,)), jnp.float32)
  tokens = jnp.where(tok.mask, tok.tokenize(x), jnp.nan)
  np.testing.assert_array_equal(np.asarray(tok.detokenize(tokens)), np.asarray(x))


def test_batched_jitted_and_static():
  layout = _random_layout(2)
  tok = BlockTokenizer(layout, 5, "module")
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, layout.total)), jnp.float32)

  # The tokenizer is hashable, so it can be a static argument.
  @jax.jit
  def round_trip(v):
    return tok.detokenize(tok.tokenize(v))

  tokens = jax.jit(tok.tokenize)(x)
  chex.assert_shape(tokens, (2, 3, tok.num_tokens, 5))
  np.testing.assert_array_equal(np.asarray(tokens[1, 2]), np.asarray(tok.tokenize(x[1, 2])))
  np.testing.assert_array_equal(np.asarray(round_trip(x)), np.asarray(x))
  static = jax.jit(lambda t, v: t.tokenize(v), static_argnums=0)
  np.testing.assert_array_equal(np.asarray(static(BlockTokenizer(layout, 5, "module"), x)),
                                np.asarray(tokens))
  assert hash(tok) == hash(BlockTokenizer(layout, 5, "module"))
  assert tok != BlockTokenizer(layout, 5, "param")
  # vmap and grad: tokenize is linear, each real value is used once.
  chex.assert_shape(jax.vmap(tok.tokenize)(x[0]), (3, tok.num_tokens, 5))
  g = jax.grad(lambda v: jnp.sum(tok.tokenize(v) * 2.0))(x[0, 0])
  np.testing.assert_array_equal(np.asarray(g), 2.0)


def test_errors_and_json():
  layout = _random_layout(3)
  tok = BlockTokenizer(layout, 4)
  with pytest.raises(ValueError, match=f"{layout.total}"):
    tok.tokenize(jnp.zeros((layout.total + 1,)))
  with pytest.raises(ValueError, match="detokenize"):
    tok.detokenize(jnp.zeros((tok.num_tokens, 5)))
  with pytest.raises(ValueError, match="block_size"):
    BlockTokenizer(layout, 0)
  with pytest.raises(ValueError, match="group"):
    BlockTokenizer(layout, 4, "layer")
  with pytest.raises(KeyError, match="no layer"):
    tok.tokens_of_layer("nope")

  blob = json.loads(json.dumps(tok.to_json()))
  back = BlockTokenizer.from_json(blob)
  assert back == tok and back.num_tokens == tok.num_tokens
  np.testing.assert_array_equal(back.mask, tok.mask)
  blob["num_tokens"] += 1
  with pytest.raises(ValueError, match="tokens"):
    BlockTokenizer.from_json(blob)


# ---------------------------------------------------------------- normalisation


def _scaled_corpus(tok: BlockTokenizer, n: int, seed: int = 0) -> np.ndarray:
  """Rows whose layers differ in scale (1e-4 .. 1e2) and offset."""
  rng = np.random.default_rng(seed)
  scales = 10.0 ** rng.uniform(-4, 2, size=tok.num_layers)
  offsets = rng.normal(size=tok.num_layers) * scales * 3
  ids = tok.flat_layer_ids
  x = rng.normal(size=(n, tok.total)) * scales[ids] + offsets[ids]
  return x.astype(np.float32)


@pytest.mark.parametrize("group", ["param", "module"])
def test_layer_stats_streaming_matches_direct(tmp_path, group):
  tok = BlockTokenizer(_random_layout(1), 6, group)
  corpus = _scaled_corpus(tok, 53)
  path = tmp_path / "w.npy"
  np.save(path, corpus)
  mm = np.load(path, mmap_mode="r")
  mean, std = layer_stats(mm, tok, chunk_rows=7)  # 7 does not divide 53
  for lid in range(tok.num_layers):
    vals = corpus[:, tok.flat_layer_ids == lid].astype(np.float64)
    np.testing.assert_allclose(mean[lid], vals.mean(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(std[lid], vals.std(), rtol=1e-9)
  with pytest.raises(ValueError, match="corpus must be"):
    layer_stats(corpus[:, :-1], tok)
  bad = corpus.copy()
  bad[40, 0] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    layer_stats(bad, tok, chunk_rows=7)


def test_normalize_unit_scale_and_round_trip():
  tok = BlockTokenizer(_random_layout(4), 5)
  corpus = _scaled_corpus(tok, 40, seed=3)
  norms = LayerNorms.fit(corpus, tok, chunk_rows=16)
  chex.assert_shape(norms.mean_tokens, tok.token_shape)
  tokens = tok.tokenize(corpus)
  z = np.asarray(jax.jit(norms.normalize)(tokens))
  chex.assert_shape(z, (40,) + tok.token_shape)
  assert np.all(z[:, ~tok.mask] == 0.0)
  for lid in range(tok.num_layers):
    vals = z[:, (tok.layer_ids == lid)[:, None] & tok.mask].astype(np.float64)
    assert abs(vals.mean()) < 1e-3, (tok.layer_names[lid], vals.mean())
    assert abs(vals.std() - 1.0) < 1e-3, (tok.layer_names[lid], vals.std())
  # Raw layers really did differ by orders of magnitude.
  raw_std = np.asarray(norms.std)
  assert raw_std.max() / raw_std.min() > 100

  back = np.asarray(norms.denormalize(z))
  assert np.all(back[:, ~tok.mask] == 0.0)
  scale = norms.std_tokens + np.abs(norms.mean_tokens)
  assert np.all(np.abs(back - np.asarray(tokens)) <= 1e-5 * scale)
  flat_scale = (np.asarray(norms.std) + np.abs(norms.mean))[tok.flat_layer_ids]
  assert np.all(np.abs(np.asarray(tok.detokenize(back)) - corpus) <= 1e-5 * flat_scale)


def test_constant_layer_floor_and_json():
  tok = BlockTokenizer(_random_layout(0), 4)
  corpus = _scaled_corpus(tok, 10)
  corpus[:, tok.flat_layer_ids == 0] = 0.25  # a layer that never moved
  norms = LayerNorms.fit(corpus, tok)
  assert norms.std[0] == pytest.approx(1e-8)
  z = norms.normalize(tok.tokenize(corpus))
  assert np.all(np.isfinite(np.asarray(z)))
  back = tok.detokenize(norms.denormalize(z))
  np.testing.assert_allclose(np.asarray(back)[:, tok.flat_layer_ids == 0], 0.25)

  blob = json.loads(json.dumps(norms.to_json()))
  again = LayerNorms.from_json(blob, tokenizer=tok)
  assert again.mean == norms.mean and again.std == norms.std
  np.testing.assert_array_equal(again.std_tokens, norms.std_tokens)
  with pytest.raises(ValueError, match="fitted for"):
    LayerNorms.from_json(blob, tokenizer=BlockTokenizer(tok.layout, 3))
  with pytest.raises(ValueError, match="tokens must be"):
    norms.normalize(jnp.zeros((tok.num_tokens, 3)))
  with pytest.raises(ValueError, match="per-layer"):
    LayerNorms(tok, (0.0,), (1.0,))


def test_element_centering_decodes_zero_to_the_mean_net():
  layout = ParamLayout(("a/kernel", "a/bias", "b/kernel"), ((3, 5), (5,), (5, 7)))
  tok = BlockTokenizer(layout, 8)
  rng = np.random.default_rng(0)
  corpus = rng.normal(size=(40, layout.total)) * np.linspace(0.01, 10, layout.total)
  norms = LayerNorms.fit(corpus, tok, chunk_rows=7, center="element")
  zero = np.zeros(tok.token_shape, np.float32)
  np.testing.assert_allclose(np.asarray(tok.detokenize(norms.denormalize(zero))),
                             corpus.mean(0), rtol=1e-5, atol=1e-5)
  x = np.asarray(tok.tokenize(corpus[:3].astype(np.float32)))
  back = np.asarray(norms.denormalize(norms.normalize(x)))
  np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-5)
  # Residual stds are per layer: each layer's normalised values have unit spread.
  z = np.asarray(norms.normalize(np.asarray(tok.tokenize(corpus.astype(np.float32)))))
  for lid in range(tok.num_layers):
    vals = z[:, tok.layer_ids == lid][:, tok.mask[tok.layer_ids == lid]]
    assert abs(vals.std() - 1) < 1e-3
  again = LayerNorms.from_json(norms.to_json(), tokenizer=tok)
  np.testing.assert_array_equal(again.mean_tokens, norms.mean_tokens)
  with pytest.raises(ValueError, match="center must be"):
    LayerNorms.fit(corpus, tok, center="row")
